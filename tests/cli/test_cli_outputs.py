"""What the commands leave on disk, from the user's side: an existing output is never
deleted or overwritten unless it is the same command's and --overwrite is given;
outputs carry their marker; stale temporaries of dead processes are cleaned; an
extrapolated checkpoint carries only what belongs to its weights; score's
partial file of a failed run does not block the corrected rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import run_cli
from safetensors import safe_open

from rlsignals.io.atomic import MARKER


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def commands(ckpts, traj, out):
    """argv of the three checkpoint-writing commands, writing to ``out``."""
    return {
        "rank1-model": ["rank1-model", "--base", ckpts["base"], "--traj", traj, "--out", out],
        "extrapolate": ["extrapolate", "--base", ckpts["base"], "--traj", traj, "--out", out, "--method",
                        "two_point", "--factor", "2"],
        "diff-report": ["diff-report", "--before", ckpts["base"], "--after", ckpts["ckpt-20"], "--out", out, "--k",
                        "4", "--max-iters", "8", "--backend", "torch"],
    }


@pytest.mark.parametrize("command", ["rank1-model", "extrapolate", "diff-report"])
def test_never_overwrites_what_it_did_not_write(ckpts, traj, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept by the user\n")
    (out / "sub").mkdir()
    argv = commands(ckpts, traj, out)[command]
    for extra in ([], ["--overwrite"]):
        result = run_cli(*argv, *extra)
        assert result.code == 1 and len(result.lines) == 1, result.stderr
        assert "nothing was changed" in result.stderr if extra else "exists and is not empty" in result.stderr
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sub"]
        assert (out / "notes.txt").read_text() == "kept by the user\n"


@pytest.mark.parametrize("command", ["rank1-model", "extrapolate", "diff-report"])
def test_rerun_needs_overwrite_and_replaces_only_its_own_output(ckpts, traj, tmp_path, command):
    out = tmp_path / "out"
    stale = tmp_path / f".out.tmp-{dead_pid()}"
    stale.mkdir()
    (stale / "half-written").write_text("x")
    argv = commands(ckpts, traj, out)[command]
    assert run_cli(*argv).code == 0
    assert json.loads((out / MARKER).read_text()) == {"written_by": "rlsignals", "command": command,
                                                      "complete": True}
    assert not stale.exists()  # a dead process's temporary is cleaned by the next run
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_cli(*argv)
    assert again.code == 1 and "pass --overwrite" in again.stderr and len(again.lines) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == first
    assert run_cli(*argv, "--overwrite").code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left beside it
    other = [a for name, a in commands(ckpts, traj, out).items() if name != command][0]
    refused = run_cli(*other, "--overwrite")  # another command's --overwrite does not touch it
    assert refused.code == 1 and f"written by `rlsignals {command}`" in refused.stderr


def test_extrapolated_checkpoint_carries_only_its_weights_files(ckpts, traj, tmp_path):
    out = tmp_path / "jump"
    result = run_cli("extrapolate", "--base", ckpts["base"], "--traj", traj, "--out", out, "--method", "linear_step",
                     "--target-step", "40")
    assert result.code == 0, result.stderr
    source = {p.name for p in ckpts["ckpt-20"].iterdir()}
    assert {"optimizer.pt", "rng_state.pth", "trainer_state.json"} <= source
    assert {p.name for p in out.iterdir()} == {"config.json", "generation_config.json", "tokenizer_config.json",
                                               "model.safetensors", "extrapolation.json", MARKER}
    with safe_open(str(out / "model.safetensors"), framework="pt") as f, \
            safe_open(str(ckpts["ckpt-20"] / "model.safetensors"), framework="pt") as g:
        assert set(f.keys()) == set(g.keys())
    assert json.loads((out / "extrapolation.json").read_text())["method"] == "linear_step"


def test_rank1_resumes_its_own_store_and_refuses_a_user_folder(ckpts, tmp_path):
    out = tmp_path / "traj"
    base = ["rank1", "--base", ckpts["base"], "--out", out, "--backend", "torch"]
    assert run_cli(*base, "--ckpt", ckpts["ckpt-10"]).code == 0
    assert json.loads((out / MARKER).read_text())["complete"] is True
    resumed = run_cli(*base, "--ckpt", ckpts["ckpt-10"], ckpts["ckpt-20"])
    assert resumed.code == 0, resumed.stderr
    assert "over 2 checkpoints" in resumed.stdout
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("1,2\n")
    refused = run_cli("rank1", "--base", ckpts["base"], "--ckpt", ckpts["ckpt-10"], "--out", mine)
    assert refused.code == 1 and "exists and is not empty" in refused.stderr
    assert [p.name for p in mine.iterdir()] == ["data.csv"]


def test_score_outputs_and_a_failed_partial(scoring, tmp_path):
    out, ordered = tmp_path / "scores.jsonl", tmp_path / "ordered.jsonl"
    argv = ["score", "--model", scoring["model"], "--data", scoring["data"], "--out", out, "--backend", "torch"]
    assert run_cli(*argv).code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and {"index", "score", "rank"} <= set(rows[0])
    again = run_cli(*argv)
    assert again.code == 1 and "pass --overwrite" in again.stderr and len(again.lines) == 1
    assert run_cli(*argv, "--overwrite").code == 0

    # --overwrite replaces only a table written by `rlsignals score`
    (ordered).write_text('{"prompt": "the user\'s own file"}\n')
    refused = run_cli(*argv, "--overwrite", "--ordered-data", ordered)
    assert refused.code == 1 and "nothing was changed" in refused.stderr
    assert ordered.read_text() == '{"prompt": "the user\'s own file"}\n'

    # the partial file of a failed run with other settings is replaced; an interrupted one is refused
    new_out = tmp_path / "new.jsonl"
    partial = tmp_path / "new.jsonl.partial.jsonl"
    row = {"index": 0, "intra": 0.5, "inter": 0.5, "score": 1.0}
    partial.write_text(json.dumps({"rlsignals_partial": "other", "failed": "ValueError: bad module"}) + "\n"
                       + json.dumps(row) + "\n")
    argv[argv.index(out)] = new_out
    replaced = run_cli(*argv)
    assert replaced.code == 0, replaced.stderr
    assert not partial.exists() and len(new_out.read_text().splitlines()) == 3
    assert "discarding the partial results of a failed run" in replaced.stderr
    third = tmp_path / "third.jsonl"
    kept = tmp_path / "third.jsonl.partial.jsonl"
    kept.write_text(json.dumps({"rlsignals_partial": "other"}) + "\n" + json.dumps(row) + "\n")
    argv[argv.index(new_out)] = third
    interrupted = run_cli(*argv)
    assert interrupted.code == 1 and len(interrupted.lines) == 1, interrupted.stderr
    assert "interrupted run with other settings" in interrupted.stderr and "--restart" in interrupted.stderr
    assert kept.read_text().count("\n") == 2 and not third.exists()


def test_train_output_dir_is_its_own_resumed_or_replaced_only_when_asked(training, tmp_path):
    out = tmp_path / "run"
    argv = ["train", training["run"], "--output-dir", out]
    done = run_cli(*argv)
    assert done.code == 0, done.stderr
    assert json.loads((out / MARKER).read_text()) == {"written_by": "rlsignals", "command": "train", "complete": True}
    assert {"checkpoint-1", "checkpoint-2", "metrics.jsonl"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != MARKER]  # no temporary, no lock
    again = run_cli(*argv, "--steps", "3")  # resumes
    assert again.code == 0, again.stderr
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    fresh = run_cli(*argv, "--no-resume")
    assert fresh.code == 1 and len(fresh.lines) == 1 and "pass --overwrite" in fresh.stderr
    assert (out / "checkpoint-3").is_dir()
    replaced = run_cli(*argv, "--no-resume", "--overwrite")
    assert replaced.code == 0, replaced.stderr
    assert not (out / "checkpoint-3").exists()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_train_never_touches_a_users_files(training, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"the": "user\'s line"}\n')
    (out / "scores.jsonl").write_text('{"score": 1.0}\n')
    for extra in ([], ["--overwrite", "--no-resume"], ["--sampler", "gain_rl"]):
        result = run_cli("train", training["run"], "--output-dir", out, *extra)
        assert result.code == 1 and len(result.lines) == 1, result.stderr
        assert "internal error" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "scores.jsonl"]
    assert (out / "metrics.jsonl").read_text() == '{"the": "user\'s line"}\n'


def test_a_bad_kept_scores_file_is_one_line(training, tmp_path):
    """A scores.jsonl in a run folder of ours that is not a scores table: one line, not a crash."""
    out = tmp_path / "run"
    assert run_cli("train", training["run"], "--output-dir", out, "--steps", "1").code == 0
    (out / "scores.jsonl").write_text('{"value": 1.0}\n')
    result = run_cli("train", training["run"], "--output-dir", out, "--steps", "2", "--sampler", "gain_rl")
    assert result.code == 2 and len(result.lines) == 1, result.stderr
    assert "scores.jsonl: expected rows with a 'score' column" in result.stderr


LOCK_HOLDER = """
import sys, time
from rlsignals.io.outputs import incremental_output
with incremental_output(sys.argv[1], "train", False, resume=True, flag="output_dir"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_run_into_the_same_output_dir_is_refused(training, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_cli("train", training["run"], "--output-dir", out)
        assert result.code == 1 and len(result.lines) == 1, result.stderr
        assert f"another rlsignals run (pid {holder.pid}) is writing it" in result.stderr
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_cli("train", training["run"], "--output-dir", out).code == 0  # a killed holder leaves no stale lock


def test_checkpoint_temporaries_carry_the_pid_and_dead_ones_are_cleaned(training, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", training["run"], "--output-dir", out, "--steps", "1").code == 0
    stale = out / f".checkpoint-2.tmp-{dead_pid()}"
    stale.mkdir()
    live = out / f".checkpoint-9.tmp-{os.getpid()}"  # a live process's: not ours to remove
    live.mkdir()
    assert run_cli("train", training["run"], "--output-dir", out).code == 0
    assert not stale.exists() and live.is_dir()
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
