"""Prompts -> completions with HF ``generate``, the prompts' shared prefix run once: the
one "prompt batch, prefix, generate" of the package (rollouts, evaluation, the demo).

Prompts that share a prefix of at least ``min_shared`` tokens (a few-shot prefix, or the
G samples of one prompt) are laid out [prefix | left pads | rest] and the prefix runs
once (``SharedPrefix``); otherwise they are left-padded. A completion ends at (and
includes) its first EOS; tokens after it are padding (mask 0). Greedy results equal
plain left-padded ``generate`` on the whole prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from rlsignals.lm.prefix import SharedPrefix, shared_prefix_len

MIN_SHARED = 16  # a shorter common prefix is not worth a separate forward


@dataclasses.dataclass
class Generation:
    """N completions of N prompts, in prompt order."""

    prompt_ids: torch.Tensor       # [N, P] left-padded, or [shared prefix | pads | rest of the prompt]
    prompt_mask: torch.Tensor      # [N, P] 1 on prompt tokens
    completion_ids: torch.Tensor   # [N, T]
    completion_mask: torch.Tensor  # [N, T] 1 up to and including the first EOS


def left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, W], mask [B, W]) with each sequence right-aligned after pad_id."""
    width = max(len(x) for x in ids)
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for row, x in enumerate(ids):
        out[row, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[row, width - len(x):] = 1
    return out, mask


def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row."""
    is_eos = completion_ids == eos_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    return (~after_eos).long()


def prompt_layout(prompts: Sequence[Sequence[int]], pad_id: int,
                  min_shared: int = MIN_SHARED) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(ids, mask, prefix) for generating after ``prompts``: [prefix | left pads | rest] and
    the prefix to run once when they share at least ``min_shared`` tokens; otherwise plain
    left padding and prefix []."""
    shared = shared_prefix_len(prompts)
    if shared < min_shared:
        ids, mask = left_pad(prompts, pad_id)
        return ids, mask, []
    prefix = list(prompts[0][:shared])
    rest, rest_mask = left_pad([p[shared:] for p in prompts], pad_id)
    ones = torch.ones(len(prompts), shared, dtype=torch.long)
    return torch.cat([torch.tensor([prefix]).expand(len(prompts), -1), rest], 1), torch.cat([ones, rest_mask], 1), \
        prefix


@torch.no_grad()
def generate(model: nn.Module, prompts: Sequence[Sequence[int]], *, pad_id: int, eos_id: int | None,
             max_new_tokens: int, min_shared: int = MIN_SHARED, **generate_kwargs) -> Generation:
    """Completions of ``prompts`` (token id lists) by ``model.generate`` (greedy unless
    ``generate_kwargs`` say otherwise, e.g. a ``logits_processor``), the shared prefix run
    once. The model is left in the training mode it had."""
    ids, mask, prefix = prompt_layout([list(p) for p in prompts], pad_id, min_shared)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        cache = SharedPrefix.run(model, prefix).cache(model, len(prompts), grow=True) if prefix else None
        generate_kwargs.setdefault("do_sample", False)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
                             **generate_kwargs)
    finally:
        model.train(was_training)
    completions = out[:, ids.shape[1]:].cpu()
    keep = completion_mask(completions, eos_id) if eos_id is not None else torch.ones_like(completions)
    return Generation(ids, mask, completions, keep)
