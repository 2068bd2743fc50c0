"""Every subcommand's documented failure modes, from the user's side: ``rlsignals ARGS``
must exit non-zero (2 for a bad flag, 1 otherwise) with exactly one line on stderr that
names the culprit, and leave no output. The cases run through the command line's entry
point in this process; the process boundary itself (a real exit status and stderr, the
traceback of --debug) is checked in a subprocess."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, run_cli_process

# (id, argv template, expected exit status, text the one line must contain). In the
# argv, {base}, {ckpt-10}, {ckpt-20}, {other}, {traj}, {model}, {data}, {empty},
# {no-weights} are the fixtures' paths, {out} a fresh path, {tmp} the test's folder.
CASES = [
    ("no-command", [], 2, "required: command"),
    ("unknown-flag", ["diff-report", "--before", "{base}", "--after", "{ckpt-10}", "--out", "{out}", "--bogus"], 2,
     "unrecognized arguments: --bogus"),
    ("rank1-missing-base", ["rank1", "--base", "{tmp}/nope", "--ckpt", "{ckpt-10}", "--out", "{out}"], 1,
     "nope: not a checkpoint folder (no such folder)"),
    ("rank1-steps-count", ["rank1", "--base", "{base}", "--ckpt", "{ckpt-10}", "{ckpt-20}", "--steps", "10",
                           "--out", "{out}"], 2, "--steps: got 1 steps for 2 checkpoints"),
    ("rank1-bad-regex", ["rank1", "--base", "{base}", "--ckpt", "{ckpt-10}", "--include", "(", "--out", "{out}"], 2,
     "argument --include: not a valid regular expression"),
    ("rank1-other-shape", ["rank1", "--base", "{base}", "--ckpt", "{ckpt-10}", "{other}", "--out", "{out}",
                           "--backend", "torch"], 1, "has shape"),
    ("rank1-model-other-base", ["rank1-model", "--base", "{other}", "--traj", "{traj}", "--out", "{out}"], 1,
     "other: tensor 'model.layers.0.mlp.down_proj.weight' has shape (16, 24)"),
    ("rank1-model-checkpoint-99", ["rank1-model", "--base", "{base}", "--traj", "{traj}", "--out", "{out}",
                                   "--checkpoint", "99"], 2, "--checkpoint 99: the trajectory"),
    ("rank1-model-no-traj", ["rank1-model", "--base", "{base}", "--traj", "{tmp}/none", "--out", "{out}"], 1,
     "none: no trajectory.json"),
    ("rank1-model-truncated-index", ["rank1-model", "--base", "{base}", "--traj", "{cut-index}", "--out", "{out}"],
     1, "trajectory.json: not a trajectory index"),
    ("rank1-model-truncated-vectors", ["rank1-model", "--base", "{base}", "--traj", "{cut-vectors}", "--out",
                                       "{out}"], 1, ".safetensors: cannot read"),
    ("extrapolate-linear-other-base", ["extrapolate", "--base", "{other}", "--traj", "{traj}", "--out", "{out}",
                                       "--method", "linear_step", "--target-step", "40"], 1, "has shape (16, 24)"),
    ("extrapolate-needs-target", ["extrapolate", "--base", "{base}", "--traj", "{traj}", "--out", "{out}",
                                  "--method", "linear_step"], 2, "--method linear_step needs --target-step"),
    ("extrapolate-alpharl-needs-accuracy", ["extrapolate", "--base", "{base}", "--traj", "{traj}", "--out", "{out}"],
     2, "--method alpharl needs --accuracy"),
    ("extrapolate-missing-accuracy-file", ["extrapolate", "--base", "{base}", "--traj", "{traj}", "--out", "{out}",
                                           "--accuracy", "{tmp}/acc.jsonl", "--target-accuracy", "0.9"], 1,
     "acc.jsonl: No such file"),
    ("diff-report-k-too-large", ["diff-report", "--before", "{base}", "--after", "{ckpt-10}", "--out", "{out}",
                                 "--k", "1000"], 1, "k=1000 exceeds the smaller dimension"),
    ("diff-report-alpha", ["diff-report", "--before", "{base}", "--after", "{ckpt-10}", "--out", "{out}",
                           "--alpha", "1.5"], 2, "argument --alpha: expected a fraction"),
    ("diff-report-other-shape", ["diff-report", "--before", "{base}", "--after", "{other}", "--out", "{out}"], 1,
     "has shape"),
    ("diff-report-out-is-a-file", ["diff-report", "--before", "{base}", "--after", "{ckpt-10}", "--out",
                                   "{tmp}/file.txt"], 1, "file.txt: is a file"),
    ("diff-report-out-under-a-file", ["diff-report", "--before", "{base}", "--after", "{ckpt-10}", "--out",
                                      "{tmp}/file.txt/report"], 1, "cannot be created, "),
    ("demo-out-not-ours", ["demo", "--out", "{tmp}/mine"], 1, "mine: exists and is not empty; choose a new"),
    ("showcase-overwrite-not-ours", ["showcase", "--out", "{tmp}/mine", "--overwrite"], 1,
     "--overwrite replaces only a folder written by `rlsignals showcase`"),
    ("score-model-not-a-folder", ["score", "--model", "nope", "--data", "{data}", "--out", "{out}.jsonl"], 1,
     "never sent to the Hugging Face Hub; ask for a Hub model explicitly: --model hub:org/name"),
    ("score-no-weights", ["score", "--model", "{no-weights}", "--data", "{data}", "--out", "{out}.jsonl"], 1,
     "holds no weights"),
    ("score-empty-data", ["score", "--model", "{model}", "--data", "{empty}", "--out", "{out}.jsonl"], 1,
     "empty.jsonl: holds no rows"),
    ("score-missing-data", ["score", "--model", "{model}", "--data", "{tmp}/none.jsonl", "--out", "{out}.jsonl"], 1,
     "none.jsonl: no such data file"),
    ("score-bad-module", ["score", "--model", "{model}", "--data", "{data}", "--out", "{out}.jsonl", "--module",
                          "model.nothing"], 1, "has no module 'model.nothing'"),
    ("score-bad-out-type", ["score", "--model", "{model}", "--data", "{data}", "--out", "{out}.txt"], 2,
     "unsupported output type '.txt'"),
    ("score-out-is-data", ["score", "--model", "{model}", "--data", "{data}", "--out", "{data}"], 2,
     "is the --data file itself"),
    ("score-batch-tokens", ["score", "--model", "{model}", "--data", "{data}", "--out", "{out}.jsonl",
                            "--batch-tokens", "0"], 2, "argument --batch-tokens: expected a whole number >= 1"),
    ("score-long-prompt", ["score", "--model", "{model}", "--data", "{long}", "--out", "{out}.jsonl"], 1,
     "prompt 0 has 305 tokens, more than the model's context of 256"),
    ("train-unknown-flag", ["train", "{run}", "--output-dir", "{out}", "--stepz", "3"], 2,
     "rlsignals train: error: unrecognized arguments: --stepz 3"),
    ("train-output-dir-is-a-file", ["train", "{run}", "--output-dir", "{tmp}/file.txt"], 1,
     "output_dir {tmp}/file.txt: is a file, expected a folder"),
    ("train-output-dir-not-ours", ["train", "{run}", "--output-dir", "{tmp}/mine"], 1,
     "output_dir {tmp}/mine: exists and is not empty; choose a new or empty folder"),
    ("train-long-prompt", ["train", "{run}", "--data", "{long}", "--output-dir", "{out}"], 1,
     "prompt 0 has 305 tokens, more than the 252 that fit the model's context of 256 less max_new_tokens (4)"),
    ("train-missing-model", ["train", "{run}", "--model", "{tmp}/nope", "--output-dir", "{out}"], 2,
     "is not a local Hugging Face model folder"),
]


@pytest.fixture
def paths(ckpts, traj, scoring, training, tmp_path):
    """Every placeholder of CASES, including damaged copies of the trajectory store."""
    import shutil

    cut_index, cut_vectors = tmp_path / "cut-index", tmp_path / "cut-vectors"
    for copy in (cut_index, cut_vectors):
        shutil.copytree(traj, copy)
    index = (cut_index / "trajectory.json").read_text()
    (cut_index / "trajectory.json").write_text(index[: len(index) // 2])
    record = sorted(cut_vectors.glob("record-*.safetensors"))[-1]
    record.write_bytes(record.read_bytes()[:200])
    (tmp_path / "file.txt").write_text("the user's notes\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "results.csv").write_text("1,2\n")
    return {**{k: str(v) for k, v in ckpts.items()}, "traj": str(traj), **{k: str(v) for k, v in scoring.items()},
            **{k: str(v) for k, v in training.items()},
           "cut-index": str(cut_index), "cut-vectors": str(cut_vectors), "out": str(tmp_path / "out"),
           "tmp": str(tmp_path)}


@pytest.mark.parametrize("argv, code, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_failure_is_one_line_naming_the_culprit(paths, tmp_path, argv, code, text):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run_cli(*[arg.format(**paths) for arg in argv])
    assert result.code == code, result.stderr
    assert len(result.lines) == 1, result.stderr
    assert result.lines[0].startswith("rlsignals") and "error:" in result.lines[0], result.stderr
    assert text.format(**paths) in result.lines[0]
    assert "internal error" not in result.lines[0] and "Traceback" not in result.stderr
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before  # a failed command leaves nothing behind


def test_debug_flag_and_variable_show_the_traceback(paths):
    argv = ["rank1-model", "--base", paths["other"], "--traj", paths["traj"], "--out", paths["out"]]
    for extra, env in ((["--debug"], None), ([], {"RLSIGNALS_DEBUG": "1"})):
        result = run_cli_process(*extra, *argv, env=env)
        assert result.code == 1
        assert "Traceback (most recent call last)" in result.stderr and "CheckpointError" in result.stderr


def test_cases_cover_every_subcommand():
    tested = {argv[0] for _, argv, _, _ in CASES if argv}
    assert tested >= {"rank1", "rank1-model", "extrapolate", "diff-report", "score", "train"}
    assert len({c[0] for c in CASES}) == len(CASES)
    json.dumps(CASES)  # a plain table
