"""Advantages against hand-computed values; IS weights against the direct formula."""

from __future__ import annotations

import math

import pytest
import torch

from rlsignals.trainer.advantages import group_advantages
from rlsignals.trainer.correction import is_weights

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]])


def test_grpo_by_hand():
    adv = group_advantages(REWARDS, "grpo", eps=0.0 + 1e-12)
    # group 0: mean 0.5, std 0.5 -> +-1; group 1: all equal -> 0; group 2: mean 0.5, std sqrt(0.75)
    s = math.sqrt(0.75)
    expected = torch.tensor([[1, -1, -1, 1], [0, 0, 0, 0], [-0.5 / s, -0.5 / s, -0.5 / s, 1.5 / s]])
    assert torch.allclose(adv, expected, atol=1e-6)


def test_dr_grpo_and_rloo_by_hand():
    assert torch.allclose(group_advantages(REWARDS, "dr_grpo"),
                          torch.tensor([[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [-0.5, -0.5, -0.5, 1.5]]))
    # rloo: r_i - mean of the other three
    expected = torch.tensor([[1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3], [0, 0, 0, 0],
                             [0 - 2 / 3, 0 - 2 / 3, 0 - 2 / 3, 2 - 0]])
    assert torch.allclose(group_advantages(REWARDS, "rloo"), expected, atol=1e-6)


def test_advantage_errors():
    with pytest.raises(ValueError, match="estimator must be one of"):
        group_advantages(REWARDS, "ppo")
    with pytest.raises(ValueError, match=">= 2 generations"):
        group_advantages(REWARDS[:, :1])


def direct(trainer, rollout, mask, mode, level, cap):
    """The formula written out per sequence and token."""
    out = torch.zeros_like(trainer)
    for n in range(trainer.shape[0]):
        seq = math.exp(sum(float(trainer[n, t] - rollout[n, t]) for t in range(trainer.shape[1]) if mask[n, t]))
        for t in range(trainer.shape[1]):
            if not mask[n, t]:
                continue
            w = seq if level == "sequence" else math.exp(float(trainer[n, t] - rollout[n, t]))
            if mode == "truncate":
                w = min(w, cap)
            elif mode == "mask":
                w = w if w <= cap else 0.0
            elif mode == "two_sided":
                w = w if 1 / cap <= w <= cap else 0.0
            else:
                w = 1.0
            out[n, t] = w
    return out


@pytest.mark.parametrize("mode", ["none", "truncate", "mask", "two_sided"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_is_weights_match_the_formula(mode, level):
    gen = torch.Generator().manual_seed(0)
    trainer = -torch.rand(5, 7, generator=gen) * 3
    rollout = trainer + torch.randn(5, 7, generator=gen) * 0.8
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    got = is_weights(trainer, rollout, mask, mode=mode, level=level, cap=1.5)
    assert torch.allclose(got, direct(trainer, rollout, mask, mode, level, 1.5), atol=1e-5)
    if mode == "mask" or (mode == "two_sided" and level == "token"):
        assert (got == 0).any() and (got[mask] > 0).any()
    if mode == "two_sided" and level == "token":  # both tails dropped: a low ratio too
        kept_by_mask = direct(trainer, rollout, mask, "mask", level, 1.5)
        assert bool(((kept_by_mask > 0) & (kept_by_mask < 1 / 1.5) & (got == 0)).any())


def test_is_weights_carry_no_gradient():
    trainer = torch.zeros(2, 3, requires_grad=True)
    assert not is_weights(trainer, torch.zeros(2, 3), torch.ones(2, 3)).requires_grad


def test_shared_prefix_logprobs_equal_the_full_forward():
    from helpers.tiny_models import make_model

    from rlsignals.lm.generate import left_pad
    from rlsignals.trainer.logprobs import completion_logprobs

    torch.manual_seed(0)
    model = make_model("llama", 40)
    prefix = torch.randint(3, 40, (20,)).tolist()
    prompts = [prefix + torch.randint(3, 40, (n,)).tolist() for n in (1, 4, 7)]
    prompt_ids, prompt_mask = left_pad(prompts, 0)
    completions = torch.randint(3, 40, (3, 5))
    comp_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    grads = []
    outs = []
    for min_shared in (16, 10_000):  # shared-prefix path, then the plain forward
        model.zero_grad()
        logp = completion_logprobs(model, prompt_ids, prompt_mask, completions, comp_mask, temperature=0.7,
                                   min_shared=min_shared)
        (logp * torch.arange(1, 6)).sum().backward()
        outs.append(logp.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)
