"""The RL loop on a tiny model: it learns a trivial reward, resumes exactly,
survives a raising reward function and stops cleanly on a NaN loss."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny_models import CHATML, make_model, make_tokenizer  # noqa: E402

from rlsignals.signals import PromptTemplate  # noqa: E402
from rlsignals.trainer.loop import NonFiniteLossError, RLConfig, RLTrainer  # noqa: E402

ROWS = [{"prompt": p} for p in ["what is two plus three", "multiply six by three", "the answer is eight",
                                "compute the sum of seven and five", "twelve minus five equals seven",
                                "how many apples are left", "answer with a number", "solve the following problem"]]


def setup(tmp_path, reward_fn, scores=None, **overrides):
    torch.manual_seed(0)
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    template = PromptTemplate(tokenizer)
    config = RLConfig(**{"steps": 4, "prompts_per_step": 4, "generations": 4, "max_new_tokens": 6,
                         "lr": 1e-2, "save_every": 2, **overrides})
    return RLTrainer(model, tokenizer, ROWS, lambda row: template.token_ids(row["prompt"]), reward_fn, config,
                     tmp_path, scores=scores)


def seven_reward(text: str, row: dict) -> float:
    """Dense toy reward: the fraction of completion words that are 'seven'."""
    words = text.split()
    return sum(w == "seven" for w in words) / max(1, len(words))


def test_learns_a_trivial_reward(tmp_path):
    trainer = setup(tmp_path, seven_reward, steps=25, save_every=0, prompts_per_step=8, generations=8)
    history = trainer.train(progress=False)
    first = sum(h["reward"] for h in history[:5]) / 5
    last = sum(h["reward"] for h in history[-5:]) / 5
    assert last > first + 0.2, (first, last)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logged] == list(range(1, 26))
    assert (tmp_path / "checkpoint-25" / "trainer_state.json").exists()


def test_resume_matches_an_uninterrupted_run_step_by_step(tmp_path):
    full = setup(tmp_path / "full", seven_reward).train(progress=False)
    interrupted = setup(tmp_path / "part", seven_reward, steps=2)
    interrupted.train(progress=False)
    resumed = setup(tmp_path / "part", seven_reward)  # a fresh process would build the trainer anew
    history = resumed.train(progress=False)
    assert len(history) == 4
    for a, b in zip(full, history):
        assert a["prompts"] == b["prompts"] and a["reward"] == b["reward"] and a["loss"] == pytest.approx(b["loss"])
    final_a = torch.load(tmp_path / "full" / "checkpoint-4" / "optimizer.pt", weights_only=True)
    final_b = torch.load(tmp_path / "part" / "checkpoint-4" / "optimizer.pt", weights_only=True)
    for sa, sb in zip(final_a["state"].values(), final_b["state"].values()):
        assert torch.allclose(sa["exp_avg"], sb["exp_avg"])


def test_a_raising_reward_costs_one_sample(tmp_path):
    def flaky(text, row):
        if row["prompt"].startswith("multiply"):
            raise ZeroDivisionError("broken verifier")
        return seven_reward(text, row)

    trainer = setup(tmp_path, flaky, steps=3, save_every=0, prompts_per_step=8)
    with pytest.warns(RuntimeWarning, match="raised ZeroDivisionError: broken verifier"):
        history = trainer.train(progress=False)
    assert len(history) == 3 and all(h["reward_failures"] == 4 for h in history)  # 4 generations of that row


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def turns_nan(text, row):
        calls["n"] += 1
        return float("nan") if calls["n"] > 2 * 16 else seven_reward(text, row)  # steps 1-2 fine, then NaN

    trainer = setup(tmp_path, turns_nan, steps=4, save_every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 3: the loss is nan.*checkpoint-2"):
        trainer.train(progress=False)
    assert trainer.latest_checkpoint().name == "checkpoint-2" and trainer.step == 2
    saved = setup(tmp_path / "x", seven_reward)
    saved.load_checkpoint(tmp_path / "checkpoint-2")
    for (name, a), b in zip(trainer.model.state_dict().items(), saved.model.state_dict().values()):
        assert torch.equal(a, b), name  # the failed step changed nothing


def test_gain_rl_sampler_in_the_loop(tmp_path):
    scores = torch.linspace(1, 0, len(ROWS))  # row 0 scores highest
    trainer = setup(tmp_path, seven_reward, scores=scores, sampler="gain_rl", steps=3, save_every=0,
                    sampler_options={"sigma": 1.0, "acc_scale": 1.0})
    history = trainer.train(progress=False)
    assert all(h["angle_score"] == pytest.approx(float(scores[h["prompts"]].mean())) for h in history)
    assert history[0]["mu"] == trainer.sampler.history[0]["mu"] and len(trainer.sampler.history) == 3
    with pytest.raises(ValueError, match="needs one angle score per row"):
        setup(tmp_path / "y", seven_reward, sampler="gain_rl")
