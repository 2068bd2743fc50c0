"""The in-loop AlphaRL tracker: exact rank-1 records in the trajectory store, the jump
rule, a constant-size checkpoint state, exact resume, sharded weights, TRL callback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import CHATML, make_model, make_tokenizer  # noqa: E402

from rlsignals.io.errors import UserError  # noqa: E402
from rlsignals.rank1.trajectory import Trajectory  # noqa: E402
from rlsignals.trainer.tracker import Rank1Tracker  # noqa: E402


def planted_steps(tracker, w0, steps, seed=1):
    """W_t = W_0 + 0.01 t a b^T + 1e-6 noise for every tracked parameter; track each step."""
    gen = torch.Generator().manual_seed(seed)
    directions = {n: (torch.randn(p.shape[0], generator=gen), torch.randn(p.shape[1], generator=gen))
                  for n, p in tracker.params.items()}
    with torch.no_grad():
        for step in steps:
            for n, p in tracker.params.items():
                a, b = directions[n]
                p.copy_(w0[n] + 0.01 * step * torch.outer(a, b) + 1e-6 * torch.randn(p.shape, generator=gen))
            tracker.track(step, accuracy=0.2 * step)
    return directions


def test_records_equal_a_dense_svd_and_the_jump_follows_the_rule(tmp_path):
    torch.manual_seed(0)
    model = make_model("llama", 40)
    tracker = Rank1Tracker(model, every=1, base_file=tmp_path / "base.safetensors", include=r"q_proj\.weight$")
    w0 = {n: p.detach().clone() for n, p in tracker.params.items()}
    directions = planted_steps(tracker, w0, (1, 2, 3))
    traj = Trajectory.open(tmp_path / "rank1_trajectory")  # what is on disk
    assert traj.steps == tracker.steps == [1, 2, 3] and traj.accuracy == pytest.approx([0.2, 0.4, 0.6])
    for n, p in tracker.params.items():
        dense = torch.linalg.svd((p.detach() - w0[n]).double())
        assert float(traj.scalar("sigma", n)[-1]) == pytest.approx(float(dense.S[0]), rel=1e-4)
        u, v = traj.vectors(n)
        assert float((u[-1].double() @ dense.U[:, 0]).abs()) > 1 - 1e-6
        assert float((v[-1].double() @ dense.Vh[0]).abs()) > 1 - 1e-6
        assert (traj.scalar("err_estimate", n) <= 1e-4).all()
    before = {n: p.detach().clone() for n, p in tracker.params.items()}
    report = tracker.jump(target_accuracy=0.8, update="replace")  # step 4's accuracy on the planted line
    for n, p in tracker.params.items():
        a, b = directions[n]
        planted = w0[n] + 0.04 * torch.outer(a, b)
        assert (p.detach() - planted).norm() / (planted - w0[n]).norm() < 1e-2
        assert report["r2"][n] > 0.999 and not torch.equal(p.detach(), before[n])


def test_a_jump_steps_ahead_follows_the_line(tmp_path):
    """linear in the step: two steps past step 3 of the planted line is its step 5."""
    torch.manual_seed(0)
    model = make_model("llama", 40)
    tracker = Rank1Tracker(model, every=1, base_file=tmp_path / "base.safetensors", include=r"q_proj\.weight$",
                           jump_at=3, jump_ahead=2)
    w0 = {n: p.detach().clone() for n, p in tracker.params.items()}
    directions = planted_steps(tracker, w0, (1, 2, 3))
    report = tracker.scheduled_jump(3)
    assert report["method"] == "linear_step" and report["target_step"] == 5 and tracker.scheduled_jump(4) is None
    for n, p in tracker.params.items():
        a, b = directions[n]
        planted = w0[n] + 0.05 * torch.outer(a, b)
        assert (p.detach() - planted).norm() / (planted - w0[n]).norm() < 1e-2
        assert report["r2"][n] > 0.999
    with pytest.raises(ValueError, match="jump_at goes with one of jump_target"):
        Rank1Tracker(model, every=1, base_file=tmp_path / "other.safetensors", jump_at=3, jump_target=0.5,
                     jump_ahead=2)


def test_checkpoint_state_does_not_grow_with_tracked_steps(tmp_path):
    """The state a checkpoint keeps is a few numbers; each record is k (m + n) floats
    per module (plus the scalars) in safetensors."""
    model = make_model("llama", 40)
    tracker = Rank1Tracker(model, every=1, base_file=tmp_path / "base.safetensors",
                           include=r"(q_proj|down_proj)\.weight$")
    w0 = {n: p.detach().clone() for n, p in tracker.params.items()}
    planted_steps(tracker, w0, (1,))
    one = json.dumps(tracker.state_dict())
    planted_steps(tracker, w0, (2, 3, 4, 5))
    five = json.dumps(tracker.state_dict())
    assert len(one) == len(five) < 200
    traj = tracker.trajectory
    floats = sum(m + n for m, n in traj.shapes.values())  # k = 1
    for record in traj.records:
        size = (traj.root / record.file).stat().st_size
        assert 4 * floats < size < 4 * floats + 400 * len(traj.modules)  # header: ~2 entries per module
    assert len(list(traj.root.glob("basis-*"))) == 1


def test_old_tracker_state_is_refused_in_one_line(tmp_path):
    tracker = Rank1Tracker(make_model("llama", 40), every=1, base_file=tmp_path / "base.safetensors")
    old = {"steps": [2], "accuracy": [0.5], "rewards": [], "jumps": [], "sigma": {}, "frob": {}, "err_bound": {},
           "u": {}, "v": {}}
    with pytest.raises(UserError, match="older rlsignals") as info:
        tracker.load_state_dict(old)
    assert "\n" not in str(info.value)


def run_trainer(out: Path, steps: int):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_loop import ROWS, seven_reward  # noqa: E402

    from rlsignals.signals import PromptTemplate
    from rlsignals.trainer.loop import RLConfig, RLTrainer

    torch.manual_seed(0)
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    tracker = Rank1Tracker(model, every=2, base_file=out / "tracker_base.safetensors")
    template = PromptTemplate(tokenizer)
    config = RLConfig(steps=steps, prompts_per_step=4, generations=4, max_new_tokens=6, lr=1e-2, save_every=2)
    trainer = RLTrainer(model, tokenizer, ROWS, lambda row: template.token_ids(row["prompt"]), seven_reward,
                        config, out, hooks=[tracker])
    history = trainer.train(progress=False)
    return tracker, history


@pytest.mark.slow
def test_a_resumed_run_tracks_exactly_as_an_uninterrupted_one(tmp_path):
    full, history = run_trainer(tmp_path / "full", 4)
    run_trainer(tmp_path / "part", 2)
    resumed, _ = run_trainer(tmp_path / "part", 4)
    assert full.steps == resumed.steps == [2, 4]
    a, b = full.trajectory, Trajectory.open(tmp_path / "part" / "rank1_trajectory")
    assert a.steps == b.steps and a.accuracy == b.accuracy
    for n in a.modules:
        for x, y in zip(a.triplets(n), b.triplets(n)):
            assert torch.equal(x, y), n
        assert torch.equal(a.scalar("iters", n), b.scalar("iters", n))
    assert all(isinstance(h.get("rank1_certified", 0), int) for h in history)
    assert history[1]["rank1_sigma_mean"] == pytest.approx(float(sum(a.scalar("sigma", n)[0] for n in a.modules))
                                                           / len(a.modules))
    # the checkpoints' JSON holds the tracker's few numbers, never vectors
    state = json.loads((tmp_path / "part" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["hooks"] == [{"format": 2, "tracked": 2, "rewards": [], "jumps": []}]


SHARDED_WORKER = r"""
import sys
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path[:0] = [sys.argv[2], sys.argv[3]]
from test_tracker import planted_model, planted_updates
from rlsignals.trainer.tracker import Rank1Tracker

