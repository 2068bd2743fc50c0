"""`rlsignals train` under torchrun: 2 gloo ranks on the CPU against 1 process with
the same global batch and seed (same prompts, same rewards, weights after 3 steps
equal to fp32 reduction-order tolerance), FSDP2 killed after a checkpoint and
resumed, and DDP; the ranks cut their share into micro-batches (and generate in
smaller batches), the single process does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import CHATML, make_model, make_tokenizer
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

PROMPTS = ["what is two plus three", "multiply six by three", "the answer is eight",
           "compute the sum of seven and five", "twelve minus five equals seven", "how many apples are left",
           "answer with a number", "solve the following problem"]
REWARDS = '''
import os
from pathlib import Path


def seven(text, row):
    """Fraction of completion words that are 'seven'; with KILL_AFTER set, the process kills
    itself once that checkpoint exists (mid-step, as a crash would)."""
    kill_after = os.environ.get("KILL_AFTER")
    if kill_after and Path(kill_after).exists():
        os.kill(os.getpid(), 9)
    words = text.split()
    return sum(w == "seven" for w in words) / max(1, len(words))
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_parallel")
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "data.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (root / "train_rewards.py").write_text(REWARDS)
    config = {"model": "model", "data": "data.jsonl", "reward": "train_rewards:seven", "steps": 3,
              "prompts_per_step": 4, "generations": 4, "max_new_tokens": 6, "lr": 1e-3, "save_every": 2,
              "progress": False}
    (root / "run.json").write_text(json.dumps(config))
    single = run(root, [], "single")
    assert single.returncode == 0, single.stderr[-3000:]
    return root


def run(root: Path, launcher: list[str], out: str, *extra: str, env: dict | None = None):
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, *launcher, "-m", "rlsignals", "train", str(root / "run.json"),
               "--output-dir", str(root / out), *extra]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1500, check=False)


TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(root: Path, out: str) -> None:
    one, two = metrics(root / "single"), metrics(root / out)
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert a["prompts"] == b["prompts"]
        assert a["prompt_rewards"] == b["prompt_rewards"]
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["angle_live_score"] == pytest.approx(a["angle_live_score"], abs=1e-5)
    w1 = load_file(root / "single" / "checkpoint-3" / "model.safetensors")
    w2 = load_file(root / out / "checkpoint-3" / "model.safetensors")
    assert w1.keys() == w2.keys()
    start = load_file(root / "model" / "model.safetensors")
    assert any(not torch.equal(w1[k], start[k]) for k in w1)  # training moved the weights
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=2e-5, msg=name)


def test_fsdp_two_ranks_killed_and_resumed_equal_one_process(setup):
    root = setup
    killed = run(root, TORCHRUN, "fsdp", "--parallel", "fsdp", "--micro-batch-size", "3",
                 env={"KILL_AFTER": str(root / "fsdp" / "checkpoint-2" / "trainer_state.json")})
    assert killed.returncode != 0
    assert (root / "fsdp" / "checkpoint-2" / "optimizer").is_dir()  # sharded optimizer state
    assert not (root / "fsdp" / "checkpoint-3").exists()
    resumed = run(root, TORCHRUN, "fsdp", "--parallel", "fsdp", "--micro-batch-size", "3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(root, "fsdp")


def test_ddp_two_ranks_equal_one_process(setup):
    root = setup
    result = run(root, TORCHRUN, "ddp", "--parallel", "ddp", "--micro-batch-size", "1", "--generation-batch-size", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "ddp" / "checkpoint-3" / "optimizer.pt").is_file()
    assert_same_run(root, "ddp")
