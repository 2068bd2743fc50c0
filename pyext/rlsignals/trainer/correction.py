"""Importance-sampling correction of the rollout engine's mismatch.

The completions come from a rollout policy mu (vLLM, or HF generate in another
precision) while the loss differentiates the trainer's policy pi. Per token t,
log w_t = log pi_old(y_t) - log mu(y_t) (pi_old: the trainer's log-probs before
the update, detached). The weight multiplies each token's policy-gradient term:

    level="token"     w_t per token
    level="sequence"  w = exp(sum_t log w_t) for every token of the sequence

    mode="truncate"   min(w, cap)                     (truncated IS)
    mode="mask"       w if w <= cap else 0            (masked IS: drop the outliers)
    mode="two_sided"  w if 1/cap <= w <= cap else 0   (drop both tails)
    mode="none"       1

Padding positions (mask 0) get weight 0.
"""

from __future__ import annotations

import torch

from rlsignals.trainer.config import IS_LEVELS, IS_MODES


def is_weights(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, *,
               mode: str = "truncate", level: str = "token", cap: float = 2.0) -> torch.Tensor:
    """trainer_logp, rollout_logp, mask: [N, T] -> weights [N, T] (detached)."""
    if mode not in IS_MODES:
        raise ValueError(f"mode must be one of {IS_MODES}, got {mode!r}")
    if level not in IS_LEVELS:
        raise ValueError(f"level must be one of {IS_LEVELS}, got {level!r}")
    if cap <= 0 or (mode == "two_sided" and cap < 1):
        raise ValueError(f"cap must be > 0 (>= 1 for two_sided: the kept ratios are [1/cap, cap]), got {cap}")
    mask = mask.to(trainer_logp.dtype)
    if mode == "none":
        return mask
    log_w = (trainer_logp.detach() - rollout_logp) * mask
    if level == "sequence":
        log_w = log_w.sum(1, keepdim=True).expand_as(log_w)
    w = log_w.exp()
    if mode == "truncate":
        w = torch.minimum(w, torch.full_like(w, cap))
    else:
        w = torch.where((w <= cap) & ((w >= 1 / cap) if mode == "two_sided" else True), w, 0.0)
    return w * mask
