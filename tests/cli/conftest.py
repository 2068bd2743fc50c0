"""Fixtures of the command-line tests: tiny checkpoints (a base, two later ones with a
planted rank-1 update, one of another shape), a trajectory store over them, a
saved model with a tokenizer and a prompt file; plus ``run_cli``, which runs
``python -m rlsignals`` in a subprocess as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import CHATML, make_model, make_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """Non-empty stderr lines."""
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
    """``python -m rlsignals ARGS`` in a subprocess. These tests exercise the commands, not
    the kernels: the C++ extension is left out (RLSIGNALS_NO_EXTENSION=1, the torch
    backend serves), so no subprocess compiles or loads it."""
    full_env = {key: value for key, value in os.environ.items() if key != "RLSIGNALS_DEBUG"}
    full_env |= {"RLSIGNALS_NO_EXTENSION": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    done = subprocess.run([sys.executable, "-m", "rlsignals", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=300)
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """base, ckpt-10, ckpt-20 (W_t = W_0 + 0.01 * step * a b^T per module) and `other`
    (a model of another hidden size), float32, single-file safetensors; ckpt-20 also
    holds a trainer's state (optimizer.pt, rng_state.pth, trainer_state.json)."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**SMALL))
    base.save_pretrained(root / "base")
    state = base.state_dict()
    gen = torch.Generator().manual_seed(1)
    paths = {"base": root / "base"}
    for step in (10, 20):
        new = {n: w.clone() for n, w in state.items()}
        for n, w in new.items():
            if ".layers." in n and w.dim() == 2:
                a, b = torch.randn(w.shape[0], generator=gen), torch.randn(w.shape[1], generator=gen)
                w += 0.01 * step * torch.outer(a / a.norm(), b / b.norm())
        model = LlamaForCausalLM(LlamaConfig(**SMALL))
        model.load_state_dict(new)
        paths[f"ckpt-{step}"] = root / f"checkpoint-{step}"
        model.save_pretrained(paths[f"ckpt-{step}"])
    last = paths["ckpt-20"]
    torch.save({"state": {}}, last / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, last / "rng_state.pth")
    (last / "trainer_state.json").write_text(json.dumps({"global_step": 20}))
    (last / "tokenizer_config.json").write_text("{}")
    LlamaForCausalLM(LlamaConfig(**{**SMALL, "hidden_size": 16, "intermediate_size": 24})).save_pretrained(
        root / "other")
    paths["other"] = root / "other"
    return paths


@pytest.fixture(scope="session")
def traj(ckpts, tmp_path_factory) -> Path:
    """A trajectory store over ckpt-10 and ckpt-20, written by `rlsignals rank1`."""
    out = tmp_path_factory.mktemp("traj") / "traj"
    result = run_cli("rank1", "--base", ckpts["base"], "--ckpt", ckpts["ckpt-10"], ckpts["ckpt-20"],
                     "--out", out, "--backend", "torch")
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def scoring(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny causal LM with its tokenizer, a prompt file and an empty one."""
    root = tmp_path_factory.mktemp("scoring")
    tokenizer = make_tokenizer("word", CHATML)
    make_model("llama", len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                            ("what is two plus three", "add four and five", "what is seven minus one")))
    (root / "empty.jsonl").write_text("")
    (root / "no-weights").mkdir()
    (root / "no-weights" / "config.json").write_text((root / "model" / "config.json").read_text())
    return {"model": root / "model", "data": data, "empty": root / "empty.jsonl", "no-weights": root / "no-weights"}
