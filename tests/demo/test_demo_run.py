"""The demo at a reduced size finishes and produces every number of its table."""

from __future__ import annotations

import json
import math

from rlsignals.demo.run import DemoConfig, format_table, run_demo


def test_quick_demo_produces_the_whole_table(tmp_path):
    results = run_demo(tmp_path, DemoConfig.quick(), progress=False)
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["config"] == results["config"]
    for arm in ("gain_rl", "uniform"):
        curve = saved["arms"][arm]["curve"]
        assert [s for s, _ in curve] == list(range(0, results["config"]["steps"] + 1, results["config"]["eval_every"]))
        assert all(0 <= acc <= 1 for _, acc in curve)
        assert "steps_to_target" in saved["arms"][arm]
    extrapolation = saved["extrapolation"]
    assert set(extrapolation["accuracy"]) | set(extrapolation["not_fitted"]) == {
        "alpharl", "alpharl_released", "linear_step", "two_point"}
    assert "two_point" in extrapolation["accuracy"]  # needs no fit, so it always runs
    assert 0 <= saved["rank1"]["accuracy"] <= 1 and math.isfinite(saved["rank1"]["mean_rank1_energy"])
    assert 0 <= saved["bf16_sparsity"]["rl"] <= 1 and 0 <= saved["bf16_sparsity"]["sft"] <= 1
    assert len(saved["angle_vs_learning"]["scores"]) == results["config"]["probe_prompts"]
    for name in ("demo.png", "report/index.html", "trajectory/trajectory.json", "rank1-model/config.json"):
        assert (tmp_path / name).exists(), name
    table = format_table(saved)
    for text in ("GAIN-RL", "steps to reach", "extrapolated from", "rank-1 model", "bf16 entries unchanged",
                 "Spearman"):
        assert text in table
