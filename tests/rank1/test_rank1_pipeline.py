"""Checkpoint pipeline on small checkpoints with planted rank-1-plus-noise updates:
trajectories, the rank-1 model, the three extrapolators, resume, torchrun, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from rlsignals.io.checkpoints import Checkpoint, CheckpointError, layout_batches, select_matrices
from rlsignals.ops.svd import delta_svd
from rlsignals.rank1 import track
from rlsignals.rank1.extrapolate import extrapolate, read_accuracy
from rlsignals.rank1.track import rank1_model, track_rank1
from rlsignals.rank1.trajectory import Trajectory

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
STEPS = [10, 20, 30, 40, 50, 60]
RATE = 0.004  # sigma_1 of every planted update grows by RATE per step


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """base + 6 checkpoints: W_t = W_0 + RATE * step * a b^T + small noise (a, b unit, per module)."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**SMALL))
    base.save_pretrained(root / "base")
    state = base.state_dict()
    names = [n for n in state if ".layers." in n and n.endswith(".weight") and state[n].dim() == 2
             and "norm" not in n]
    gen = torch.Generator().manual_seed(1)
    directions = {n: (torch.nn.functional.normalize(torch.randn(state[n].shape[0], generator=gen), dim=0),
                      torch.nn.functional.normalize(torch.randn(state[n].shape[1], generator=gen), dim=0))
                  for n in names}
    paths = []
    for i, step in enumerate(STEPS):
        model = LlamaForCausalLM(LlamaConfig(**SMALL))
        new = {n: w.clone() for n, w in state.items()}
        for n, (a, b) in directions.items():
            new[n] += RATE * step * torch.outer(a, b) + 1e-5 * torch.randn(new[n].shape, generator=gen)
        model.load_state_dict(new)
        path = root / f"checkpoint-{step}"
        model.save_pretrained(path, **({"max_shard_size": "20KB"} if i % 2 else {}))  # sharded and not
        paths.append(path)
    return root, paths, directions


@pytest.fixture(scope="module")
def whole(run):
    """The trajectory of all six checkpoints (read-only for the tests that share it)."""
    root, paths, _ = run
    return track_rank1(root / "base", paths, root / "traj", progress=False)


def test_trajectory_recovers_planted_sigma_and_direction(run, whole):
    root, paths, directions = run
    traj = whole
    assert traj.steps == STEPS
    assert sorted(traj.modules) == sorted(directions)
    for module, (a, b) in directions.items():
        sigma = traj.scalar("sigma", module)
        assert torch.allclose(sigma, torch.tensor(STEPS, dtype=torch.float64) * RATE, rtol=2e-3)
        u, v = traj.vectors(module)
        assert ((u @ a).abs() > 0.9999).all() and ((v @ b).abs() > 0.9999).all()
        bound, estimate = traj.scalar("err_bound", module), traj.scalar("err_estimate", module)
        assert (estimate <= 1e-4).all() and torch.equal(traj.scalar("certified", module), bound <= 1e-4)
        # warm start: later checkpoints need fewer passes than the first
        iters = traj.scalar("iters", module)
        assert iters[1:].max() <= iters[0]
    certified = sum(bool(traj.scalar("certified", m).all()) for m in traj.modules)
    assert traj.certified_count() == (certified, len(directions))
    # the store is a small fraction of a checkpoint even at these toy shapes
    store = sum(f.stat().st_size for f in traj.root.iterdir())
    ckpt = sum(f.stat().st_size for f in paths[0].glob("*.safetensors"))
    assert store < ckpt


def assert_same_records(a: Trajectory, b: Trajectory) -> None:
    """Bit-for-bit equal S, U, V, frob, bounds, estimates, flags and passes."""
    assert a.modules == b.modules and a.steps == b.steps
    for module in a.modules:
        for x, y in zip(a.triplets(module), b.triplets(module)):
            assert torch.equal(x, y), module
        for name in ("frob", "err_bound", "err_estimate", "certified", "iters"):
            assert torch.equal(a.scalar(name, module), b.scalar(name, module)), (module, name)


