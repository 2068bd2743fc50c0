"""Intervals for measured figures (the demo's claims, the real-model benchmark,
the GAIN-RL pilot): bootstrap over problems (or modules, or seeds), Spearman's
rho, curve crossings, pass@k.

Every interval is a two-sided 95% percentile bootstrap unless stated:
resample the units (problems, seeds, modules) with replacement, recompute the
figure, take the 2.5% and 97.5% quantiles. (Written out rather than
``scipy.stats.bootstrap`` because some figures, e.g. a curve's crossing step,
are undefined on a few resamples, and those are dropped, not propagated.)
Paired figures (two models on the same problems) resample the
problems once for both, so the shared difficulty cancels.

A figure is an ``Estimate(value, low, high)``; ``low``/``high`` are NaN when the
figure is undefined on too many resamples (e.g. a curve that never crosses).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A figure and its 95% interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def format(self, spec: str = ".3f") -> str:
        if not math.isfinite(self.value):
            return "-"
        interval = "" if not (math.isfinite(self.low) and math.isfinite(self.high)) else \
            f" [{self.low:{spec}}, {self.high:{spec}}]"
        return f"{self.value:{spec}}{interval}"


def _check_units(name: str, data: np.ndarray, minimum: int = 2) -> None:
    if data.shape[-1] < minimum:
        raise ValueError(f"{name} needs at least {minimum} units on its last axis, got shape {tuple(data.shape)}")


def bootstrap(statistic: Callable[..., float], *samples: Sequence[float] | np.ndarray, paired: bool = True,
              resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """``statistic(*samples)`` and its percentile interval, resampling the
    last axis of every sample (the units: problems, modules, seeds); with
    ``paired`` the same units are drawn for all samples. Resamples where the
    statistic is not finite are dropped; when more than 5% are, the interval is
    NaN (the figure is not stable enough to bound)."""
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    for i, a in enumerate(arrays):
        _check_units(f"sample {i}", a)
    if paired and len({a.shape[-1] for a in arrays}) != 1:
        raise ValueError(f"paired samples need the same number of units, got {[a.shape[-1] for a in arrays]}")
    value = float(statistic(*arrays))
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for r in range(resamples):
        if paired:
            idx = rng.integers(0, arrays[0].shape[-1], arrays[0].shape[-1])
            values[r] = statistic(*[a[..., idx] for a in arrays])
        else:
            values[r] = statistic(*[a[..., rng.integers(0, a.shape[-1], a.shape[-1])] for a in arrays])
    finite = values[np.isfinite(values)]
    if finite.size < 0.95 * resamples:
        return Estimate(value, math.nan, math.nan)
    low, high = np.quantile(finite, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Estimate(value, float(low), float(high))


def mean_ci(values: Sequence[float] | np.ndarray, seed: int = 0) -> Estimate:
    """Mean over units (e.g. per-problem 0/1 correctness) with its bootstrap interval."""
    return bootstrap(lambda a: float(a.mean()), values, seed=seed)


def t_interval(values: Sequence[float] | np.ndarray) -> Estimate:
    """Mean over a few independent runs (seeds) with Student's t interval
    (the bootstrap is too narrow with 3-5 units)."""
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size < 2:
        return Estimate(float(a.mean()) if a.size else math.nan, math.nan, math.nan)
    half = float(stats.t.ppf((1 + LEVEL) / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    return Estimate(float(a.mean()), float(a.mean()) - half, float(a.mean()) + half)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho over the pairs where both are finite: the Pearson
    correlation of their ranks (ties get the average rank, as in
    ``scipy.stats.spearmanr``); NaN when fewer than 3 pairs or one side is constant."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return math.nan
    return float(np.corrcoef(rankdata(x[keep]), rankdata(y[keep]))[0, 1])


def spearman_ci(x: Sequence[float], y: Sequence[float], seed: int = 0) -> Estimate:
    """Spearman's rho of (x, y) pairs with a bootstrap interval over the pairs."""
    return bootstrap(spearman, x, y, seed=seed)


def crossing(steps: Sequence[float], curve: Sequence[float], target: float) -> float:
    """The step at which a curve first reaches ``target``, interpolated linearly
    between the two evaluated steps around the crossing (the curve's value at
    step 0 counts); NaN when it never does."""
    s = np.asarray(steps, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    above = np.nonzero(c >= target)[0]
    if above.size == 0:
        return math.nan
    i = int(above[0])
    if i == 0:
        return float(s[0])
    return float(s[i - 1] + (target - c[i - 1]) / (c[i] - c[i - 1]) * (s[i] - s[i - 1]))


def crossing_ci(steps: Sequence[float], correct: np.ndarray, target: float, seed: int = 0) -> Estimate:
    """Steps to ``target`` accuracy from per-problem correctness ``correct``
    [evaluations, problems] (one row per evaluated step): the crossing of the
    mean curve, with a bootstrap over problems (each resample's curve crossed
    again). NaN interval when more than 5% of resampled curves never cross."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.ndim != 2 or correct.shape[0] != len(steps):
        raise ValueError(f"correct must be [len(steps)={len(steps)}, problems], got {tuple(correct.shape)}")
    return bootstrap(lambda c: crossing(steps, c.mean(-1), target), correct, seed=seed)


def ratio_of_crossings_ci(steps: Sequence[float], slow: np.ndarray, fast: np.ndarray, target: float,
                          seed: int = 0) -> Estimate:
    """Speed-up = steps to target of ``slow`` / steps to target of ``fast`` (both
    [evaluations, problems] on the same problems), paired bootstrap over problems."""
    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        sa, sb = crossing(steps, a.mean(-1), target), crossing(steps, b.mean(-1), target)
        return sa / sb if sb > 0 else math.nan

    return bootstrap(ratio, slow, fast, seed=seed)


def gain_share_ci(start: np.ndarray, full: np.ndarray, other: np.ndarray, seed: int = 0) -> Estimate:
    """Share of the gain kept: (mean other - mean start) / (mean full - mean start),
    per-problem correctness of three models on the same problems, paired."""
    def share(s: np.ndarray, f: np.ndarray, o: np.ndarray) -> float:
        gain = f.mean() - s.mean()
        return float((o.mean() - s.mean()) / gain) if gain > 0 else math.nan

    return bootstrap(share, start, full, other, seed=seed)


def accuracy_ratio_ci(reference: np.ndarray, other: np.ndarray, seed: int = 0) -> Estimate:
    """mean(other) / mean(reference), per-problem correctness, paired."""
    return bootstrap(lambda r, o: float(o.mean() / r.mean()) if r.mean() > 0 else math.nan, reference, other,
                     seed=seed)


def pass_at_k(n: int, c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k per problem from n samples of which c are right:
    1 - C(n - c, k) / C(n, k) (Chen et al. 2021), computed as a stable product."""
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    c = np.asarray(c)
    out = np.ones(c.shape, dtype=np.float64)
    for i, ci in np.ndenumerate(c):
        if n - ci >= k:
            out[i] = 1.0 - float(np.prod(1.0 - k / np.arange(n - ci + 1, n + 1)))
    return out
