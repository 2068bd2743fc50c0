"""Group advantages for G completions of each prompt, from rewards r [P, G]:

    grpo     (r_i - mean(r)) / (std(r) + eps)       std over the group, unbiased=False
    dr_grpo  r_i - mean(r)                           (Dr. GRPO: no std, no length bias)
    rloo     r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean(r))   (leave-one-out, no std)

A group whose rewards are all equal gets advantage 0 under every estimator.
"""

from __future__ import annotations

import torch

from rlsignals.trainer.config import ESTIMATORS


def group_advantages(rewards: torch.Tensor, estimator: str = "grpo", eps: float = 1e-4) -> torch.Tensor:
    """rewards [P, G] (float) -> advantages [P, G]."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [prompts, generations] with >= 2 generations, got {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(1, keepdim=True)
    if estimator == "grpo":
        return centred / (rewards.std(1, unbiased=False, keepdim=True) + eps)
    if estimator == "dr_grpo":
        return centred
    g = rewards.shape[1]
    return centred * g / (g - 1)