def test_resume_equals_an_uninterrupted_run(run, tmp_path, monkeypatch):
    """Interrupted after checkpoint 1 of 3 (an error in the second's SVD), resumed: the
    store equals an uninterrupted run's, passes included (the warm-start basis is kept)."""
    root, paths, _ = run
    whole = track_rank1(root / "base", paths[:3], tmp_path / "whole", progress=False)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > len(batches):
            raise KeyboardInterrupt
        return delta_svd(*args, **kwargs)

    batches = layout_batches(Checkpoint(root / "base"), whole.modules)
    monkeypatch.setattr(track, "delta_svd", interrupted)
    with pytest.raises(KeyboardInterrupt):
        track_rank1(root / "base", paths[:3], tmp_path / "part", progress=False)
    monkeypatch.undo()
    stored = Trajectory.open(tmp_path / "part")
    assert len(stored.records) == 1 and stored.basis_file is not None
    first = (tmp_path / "part" / stored.records[0].file).stat().st_mtime_ns
    resumed = track_rank1(root / "base", paths[:3], tmp_path / "part", progress=False)
    assert_same_records(whole, resumed)
    assert (tmp_path / "part" / resumed.records[0].file).stat().st_mtime_ns == first  # skipped, not redone
    # the basis is kept for the latest record only
    assert [f.name for f in (tmp_path / "part").glob("basis-*")] == [resumed.basis_file]
    with pytest.raises(ValueError, match="another base or module set"):
        track_rank1(root / "base", paths, tmp_path / "part", include=r"q_proj\.weight$", progress=False)
    with pytest.raises(ValueError, match="made with k=1, tol=0.0001"):
        track_rank1(root / "base", paths, tmp_path / "part", tol=1e-3, progress=False)


def test_every_header_is_checked_before_the_first_svd(run, tmp_path, monkeypatch):
    """A missing, mis-shaped or badly typed later checkpoint is found before any SVD,
    and a failed run leaves no output folder."""
    root, paths, _ = run
    calls = []
    monkeypatch.setattr(track, "delta_svd", lambda *a, **k: calls.append(1) or delta_svd(*a, **k))
    with pytest.raises(CheckpointError, match="nope: not a checkpoint folder"):
        track_rank1(root / "base", [paths[0], tmp_path / "nope"], tmp_path / "out", progress=False)
    other = LlamaForCausalLM(LlamaConfig(**{**SMALL, "intermediate_size": 40}))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="has shape"):
        track_rank1(root / "base", [paths[0], tmp_path / "other"], tmp_path / "out", progress=False)
    ints = Checkpoint(paths[0])
    module = select_matrices(ints)[0]
    save_file({n: ints.get(n).to(torch.int32) if n == module else ints.get(n) for n in ints.names()},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "ints").mkdir()
    (tmp_path / "model.safetensors").rename(tmp_path / "ints" / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"{module}' has dtype I32"):
        track_rank1(root / "base", [paths[0], tmp_path / "ints"], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="given twice"):
        track_rank1(root / "base", [paths[0], paths[0]], tmp_path / "out", progress=False)
    assert calls == [] and not (tmp_path / "out").exists()


