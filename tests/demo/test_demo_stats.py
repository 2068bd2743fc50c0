"""Interval helpers: coverage on synthetic data where the truth is known, crossings, pass@k."""

from __future__ import annotations

import math
from math import comb

import numpy as np
import pytest

from rlsignals import stats


def _coverage(draw, truth, interval, reps: int = 150) -> float:
    rng = np.random.default_rng(0)
    hits = 0
    for r in range(reps):
        est = interval(draw(rng), r)
        hits += est.low <= truth <= est.high
    return hits / reps


def test_mean_interval_covers_the_true_accuracy_about_95_percent():
    cover = _coverage(lambda rng: rng.random(512) < 0.3, 0.3,
                      lambda x, r: stats.bootstrap(lambda a: float(a.mean()), x, resamples=400, seed=r))
    # 150 repetitions: a 95% interval's coverage lands in [0.90, 0.99] with probability > 0.99
    assert 0.90 <= cover <= 0.99


def test_t_interval_covers_the_mean_of_few_seeds():
    cover = _coverage(lambda rng: rng.normal(2.0, 1.0, 4), 2.0, lambda x, r: stats.t_interval(x), reps=400)
    assert 0.92 <= cover <= 0.98


def test_spearman_interval_covers_a_known_rank_correlation():
    # bivariate normal with correlation rho: Spearman's rho_s = 6/pi * asin(rho / 2)
    rho = 0.5
    truth = 6 / math.pi * math.asin(rho / 2)

    def draw(rng):
        z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], 300)
        return z[:, 0], z[:, 1]

    cover = _coverage(draw, truth, lambda xy, r: stats.bootstrap(stats.spearman, *xy, resamples=200, seed=r),
                      reps=60)
    assert 0.85 <= cover <= 1.0  # 60 repetitions: a loose band, kept short for the suite


def test_spearman_agrees_with_scipy_on_ties():
    from scipy.stats import spearmanr

    x = np.array([1, 2, 2, 3, 5, 5, 5, 9.0, np.nan])
    y = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5.0])
    assert stats.spearman(x, y) == pytest.approx(spearmanr(x[:-1], y[:-1]).statistic)
    assert math.isnan(stats.spearman(np.ones(5), np.arange(5.0)))


def test_crossing_is_interpolated_and_nan_when_never_reached():
    assert stats.crossing([0, 10, 20], [0.2, 0.4, 0.8], 0.6) == pytest.approx(15.0)
    assert stats.crossing([0, 10, 20], [0.7, 0.4, 0.8], 0.6) == 0.0
    assert math.isnan(stats.crossing([0, 10], [0.2, 0.3], 0.6))


def test_crossing_interval_contains_the_planted_crossing():
    rng = np.random.default_rng(1)
    steps = np.arange(0, 60, 10)
    p = 0.2 + 0.01 * steps  # crosses 0.5 at step 30
    correct = rng.random((len(steps), 2000)) < p[:, None]
    est = stats.crossing_ci(steps, correct, 0.5, seed=0)
    assert est.low <= 30 <= est.high and est.high - est.low < 15
    with pytest.raises(ValueError, match="correct must be"):
        stats.crossing_ci(steps, correct[:3], 0.5)


def test_paired_figures():
    rng = np.random.default_rng(2)
    start = (rng.random(1000) < 0.2).astype(float)
    full = np.maximum(start, rng.random(1000) < 0.6)
    half = np.where(rng.random(1000) < 0.5, full, start)
    share = stats.gain_share_ci(start, full, half)
    assert share.low <= 0.5 <= share.high
    ratio = stats.accuracy_ratio_ci(full, full)
    assert ratio.value == ratio.low == ratio.high == 1.0


def test_pass_at_k_matches_the_combinatorial_formula():
    c = np.array([0, 1, 5, 16])
    got = stats.pass_at_k(16, c, 4)
    want = [1 - comb(16 - ci, 4) / comb(16, 4) for ci in c]
    assert np.allclose(got, want)
    assert np.allclose(stats.pass_at_k(16, c, 1), c / 16)
    with pytest.raises(ValueError, match="k must be"):
        stats.pass_at_k(4, c, 5)


def test_too_few_units_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 units"):
        stats.mean_ci([1.0])
