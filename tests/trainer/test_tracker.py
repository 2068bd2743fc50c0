"""The in-loop AlphaRL tracker: exact rank-1 records, the jump rule, resume, TRL callback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import CHATML, make_model, make_tokenizer  # noqa: E402

from rlsignals.io.checkpoints import Checkpoint  # noqa: E402
from rlsignals.trainer.tracker import Rank1Tracker  # noqa: E402


def test_records_equal_a_dense_svd_and_the_jump_follows_the_rule(tmp_path):
    torch.manual_seed(0)
    model = make_model("llama", 40)
    tracker = Rank1Tracker(model, every=1, base_file=tmp_path / "base.safetensors", include=r"q_proj\.weight$")
    w0 = {n: p.detach().clone() for n, p in tracker.params.items()}
    gen = torch.Generator().manual_seed(1)
    directions = {n: (torch.randn(p.shape[0], generator=gen), torch.randn(p.shape[1], generator=gen))
                  for n, p in tracker.params.items()}
    with torch.no_grad():
        for step in (1, 2, 3):
            for n, p in tracker.params.items():
                a, b = directions[n]
                p.copy_(w0[n] + 0.01 * step * torch.outer(a, b) + 1e-6 * torch.randn(p.shape, generator=gen))
            tracker.track(step, accuracy=0.2 * step)
    for n, p in tracker.params.items():
        dense = torch.linalg.svdvals((p.detach() - w0[n]).double())[0]
        assert tracker.sigma[n][-1] == pytest.approx(float(dense), rel=1e-4)
    before = {n: p.detach().clone() for n, p in tracker.params.items()}
    report = tracker.jump(target_accuracy=0.8, update="replace")  # step 4's accuracy on the planted line
    for n, p in tracker.params.items():
        a, b = directions[n]
        planted = w0[n] + 0.04 * torch.outer(a, b)
        assert (p.detach() - planted).norm() / (planted - w0[n]).norm() < 1e-2
        assert report["r2"][n] > 0.999 and not torch.equal(p.detach(), before[n])


def test_tracker_state_survives_a_resume(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_loop import ROWS, seven_reward  # noqa: E402

    from rlsignals.signals import PromptTemplate
    from rlsignals.trainer.loop import RLConfig, RLTrainer

    def run(out, steps):
        torch.manual_seed(0)
        tokenizer = make_tokenizer("word", CHATML)
        model = make_model("llama", len(tokenizer))
        tracker = Rank1Tracker(model, every=2, base_file=out / "tracker_base.safetensors")
        template = PromptTemplate(tokenizer)
        config = RLConfig(steps=steps, prompts_per_step=4, generations=4, max_new_tokens=6, lr=1e-2, save_every=2)
        trainer = RLTrainer(model, tokenizer, ROWS, lambda row: template.token_ids(row["prompt"]), seven_reward,
                            config, out, hooks=[tracker])
        trainer.train(progress=False)
        return tracker

    full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    resumed = run(tmp_path / "part", 4)
    assert full.steps == resumed.steps == [2, 4]
    for n in full.sigma:
        assert full.sigma[n] == pytest.approx(resumed.sigma[n], rel=1e-5)
    # the tracker's W_0 is the starting model, also after the resume
    start = Checkpoint(tmp_path / "part" / "checkpoint-2")
    assert start is not None and (tmp_path / "part" / "tracker_base.safetensors").exists()


def test_trl_callback_tracks_a_real_grpo_run(tmp_path):
    pytest.importorskip("trl")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integrations"))
    from test_trl import SAMPLER_KWARGS, SCORES, make_trainer  # noqa: E402

    from rlsignals.integrations.trl import Rank1TrackerCallback, attach_gain_rl

    seen: list = []
    trainer = make_trainer(tmp_path, seen, max_steps=4, save_steps=2)
    attach_gain_rl(trainer, SCORES, **SAMPLER_KWARGS)  # both rlsignals callbacks in one run
    tracker = Rank1Tracker(trainer.model, every=2, base_file=tmp_path / "base.safetensors")
    trainer.add_callback(Rank1TrackerCallback(tracker))
    trainer.train()
    assert tracker.steps == [2, 4]
    for n, p in tracker.params.items():  # the last record is the update of the model as trained
        dense = torch.linalg.svdvals((p.detach() - tracker.base[n]).double())[0]
        assert len(tracker.sigma[n]) == 2 and tracker.sigma[n][-1] == pytest.approx(float(dense), rel=1e-3, abs=1e-7)
    assert (tmp_path / "checkpoint-4" / Rank1TrackerCallback.STATE).exists()
