"""Fixtures of the command-line tests: tiny checkpoints (a base, two later ones with a
planted rank-1 update, one of another shape), a trajectory store over them, a
saved model with a tokenizer and a prompt file; plus ``run_cli``, which runs
``rlsignals ARGS`` through the command line's own entry point in this process (as a
user's shell would, minus the process), and ``run_cli_process``, which runs
``python -m rlsignals ARGS`` in a subprocess for what only a real process shows (the
traceback of --debug, exit status and stderr at the process boundary)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import CHATML, make_model, make_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from rlsignals.cli import main

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


@contextlib.contextmanager
def _environment(env: dict[str, str] | None) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.pop("RLSIGNALS_DEBUG", None)
    os.environ.update(env or {})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
    """``rlsignals ARGS`` in this process (``rlsignals.cli.main``): its exit status, stdout and
    stderr, warnings shown on stderr as the command line shows them."""
    out, err = io.StringIO(), io.StringIO()

    def show(message, category, filename, lineno, file=None, line=None):
        err.write(warnings.formatwarning(message, category, filename, lineno, line))

    with _environment(env), contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        code = main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def run_cli_process(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """``python -m rlsignals ARGS`` in a subprocess, as a user would run it."""
    full_env = {key: value for key, value in os.environ.items() if key != "RLSIGNALS_DEBUG"}
    full_env |= {"HF_HUB_OFFLINE": "1", **(env or {})}
    done = subprocess.run([sys.executable, "-m", "rlsignals", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=300)
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
    long = root / "long.jsonl"  # prompt 0: more tokens than the model's 256 positions
    long.write_text(json.dumps({"prompt": "two " * 300, "answer": "2"}) + "\n"
                    + json.dumps({"prompt": "what is two plus three", "answer": "5"}) + "\n")
    return {"model": root / "model", "data": data, "empty": root / "empty.jsonl", "no-weights": root / "no-weights",
            "long": long}


@pytest.fixture(scope="session")
def training(scoring, tmp_path_factory) -> dict[str, Path]:
    """A `rlsignals train` config over the scoring model: 2 steps of 2 prompts x 2 completions."""
    root = tmp_path_factory.mktemp("training")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": "5"}) + "\n" for p in
                            ("what is two plus three", "add four and five", "what is seven minus one",
                             "the answer is eight")))
    run = root / "run.toml"
    run.write_text(f'model = "{scoring["model"]}"\ndata = "{data}"\nreward = "last_integer"\nsteps = 2\n'
                   "prompts_per_step = 2\ngenerations = 2\nmax_new_tokens = 4\nlr = 1e-3\nsave_every = 1\n"
                   "progress = false\nlive_angles = false\n")
    return {"run": run, "train-data": data}
