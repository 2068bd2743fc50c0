"""A step's result does not depend on how it is cut: micro-batches of 1, 2 or all samples
and gradient checkpointing give the weights of the one-forward step (to fp32 reduction
order), which is the plain full-logits policy-gradient step; several PPO epochs and
mini-batches take pi_old once, make the clip act and report it."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import CHATML, make_model, make_tokenizer

from rlsignals.signals import PromptTemplate, TemplateBounds
from rlsignals.trainer.advantages import group_advantages
from rlsignals.trainer.correction import is_weights
from rlsignals.trainer.live_angles import LiveAngles
from rlsignals.trainer.loop import RLConfig, RLTrainer
from rlsignals.trainer.loss import policy_loss
from rlsignals.trainer.rollout import hf_rollouts, mix_seed

ROWS = [{"prompt": p} for p in ["what is two plus three", "multiply six by three", "the answer is eight",
                                "compute the sum of seven and five", "twelve minus five equals seven",
                                "how many apples are left"]]
BASE = dict(steps=1, prompts_per_step=3, generations=4, max_new_tokens=5, lr=0.5, temperature=0.9, seed=3)


def seven_reward(text: str, row: dict) -> float:
    words = text.split()
    return sum(w == "seven" for w in words) / max(1, len(words))


def trainer(tmp_path, **overrides) -> RLTrainer:
    """The trainer with plain SGD, so that its weights show its gradients (Adam's first update,
    about lr x g / |g|, would blow the rounding of near-zero gradients up to lr)."""
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    template = PromptTemplate(tokenizer, system_prompt="you are a careful math tutor")
    live = LiveAngles(model, TemplateBounds.detect(template).split)
    t = RLTrainer(model, tokenizer, ROWS, lambda row: template.token_ids(row["prompt"]), seven_reward,
                  RLConfig(**{**BASE, **overrides}), tmp_path, live_angles=live)
    t.optimizer = torch.optim.SGD(t.train_module.parameters(), lr=t.config.lr)
    return t


def weights(t: RLTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in t.model.named_parameters()}


def one_step(tmp_path, **overrides):
    t = trainer(tmp_path, **overrides)
    torch.manual_seed(0)
    record = t.train_step()
    return t, record, weights(t)


def reference_step(tmp_path) -> dict[str, torch.Tensor]:
    """The step written out plainly: the same keyed rollouts, full [N, L, V] logits, one
    loss over the whole batch, one backward, one (SGD) update."""
    t = trainer(tmp_path)
    cfg = t.config
    indices = t.sampler.draw()
    rollouts = hf_rollouts(t.model, t.tokenizer, [t.render(t.rows[i]) for i in indices], cfg.generations,
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                           keys=[mix_seed(cfg.seed, 1, i) for i in indices])
    rewards = torch.tensor([[seven_reward(rollouts.texts[p * cfg.generations + g], {}) for g in range(cfg.generations)]
                            for p in range(len(indices))])
    advantages = group_advantages(rewards, cfg.advantage).flatten()
    ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], 1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], 1)
    t.model.train()
    logits = t.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0)).logits
    width = rollouts.prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, width - 1:-1].float() / cfg.temperature, -1)
    logp = logp.gather(2, rollouts.completion_ids[..., None])[..., 0] * rollouts.completion_mask
    w = is_weights(logp, rollouts.rollout_logp, rollouts.completion_mask, mode=cfg.is_mode, cap=cfg.is_cap)
    loss, _ = policy_loss(logp, logp.detach(), advantages, w, rollouts.completion_mask, clip_eps=cfg.clip_eps)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg.max_grad_norm)
    t.optimizer.step()
    return weights(t)


def assert_same_weights(a: dict, b: dict, atol: float = 2e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def test_one_epoch_one_mini_batch_is_the_plain_full_batch_step(tmp_path):
    start = weights(trainer(tmp_path / "start"))
    _, record, got = one_step(tmp_path / "t")
    assert record["updates"] == 1 and record["clip_frac"] == 0.0
    assert sum(float((got[n] - start[n]).abs().max() > 1e-3) for n in got) > len(got) / 2  # the step moved them
    assert_same_weights(got, reference_step(tmp_path / "r"))


@pytest.mark.parametrize("micro", [1, 2, 5])
def test_micro_batches_give_the_unbatched_step(tmp_path, micro):
    _, whole, expected = one_step(tmp_path / "whole")
    _, record, got = one_step(tmp_path / "micro", micro_batch_size=micro)
    assert record["reward"] == whole["reward"] and record["prompts"] == whole["prompts"]
    assert record["loss"] == pytest.approx(whole["loss"], abs=1e-6)
    assert len(record["angle_live_score"]) == 3  # every prompt's live signal, whichever micro-batch held it
    assert record["angle_live_score"] == pytest.approx(whole["angle_live_score"], abs=1e-6)
    assert_same_weights(got, expected)


def test_generation_in_small_batches_draws_the_same_samples(tmp_path):
    _, whole, expected = one_step(tmp_path / "whole")
    _, record, got = one_step(tmp_path / "split", generation_batch_size=4)  # one prompt's samples per call
    assert record["prompt_rewards"] == whole["prompt_rewards"] and record["completion_tokens"] == \
        whole["completion_tokens"]
    assert_same_weights(got, expected)


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    _, _, expected = one_step(tmp_path / "plain")
    _, _, got = one_step(tmp_path / "checkpointed", gradient_checkpointing=True)
    assert_same_weights(got, expected)


def test_ppo_epochs_and_mini_batches_take_pi_old_once_and_clip(tmp_path, monkeypatch):
    t = trainer(tmp_path, ppo_epochs=3, mini_batch_size=6, micro_batch_size=4, lr=5.0, clip_eps=0.05)
    calls = []
    real = t._logprobs
    monkeypatch.setattr(t, "_logprobs", lambda model, rollouts, rows: calls.append(torch.is_grad_enabled())
                        or real(model, rollouts, rows))
    record = t.train_step()
    assert record["updates"] == 3 * 2  # 12 samples in mini-batches of 6, three epochs
    # pi_old: one pass without gradient (micro-batches of 4, 4, 4), then 3 epochs x 2 mini-batches x (4 + 2)
    assert calls[:3] == [False] * 3 and calls[3:] == [True] * 12
    assert record["clip_frac"] > 0  # from the second update on the ratio moves and the clip acts


def test_mini_batches_must_split_the_batch(tmp_path):
    with pytest.raises(ValueError, match=r"mini_batch_size \(5\) must divide the step's 12 samples"):
        trainer(tmp_path, mini_batch_size=5)
