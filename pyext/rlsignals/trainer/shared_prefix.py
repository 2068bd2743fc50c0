"""Exact forward (and backward, and generation) of many sequences that share
one prefix, running the prefix once.

Prompts with a shared few-shot prefix (the demo's: about 95 of ~110 tokens),
or the G samples of one prompt, can be run as: the prefix alone (batch 1, with
its key/value cache), the cache repeated B times, then the B suffixes on top
of it. Causal attention makes this the same computation as running the B full
sequences: logits agree to fp32 rounding, and gradients flow into the
parameters through the prefix's keys and values as well.

For the forward pass suffixes are right-padded (a real token never attends to
a pad; logits at pad positions must be masked out of any loss). For
generation the layout is [prefix | left pads | suffix_i]: generate derives
position ids from the attention mask, so each row sees the positions of its
unpadded prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, S], mask [B, S]) with each sequence left-aligned and padded with pad_id."""
    if not seqs:
        raise ValueError("seqs must hold at least one sequence")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def shared_prefix_logits(model: nn.Module, prefix_ids: Sequence[int] | torch.Tensor,
                         suffix_ids: torch.Tensor, suffix_mask: torch.Tensor) -> torch.Tensor:
    """Logits [B, S, V] of ``suffix_ids`` [B, S] run after the shared ``prefix_ids`` [P].

    ``logits[b, t]`` is the next-token distribution after prefix + suffix[b, :t+1],
    as in ``model(prefix + suffix[b]).logits[P + t]``. Differentiable.
    """
    from transformers import DynamicCache

    if suffix_ids.dim() != 2 or suffix_mask.shape != suffix_ids.shape:
        raise ValueError(f"suffix_ids and suffix_mask must both be [B, S]; got {tuple(suffix_ids.shape)} "
                         f"and {tuple(suffix_mask.shape)}")
    device = suffix_ids.device
    prefix = torch.as_tensor(prefix_ids, dtype=torch.long, device=device).reshape(1, -1)
    batch, plen = suffix_ids.shape[0], prefix.shape[1]
    if plen == 0:
        return model(input_ids=suffix_ids, attention_mask=suffix_mask).logits
    cache = DynamicCache(config=model.config)
    model.model(input_ids=prefix, past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(batch)
    mask = torch.cat([torch.ones(batch, plen, dtype=suffix_mask.dtype, device=device), suffix_mask], dim=1)
    return model(input_ids=suffix_ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits


def answer_loss(logits: torch.Tensor, suffix_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the suffix tokens where ``loss_mask`` [B, S] is 1.

    Token t of the suffix is predicted by the logits at t-1, so the first suffix
    token is never scored (the demo's answers never start a suffix).
    """
    pred = logits[:, :-1].float()
    target = suffix_ids[:, 1:]
    weight = loss_mask[:, 1:].to(pred.dtype)
    nll = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    return (nll * weight.reshape(-1)).sum() / weight.sum().clamp_min(1.0)


def prefix_cache(model: nn.Module, prefix_ids: Sequence[int] | torch.Tensor, batch: int):
    """A key/value cache of ``prefix_ids`` [P], run once and repeated ``batch`` times."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    model.model(input_ids=torch.as_tensor(prefix_ids, dtype=torch.long, device=device).reshape(1, -1),
                past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(batch)
    return cache


def shared_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Tokens that every row starts with, leaving each row at least its last token
    (whose logits predict what follows the row)."""
    if not rows:
        return 0
    limit = max(min(len(r) for r in rows) - 1, 0)
    first = rows[0]
    for i in range(limit):
        if any(r[i] != first[i] for r in rows):
            return i
    return limit


def prefix_prompt_batch(prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]],
                        pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) [B, P + W] laid out [prefix | left pads | suffix_i] for generate."""
    if not suffixes or any(len(s) == 0 for s in suffixes):
        raise ValueError("suffixes must be a non-empty list of non-empty token id lists")
    prefix = list(prefix_ids)
    width = max(len(s) for s in suffixes)
    ids = torch.tensor([prefix + [pad_id] * (width - len(s)) + list(s) for s in suffixes], dtype=torch.long)
    mask = torch.tensor([[1] * len(prefix) + [0] * (width - len(s)) + [1] * len(s) for s in suffixes],
                        dtype=torch.long)
    return ids, mask


@torch.no_grad()
def generate_after_prefix(model: nn.Module, prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]],
                          pad_id: int, num_return_sequences: int = 1, **generate_kwargs) -> torch.Tensor:
    """HF ``generate`` for prompts ``prefix + suffix_i``, with the prefix run once.

    The prompts are laid out as [prefix | left pads | suffix_i] (the attention
    mask is 0 on the pads, and generate derives position ids from the mask, so
    each row sees the same positions as its unpadded prompt); the prefix's
    cache is computed once and repeated for every row and return sequence.
    Greedy results equal plain left-padded ``generate`` on the full prompts.
    Returns only the new tokens: [len(suffixes) * num_return_sequences, new],
    rows of one prompt adjacent, as ``generate`` orders them; pad_id after eos.
    """
    device = next(model.parameters()).device
    ids, mask = prefix_prompt_batch(prefix_ids, suffixes, pad_id)
    cache = prefix_cache(model, list(prefix_ids), len(suffixes) * num_return_sequences) if len(prefix_ids) else None
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache,
                         pad_token_id=pad_id, num_return_sequences=num_return_sequences, **generate_kwargs)
    return out[:, ids.shape[1]:]
