"""The claims table: the verdict rule, and rows built from synthetic raw measurements."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlsignals.demo.claims import CANNOT_TELL, DOES_NOT, HOLDS, build_claims, format_claims, headroom_rows, verdict
from rlsignals.stats import Estimate


@pytest.mark.parametrize("est, side, expected", [
    (Estimate(3.0, 2.6, 3.5), "above", HOLDS),
    (Estimate(1.5, 1.2, 2.0), "above", DOES_NOT),
    (Estimate(2.5, 2.0, 3.0), "above", CANNOT_TELL),
    (Estimate(-0.3, -0.4, -0.1), "below", HOLDS),
    (Estimate(0.2, 0.1, 0.3), "below", DOES_NOT),
    (Estimate(0.1, math.nan, math.nan), "below", CANNOT_TELL),
])
def test_verdict(est, side, expected):
    assert verdict(est, 2.5 if side == "above" else 0.0, side) == expected


def test_verdict_side_is_checked():
    with pytest.raises(ValueError, match="side must be"):
        verdict(Estimate(1, 0, 2), 1, "over")


def _raw(n=400, seed=0):
    rng = np.random.default_rng(seed)
    steps = [0, 10, 20, 30]
    fast = [rng.random(n) < p for p in (0.2, 0.6, 0.7, 0.75)]   # GAIN-RL: crosses 0.45 at ~6
    slow = [rng.random(n) < p for p in (0.2, 0.3, 0.4, 0.75)]   # uniform: crosses 0.45 at ~24
    scores = rng.normal(size=200)
    learned = 20 - 8 * scores + rng.normal(size=200)             # high score learnt sooner
    return {
        "eval_steps": steps, "start_correct": fast[0], "gain_rl_correct": fast, "uniform_correct": slow,
        "target_accuracy": 0.45, "pass_samples": 4,
        "pass_right": {"start": rng.integers(0, 5, n), "final": rng.integers(2, 5, n)},
        "probe_scores": scores, "probe_learned_step": learned, "never": 40,
        "rank1_correct": np.where(rng.random(n) < 0.5, slow[-1], fast[0]),
        "fit_steps": [10, 20, 30], "pls_r2_loo": {"ours": rng.uniform(0.95, 0.99, 30)},
        "extrapolated_correct": {"two_point": slow[-1]},
        "bf16_unchanged": {"rl": rng.uniform(0.4, 0.6, 30), "sft": rng.uniform(0.0, 0.1, 30)},
        "principal_overlap": rng.uniform(0.45, 0.55, 30),
    }


def test_claims_from_synthetic_measurements():
    claims = {c.name.split(":")[0]: c for c in build_claims(_raw())}
    assert claims["GAIN-RL"].ours.low > 2.5 and claims["GAIN-RL"].verdict == HOLDS
    assert claims["angle signal vs step a prompt is first solved (Spearman)"].verdict == HOLDS
    share = claims["rank-1 model's share of the RL gain"]
    assert share.ours.low < 0.5 < share.ours.high and share.verdict == DOES_NOT
    assert claims["rank-1 trajectory linearity"].verdict == HOLDS
    assert claims["two_point"].ours.value == 1.0
    assert claims["bf16 entries unchanged"].verdict == HOLDS
    assert claims["RL update's overlap with principal weights (alpha 0.5)"].verdict == CANNOT_TELL
    table = format_claims(list(claims.values()))
    assert all(word in table for word in (HOLDS, DOES_NOT, CANNOT_TELL, ">2.5x fewer steps"))


def test_headroom_rows_report_pass_at_1_and_pass_at_n():
    names = [name for name, _, _ in headroom_rows(_raw())]
    assert names == ["greedy accuracy", "pass@1", "pass@4"]


def test_a_figure_undefined_on_the_run_is_cannot_tell_not_a_crash():
    raw = _raw() | {"fit_steps": [10, 20], "pls_r2_loo": {"ours": [], "released": [float("nan")] * 30}}
    rows = [c for c in build_claims(raw) if c.name.startswith("rank-1 trajectory linearity")]
    assert len(rows) == 2 and all(c.verdict == CANNOT_TELL and "undefined" in c.note for c in rows)


def test_the_jump_claim_compares_steps_to_the_uniform_runs_final_accuracy():
    raw = _raw()
    jump = [raw["uniform_correct"][0], raw["gain_rl_correct"][1], raw["gain_rl_correct"][2],
            raw["uniform_correct"][3]]
    claims = {c.name.split(":")[0]: c for c in build_claims(raw | {"jump_correct": jump, "jump": {"step": 10}})}
    claim = claims["AlphaRL"]
    assert claim.ours.value == pytest.approx(30 / claim_crossing(raw, jump), rel=1e-6)
    assert "at step 10" in claim.note


def claim_crossing(raw, correct):
    from rlsignals.stats import crossing

    return crossing(raw["eval_steps"], [float(np.mean(c)) for c in correct], float(np.mean(raw["uniform_correct"][-1])))