def test_a_bf16_checkpoint_against_an_fp32_base(run, tmp_path):
    """Mixed dtypes are compared in fp32 (the bf16 rounding of the planted update stays
    far below its sigma_1)."""
    root, paths, directions = run
    model = AutoModelForCausalLM.from_pretrained(paths[-1], torch_dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    traj = track_rank1(root / "base", [tmp_path / "bf16"], tmp_path / "traj", steps=[60], progress=False)
    for module, (a, _) in directions.items():
        u, _ = traj.vectors(module)
        assert float(traj.scalar("sigma", module)[0]) == pytest.approx(60 * RATE, rel=2e-2)
        assert float((u[0] @ a).abs()) > 0.999


def test_rank1_model_equals_the_planted_update(run, whole, tmp_path):
    root, paths, _ = run
    traj = whole
    out = rank1_model(root / "base", traj, tmp_path / "r1", checkpoint=-1)
    model = AutoModelForCausalLM.from_pretrained(out)
    truth = Checkpoint(paths[-1])
    for module in traj.modules:
        err = (model.state_dict()[module] - truth.get(module)).norm() / (truth.get(module) - Checkpoint(
            root / "base").get(module)).norm()
        assert err < 1e-2


def write_accuracy(path, steps):
    path.write_text("".join(json.dumps({"step": s, "accuracy": 0.1 + 0.01 * s}) + "\n" for s in steps))
    return path


@pytest.mark.parametrize("method, kwargs", [
    ("alpharl", dict(target_accuracy=0.1 + 0.01 * 60, update="replace")),
    ("linear_step", dict(target_step=60)),
    ("two_point", dict(target_step=60)),
])
def test_extrapolation_recovers_a_held_out_step(run, whole, tmp_path, method, kwargs):
    """Fit on steps 10..40 and predict step 60, which the fit never saw."""
    root, paths, _ = run
    traj = whole
    acc_file = write_accuracy(tmp_path / "acc.jsonl", STEPS)
    out = extrapolate(root / "base", traj, tmp_path / "x", method=method, accuracy=read_accuracy(acc_file),
                      accuracy_path=str(acc_file), fit_steps=[10, 20, 30, 40], **kwargs)
    report = json.loads((out / "extrapolation.json").read_text())
    assert report["method"] == method and report["fitted_steps"] == [10, 20, 30, 40]
    predicted, truth, base = Checkpoint(out), Checkpoint(paths[-1]), Checkpoint(root / "base")
    for module in traj.modules:
        target = truth.get(module) - base.get(module)
        err = (predicted.get(module) - truth.get(module)).norm() / target.norm()
        assert err < 2e-2, (module, float(err))
    if method == "alpharl":
        assert all(m["r2"] > 0.999 for m in report["modules"].values())
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_released_alpharl_update_adds_the_predicted_feature_to_the_latest_checkpoint(run, whole, tmp_path):
    root, paths, _ = run
    traj = whole
    acc = read_accuracy(write_accuracy(tmp_path / "acc.jsonl", STEPS))
    out = extrapolate(root / "base", traj, tmp_path / "x", accuracy=acc, fit_steps=[10, 20, 30, 40],
                      target_accuracy=0.1 + 0.01 * 60)
    latest, base = Checkpoint(paths[3]), Checkpoint(root / "base")
    module = traj.modules[0]
    added = Checkpoint(out).get(module) - latest.get(module)
    planted_at_60 = Checkpoint(paths[-1]).get(module) - base.get(module)
    assert (added - planted_at_60).norm() / planted_at_60.norm() < 2e-2


def test_bad_input(run, tmp_path):
    root, paths, _ = run
    traj = track_rank1(root / "base", paths[:3], tmp_path / "traj", progress=False)
    acc_file = write_accuracy(tmp_path / "acc.jsonl", [10, 20, 30, 99])
    with pytest.raises(ValueError, match=r"acc.jsonl: steps \[99\] have no checkpoint"):
        extrapolate(root / "base", traj, tmp_path / "x", accuracy=read_accuracy(acc_file),
                    accuracy_path=str(acc_file), target_accuracy=1.0)
    assert not (tmp_path / "x").exists()
    # another architecture
    other = LlamaForCausalLM(LlamaConfig(**{**SMALL, "intermediate_size": 40}))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="has shape"):
        track_rank1(root / "base", [tmp_path / "other"], tmp_path / "traj2", progress=False)
    # the rank-1 model: an index past the trajectory, a base of another shape
    with pytest.raises(ValueError, match=r"checkpoint must be an index in \[-3, 3\).*got 99"):
        rank1_model(root / "base", traj, tmp_path / "r1", checkpoint=99)
    with pytest.raises(CheckpointError, match="has shape .* the trajectory .* expects"):
        rank1_model(tmp_path / "other", traj, tmp_path / "r1")
    assert not (tmp_path / "r1").exists()
    # a truncated checkpoint file: error names the file, the store keeps what it had
    broken = tmp_path / "checkpoint-70"
    broken.mkdir()
    data = (paths[0] / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="checkpoint-70/model.safetensors"):
        track_rank1(root / "base", [*paths[:3], broken], tmp_path / "traj", progress=False)
    assert len(Trajectory.open(tmp_path / "traj").records) == 3


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_match_one_process(run, tmp_path):
    root, paths, _ = run
    args = ["-m", "rlsignals", "rank1", "--base", str(root / "base"), "--ckpt", *map(str, paths[:3])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=600, check=False)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_port=29541", *args, "--out", str(tmp_path / "two")], capture_output=True,
                         text=True, env=env, timeout=600, check=False)
    assert two.returncode == 0, two.stderr
    a, b = Trajectory.open(tmp_path / "one"), Trajectory.open(tmp_path / "two")
    assert a.modules == b.modules and a.steps == b.steps
    for module in a.modules:
        assert torch.equal(a.scalar("sigma", module), b.scalar("sigma", module))
        ua, va = a.vectors(module)
        ub, vb = b.vectors(module)
        assert torch.equal(ua, ub) and torch.equal(va, vb)