out = sys.argv[1]
dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
model = planted_model()
for layer in model:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
rank = dist.get_rank()
tracker = Rank1Tracker(model, every=1, base_file=out + "/base.safetensors", store=out + "/sharded",
                       include=r"weight$", exclude=None)
planted_updates(tracker, lambda name, rows: rows[slice(*tracker.rows[name])])
tracker.jump(target_accuracy=0.8, update="replace")
save_file({n: p.to_local().detach().contiguous() for n, p in tracker.params.items()}, f"{out}/rank{rank}.safetensors")
dist.destroy_process_group()
"""


def planted_model() -> torch.nn.Module:
    """Weights [33, 48] and [40, 33]: 33 rows shard unevenly (17 + 16) over 2 ranks, 40 evenly;
    n > 4 columns (the block), so delta_svd iterates (its block does not span the whole row space)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(48, 33, bias=False), torch.nn.Linear(33, 40, bias=False))


def planted_updates(tracker, rows_of):
    """Three tracked steps of W_0 + 0.01 t a b^T + noise, each rank writing ``rows_of(name, full)``."""
    gen = torch.Generator().manual_seed(1)
    directions = {n: (torch.randn(p.shape[0], generator=gen), torch.randn(p.shape[1], generator=gen))
                  for n, p in tracker.params.items()}
    with torch.no_grad():
        for step in (1, 2, 3):
            for n, p in tracker.params.items():
                a, b = directions[n]
                delta = 0.01 * step * torch.outer(a, b) + 1e-3 * torch.randn(p.shape, generator=gen)
                local = p.to_local() if hasattr(p, "to_local") else p
                local.copy_(tracker.base[n] + rows_of(n, delta))
            tracker.track(step, accuracy=0.2 * step)


