"""The demo's pipeline on the real model (SmolLM2-135M-Instruct, SVAMP's arithmetic) at its
quick size: every number of the table, the claims built by the demo's own code."""

from __future__ import annotations

import json

import pytest
from helpers.real import real_assets

from rlsignals.demo.run import DemoConfig, format_table, run_demo

pytestmark = pytest.mark.slow


def test_quick_real_demo_produces_the_whole_table(tmp_path):
    real_assets()
    cfg = DemoConfig.real(quick=True)
    run_demo(tmp_path, cfg, progress=False)
    saved = json.loads((tmp_path / "demo.json").read_text())
    steps = list(range(0, cfg.steps + 1, cfg.eval_every))
    assert saved["config"]["testbed"] == "smollm2" and saved["raw"]["eval_steps"] == steps
    for arm in ("gain_rl", "uniform", "jump"):
        assert all(len(c) == cfg.eval_prompts and set(c) <= {0.0, 1.0} for c in saved["raw"][f"{arm}_correct"])
    names = [c["name"] for c in saved["claims"]]
    assert any(n.startswith("GAIN-RL") for n in names) and any("share of the RL gain" in n for n in names)
    assert all(c["verdict"] in ("holds", "does not", "cannot tell") for c in saved["claims"])
    assert "smollm2" in format_table(saved) and (tmp_path / "report" / "index.html").exists()
