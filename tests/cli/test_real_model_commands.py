"""The folder `rlsignals setup-real` makes is taken as it is by score, train, rank1 and
diff-report (SmolLM2-135M-Instruct, SVAMP's arithmetic; tiny settings)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from helpers.real import real_assets

pytestmark = pytest.mark.slow


def test_the_real_folder_works_with_every_command(tmp_path):
    assets = real_assets(("svamp-arith-train", "svamp-arith-test"))
    data = tmp_path / "data.jsonl"
    rows = [json.loads(line) for line in assets.data["svamp-arith-train"].read_text().splitlines()[:4]]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = run_cli("score", "--model", assets.model, "--data", data, "--out", tmp_path / "scores.jsonl")
    assert scored.code == 0, scored.stderr
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 4
    run = tmp_path / "run"
    trained = run_cli("train", "--model", assets.model, "--data", data, "--output-dir", run, "--reward",
                      "last_integer", "--steps", "1", "--prompts-per-step", "2", "--generations", "2",
                      "--max-new-tokens", "6", "--micro-batch-size", "2", "--no-progress", "--no-live-angles")
    assert trained.code == 0, trained.stderr
    tracked = run_cli("rank1", "--base", assets.model, "--ckpt", run / "checkpoint-1", "--out", tmp_path / "traj",
                      "--include", r"layers\.(0|29)\.")
    assert tracked.code == 0, tracked.stderr
    assert "trajectory of 14 modules over 1 checkpoints" in tracked.stdout
    report = run_cli("diff-report", "--before", assets.model, "--after", run / "checkpoint-1", "--out",
                     tmp_path / "report", "--k", "4", "--include", r"layers\.0\.")
    assert report.code == 0, report.stderr
    assert (tmp_path / "report" / "index.html").exists()
