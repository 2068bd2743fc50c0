"""Rollouts with HF ``generate``: G sampled completions per prompt and the
sampling policy's per-token log-probs (the rollout engine's view, for the IS
correction).

Prompts are left-padded (when they share a prefix, laid out [prefix | pads |
rest] with the prefix run once: see shared_prefix.py); a completion ends at (and includes) its first EOS;
tokens after it are padding (mask 0). Log-probs are those of the distribution
actually sampled from: log_softmax(logits / temperature).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from rlsignals.trainer.shared_prefix import prefix_cache, prefix_prompt_batch, shared_prefix_len


@dataclasses.dataclass
class Rollouts:
    """N = prompts x generations samples, grouped by prompt (sample i is prompt i // G)."""

    prompt_ids: torch.Tensor       # [N, P] left-padded, or [shared prefix | pads | rest of the prompt]
    prompt_mask: torch.Tensor      # [N, P] 1 on prompt tokens
    completion_ids: torch.Tensor   # [N, T]
    completion_mask: torch.Tensor  # [N, T] 1 up to and including the first EOS
    rollout_logp: torch.Tensor     # [N, T] log-prob of each sampled token under the rollout policy
    texts: list[str]


def left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def prompt_batch(prompts: Sequence[Sequence[int]], pad_id: int, min_shared: int = 16):
    """(ids, mask, prefix) for generating after ``prompts``: when they share a prefix of at
    least ``min_shared`` tokens the layout is [prefix | pads | suffix] and ``prefix`` (to run
    once with ``prefix_cache``) is returned; otherwise plain left padding and prefix []."""
    shared = shared_prefix_len(prompts)
    if shared >= min_shared:
        ids, mask = prefix_prompt_batch(prompts[0][:shared], [p[shared:] for p in prompts], pad_id)
        return ids, mask, list(prompts[0][:shared])
    ids, mask = left_pad(prompts, pad_id)
    return ids, mask, []


@torch.no_grad()
def hf_rollouts(model, tokenizer, prompts: Sequence[Sequence[int]], generations: int, *, max_new_tokens: int,
                temperature: float = 1.0) -> Rollouts:
    """Sample ``generations`` completions of every prompt (torch's global RNG)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    repeated = [list(p) for p in prompts for _ in range(generations)]
    prompt_ids, prompt_mask, prefix = prompt_batch(repeated, pad_id)
    device = next(model.parameters()).device
    cache = prefix_cache(model, prefix, len(repeated)) if prefix else None
    out = model.generate(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device), do_sample=True,
                         temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                         pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id, output_scores=True,
                         return_dict_in_generate=True, past_key_values=cache)
    completion_ids = out.sequences[:, prompt_ids.shape[1]:].cpu()
    scores = torch.stack(out.scores, 1).float().cpu()  # [N, T, V], already divided by the temperature
    logp = torch.log_softmax(scores, -1).gather(2, completion_ids[..., None])[..., 0]
    mask = completion_mask(completion_ids, tokenizer.eos_token_id)
    texts = tokenizer.batch_decode([ids[m.bool()] for ids, m in zip(completion_ids, mask)], skip_special_tokens=True)
    return Rollouts(prompt_ids, prompt_mask, completion_ids, mask, logp * mask, texts)
