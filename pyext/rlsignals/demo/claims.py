"""The papers' claims, measured on the demo: one row per claim with the paper's
figure, ours, its 95% interval and a verdict.

Verdict rule (``verdict``): a claim is a threshold on one figure ("speed-up
above 2.5", "Spearman below 0"). It *holds* when the whole interval is on the
claimed side, *does not* when the whole interval is on the other side, and we
*cannot tell* when the interval straddles the threshold (or is undefined).

The rows are built from the raw measurements of one demo run
(``run.run_demo``'s ``results["raw"]``): per-problem 0/1 correctness of every
evaluated model on the same held-out problems, so every interval is a paired
bootstrap over those problems (``stats``); per-module figures are bootstrapped
over modules. One seed: the intervals cover the choice of problems (and of
modules), not the randomness of training; the multi-seed study (study.py)
adds that.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from rlsignals import stats
from rlsignals.stats import Estimate

HOLDS, DOES_NOT, CANNOT_TELL = "holds", "does not", "cannot tell"


@dataclasses.dataclass
class Claim:
    """One row: what the paper says, what we measured (with its 95% interval), the verdict."""

    name: str
    paper: str
    ours: Estimate
    threshold: float
    side: str          # "above" or "below": the side of the threshold the paper claims
    note: str = ""
    spec: str = ".2f"

    @property
    def verdict(self) -> str:
        return verdict(self.ours, self.threshold, self.side)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "paper": self.paper, **self.ours.as_dict(), "threshold": self.threshold,
                "side": self.side, "verdict": self.verdict, "note": self.note, "spec": self.spec}


def verdict(est: Estimate, threshold: float, side: str) -> str:
    """holds / does not / cannot tell, from where the interval lies (module docstring)."""
    if side not in ("above", "below"):
        raise ValueError(f"side must be 'above' or 'below', got {side!r}")
    if not (math.isfinite(est.low) and math.isfinite(est.high)):
        return CANNOT_TELL
    above, below = est.low > threshold, est.high < threshold
    if (side == "above" and above) or (side == "below" and below):
        return HOLDS
    if (side == "above" and below) or (side == "below" and above):
        return DOES_NOT
    return CANNOT_TELL


def _a(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def build_claims(raw: dict[str, Any]) -> list[Claim]:
    """The claims table from one run's raw measurements (see run.py for the keys)."""
    start = _a(raw["start_correct"])
    final = _a(raw["uniform_correct"][-1])
    steps = raw["eval_steps"]
    rows = []
    target = raw["target_accuracy"]
    rows.append(Claim(
        "GAIN-RL: steps to the same accuracy, uniform / GAIN-RL", ">2.5x fewer steps",
        stats.ratio_of_crossings_ci(steps, _a(raw["uniform_correct"]), _a(raw["gain_rl_correct"]), target),
        2.5, "above", note=f"curve crossings of accuracy {target:.3f}"))
    if raw.get("jump_correct"):
        reached = float(final.mean())
        jump = raw["jump"] or {}
        how = f"skipped: {jump['skipped']}" if "skipped" in jump else f"at step {jump.get('step')}"
        rows.append(Claim(
            "AlphaRL: steps to reach the uniform run's final accuracy, without / with a jump", "up to 2.5x fewer steps",
            stats.ratio_of_crossings_ci(steps, _a(raw["uniform_correct"]), _a(raw["jump_correct"]), reached),
            2.5, "above", note=f"curve crossings of accuracy {reached:.3f}; in-loop jump {how}"))
    rows.append(Claim(
        "angle signal vs step a prompt is first solved (Spearman)", "higher signal learnt sooner (< 0)",
        stats.spearman_ci(raw["probe_scores"], raw["probe_learned_step"]), 0.0, "below",
        note=f"{int(np.isfinite(_a(raw['probe_learned_step'])).sum())} training prompts unsolved at step 0"))
    rows.append(Claim(
        "rank-1 model's share of the RL gain", ">99%",
        stats.gain_share_ci(start, final, _a(raw["rank1_correct"])), 0.99, "above",
        note="W0 + ||dW|| u1 v1^T on every decoder matrix", spec=".0%"))
    for mode, r2 in raw["pls_r2_loo"].items():
        values = _a(r2)
        values = values[np.isfinite(values)]
        note = f"{len(raw['fit_steps'])} checkpoints (steps {raw['fit_steps']}), over modules"
        if values.size < 2:  # fewer than 3 fitted checkpoints, or an accuracy that never moved: undefined
            estimate, note = Estimate(math.nan, math.nan, math.nan), note + "; undefined: no finite R^2"
        else:
            estimate = stats.bootstrap(lambda a: float(np.median(a)), values)
        rows.append(Claim(f"rank-1 trajectory linearity: median leave-one-out R^2 ({mode} PLS)",
                          "linear (R^2 near 1)", estimate, 0.9, "above", note=note))
    fitted = max(raw["fit_steps"]) / steps[-1] if raw["fit_steps"] else float("nan")
    for name, correct in raw["extrapolated_correct"].items():
        paper = ">96% at 2.5x fewer steps" if name.startswith("alpharl") else "(peer method)"
        rows.append(Claim(
            f"{name}: accuracy extrapolated from the first {fitted:.0%} / final", paper,
            stats.accuracy_ratio_ci(final, _a(correct)), 0.96, "above", note=f"fit on steps {raw['fit_steps']}",
            spec=".0%"))
    rl, sft = _a(raw["bf16_unchanged"]["rl"]), _a(raw["bf16_unchanged"]["sft"])
    rows.append(Claim(
        "bf16 entries unchanged: RL minus SFT (mean over matrices)", "RL 36-92% vs SFT 0.6-19% (> 0)",
        stats.bootstrap(lambda a, b: float(a.mean() - b.mean()), rl, sft), 0.0, "above",
        note=f"RL {rl.mean():.1%}, SFT {sft.mean():.1%}", spec=".1%"))
    overlap = _a(raw["principal_overlap"])
    overlap = overlap[np.isfinite(overlap)]
    rows.append(Claim(
        "RL update's overlap with principal weights (alpha 0.5)", "below random (< 0.5)",
        stats.bootstrap(lambda a: float(a.mean()), overlap), 0.5, "below", note="mean over matrices"))
    return rows


def headroom_rows(raw: dict[str, Any]) -> list[tuple[str, Estimate, Estimate]]:
    """(figure, at start, at the end of the uniform run): greedy accuracy, pass@1, pass@16."""
    rows = [("greedy accuracy", stats.mean_ci(raw["start_correct"]), stats.mean_ci(raw["uniform_correct"][-1]))]
    n = raw["pass_samples"]
    for k in (1, n):
        rows.append((f"pass@{k}", stats.mean_ci(stats.pass_at_k(n, _a(raw["pass_right"]["start"]), k)),
                     stats.mean_ci(stats.pass_at_k(n, _a(raw["pass_right"]["final"]), k))))
    return rows


def format_claims(claims: list[Claim]) -> str:
    """The claims table as text: claim, paper, ours [95% interval], verdict."""
    width = max(len(c.name) for c in claims)
    lines = [f"  {'claim':<{width}}  {'paper':<34}{'ours [95% interval]':<28}verdict"]
    for c in claims:
        lines.append(f"  {c.name:<{width}}  {c.paper:<34}{c.ours.format(c.spec):<28}{c.verdict}")
        if c.note:
            lines.append(f"  {'':<{width}}    ({c.note})")
    return "\n".join(lines)