@pytest.mark.slow
def test_sharded_tracker_equals_the_unsharded_one(tmp_path):
    """FSDP2 (fully_shard, gloo, 2 CPU ranks; each holds row slabs of 17/16 and 20/20 rows)
    against one process: the same sigma_1, u_1, v_1 (to fp32 reduction order), and the
    jump moves each rank's slab to the unsharded jump's rows."""
    from safetensors.torch import load_file

    script, here = tmp_path / "worker.py", Path(__file__).resolve().parent
    script.write_text(SHARDED_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path), str(here), str(here.parent)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    tracker = Rank1Tracker(planted_model(), every=1, base_file=tmp_path / "single_base.safetensors",
                           store=tmp_path / "single", include=r"weight$", exclude=None)
    planted_updates(tracker, lambda name, rows: rows)
    tracker.jump(target_accuracy=0.8, update="replace")
    one, two = Trajectory.open(tmp_path / "single"), Trajectory.open(tmp_path / "sharded")
    assert one.modules == two.modules and one.steps == two.steps == [1, 2, 3]
    for n in one.modules:
        assert torch.allclose(one.scalar("sigma", n), two.scalar("sigma", n), rtol=1e-5, atol=0)
        for x, y in zip(one.vectors(n), two.vectors(n)):
            assert torch.allclose(x, y, atol=1e-5, rtol=0)
    slabs = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    for n, p in tracker.params.items():
        assert torch.allclose(torch.cat([s[n] for s in slabs]), p.detach(), atol=1e-5, rtol=0)


def test_trl_callback_tracks_a_real_grpo_run(tmp_path):
    pytest.importorskip("trl")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integrations"))
    from test_trl import make_trainer  # noqa: E402

    from rlsignals.integrations.trl import Rank1TrackerCallback

    seen: list = []
    trainer = make_trainer(tmp_path, seen, max_steps=4, save_steps=2)  # with the GAIN-RL sampler: both callbacks
    tracker = Rank1Tracker(trainer.model, every=2, base_file=tmp_path / "base.safetensors")
    trainer.add_callback(Rank1TrackerCallback(tracker))
    trainer.train()
    assert tracker.steps == [2, 4]
    traj = tracker.trajectory
    for n, p in tracker.params.items():  # the last record is the update of the model as trained
        dense = torch.linalg.svdvals((p.detach() - tracker.base[n]).double())[0]
        assert float(traj.scalar("sigma", n)[-1]) == pytest.approx(float(dense), rel=1e-3, abs=1e-7)
    states = [(tmp_path / f"checkpoint-{s}" / Rank1TrackerCallback.STATE).read_text() for s in (2, 4)]
    assert len(states[0]) == len(states[1])  # one tracked step more, not one more vector


def test_trainer_callback_resumes_from_the_checkpoint_train_was_given(tmp_path):
    """A real transformers Trainer (accelerate) resumed from an older checkpoint restores the
    tracker's state of that checkpoint, not the newest one's: the store keeps the records up
    to it and the later steps are tracked again from there."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from rlsignals.integrations.trl_tracker import Rank1TrackerCallback

    tokenizer = make_tokenizer("word", CHATML)
    ids = tokenizer("what is two plus three the answer is eight")["input_ids"]
    data = Dataset.from_dict({"input_ids": [ids] * 8, "labels": [ids] * 8})

    def run(resume):
        model = make_model("llama", len(tokenizer)).train()
        tracker = Rank1Tracker(model, every=1, base_file=tmp_path / "base.safetensors", include=r"mlp\..*weight$")
        args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=4, save_steps=1, learning_rate=1e-2,
                                 per_device_train_batch_size=2, report_to=[], use_cpu=True, logging_steps=1,
                                 disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[Rank1TrackerCallback(tracker)])
        trainer.train(resume_from_checkpoint=resume)
        return tracker

    first = run(None)
    assert first.steps == [1, 2, 3, 4]
    sigma_first = {n: first.trajectory.scalar("sigma", n).clone() for n in first.params}
    resumed = run(str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.steps == [1, 2, 3, 4]
    for n in resumed.params:  # records 1-2 kept from the first run, 3-4 tracked again on the same path
        sigma = resumed.trajectory.scalar("sigma", n)
        assert torch.equal(sigma[:2], sigma_first[n][:2])
        assert torch.allclose(sigma[2:], sigma_first[n][2:], rtol=1e-3, atol=1e-7)
