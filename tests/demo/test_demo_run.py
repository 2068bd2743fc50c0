"""The demo at a reduced size finishes and produces every number of its table."""

from __future__ import annotations

import json

import pytest

from rlsignals.demo.run import DemoConfig, format_table, run_demo


@pytest.mark.slow
def test_quick_demo_produces_the_whole_table(tmp_path):
    cfg = DemoConfig.quick()
    results = run_demo(tmp_path, cfg, progress=False)
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["config"] == results["config"]
    raw = saved["raw"]
    steps = list(range(0, cfg.steps + 1, cfg.eval_every))
    assert raw["eval_steps"] == steps
    for arm in ("gain_rl", "uniform", "jump"):
        assert [s for s, _ in saved["arms"][arm]["curve"]] == steps
        assert len(raw[f"{arm}_correct"]) == len(steps)
        assert all(len(c) == cfg.eval_prompts and set(c) <= {0.0, 1.0} for c in raw[f"{arm}_correct"])
    assert set(raw["extrapolated_correct"]) | set(saved["not_fitted"]) == {
        "alpharl", "alpharl_released", "linear_step", "two_point"}
    assert "two_point" in raw["extrapolated_correct"]  # needs no fit, so it always runs
    assert all(0 <= c <= cfg.pass_samples for c in raw["pass_right"]["start"] + raw["pass_right"]["final"])
    assert len(raw["probe_scores"]) == len(raw["probe_learned_step"]) == cfg.probe_prompts
    assert 0 < len(raw["bf16_unchanged"]["rl"]) == len(raw["bf16_unchanged"]["sft"])
    assert [row["figure"] for row in saved["testbed"]] == ["greedy accuracy", "pass@1", f"pass@{cfg.pass_samples}"]
    names = [c["name"] for c in saved["claims"]]
    assert any(n.startswith("GAIN-RL") for n in names) and any("share of the RL gain" in n for n in names)
    assert any(n.startswith("AlphaRL: steps to reach the uniform run's final accuracy") for n in names)
    jump = raw["jump"]  # the in-loop jump of the third arm: done with the accuracy around it, or skipped with why
    assert jump["step"] == 4 and ("skipped" in jump or {"accuracy_before", "accuracy_after", "r2"} <= set(jump))
    assert all(c["verdict"] in ("holds", "does not", "cannot tell") for c in saved["claims"])
    for name in ("demo.png", "demo.txt", "report/index.html", "trajectory/trajectory.json",
                 "rank1-model/config.json"):
        assert (tmp_path / name).exists(), name
    table = format_table(saved)
    for text in ("GAIN-RL", "pass@1", "claims", "verdict", "bf16 entries unchanged", "Spearman", "uniform+jump",
                 "jump at step 4"):
        assert text in table
