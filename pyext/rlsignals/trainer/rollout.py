"""Rollouts with HF ``generate``: G sampled completions per prompt and the
sampling policy's per-token log-probs (the rollout engine's view, for the IS
correction).

Prompts are left-padded (when they share a prefix, laid out [prefix | pads |
rest] with the prefix run once: see shared_prefix.py); a completion ends at (and includes) its first EOS;
tokens after it are padding (mask 0). Log-probs are those of the distribution
actually sampled from: log_softmax(logits / temperature).

Sampling is keyed: sample g of a prompt with key k draws its tokens by
Gumbel-max, argmax_v (log_softmax(logits / T)_v + G_v) with G_v = -log(-log U_v)
and U from a generator seeded with (k, g). That is an exact draw from
softmax(logits / T), and it depends only on (k, g) and the model: not on the
other prompts of the batch, on the rank that generates it, or on torch's global
RNG. So a run split over ranks draws the same completions as one process, and
a resumed run the same as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

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


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts (the same on every machine and rank)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


class GumbelSampler(LogitsProcessor):
    """Greedy decoding over log_softmax(logits / T) + Gumbel noise = sampling from
    softmax(logits / T); row n's noise comes from its own generator (seed ``seeds[n]``)."""

    def __init__(self, seeds: Sequence[int], temperature: float):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.seeds, self.temperature = list(seeds), temperature
        self.generators: list[torch.Generator] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.generators:  # on the logits' device: the draws are the same for a device type
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        logp = torch.log_softmax(scores.float() / self.temperature, -1)
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, dtype=torch.float64, device=scores.device)
                               for g in self.generators]).clamp_min(1e-300)
        return logp + (-torch.log(-torch.log(uniform))).to(logp)


@torch.no_grad()
def hf_rollouts(model, tokenizer, prompts: Sequence[Sequence[int]], generations: int, *, max_new_tokens: int,
                temperature: float = 1.0, keys: Sequence[int] | None = None) -> Rollouts:
    """Sample ``generations`` completions of every prompt; ``keys`` (one int per prompt)
    fix the draws (see the module docstring); without them keys come from torch's global RNG."""
    if keys is None:
        keys = torch.randint(0, 2**62, (len(prompts),)).tolist()
    if len(keys) != len(prompts):
        raise ValueError(f"keys must hold one key per prompt ({len(prompts)}), got {len(keys)}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    repeated = [list(p) for p in prompts for _ in range(generations)]
    prompt_ids, prompt_mask, prefix = prompt_batch(repeated, pad_id)
    device = next(model.parameters()).device
    cache = prefix_cache(model, prefix, len(repeated)) if prefix else None
    sampler = GumbelSampler([mix_seed(key, g) for key in keys for g in range(generations)], temperature)
    out = model.generate(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device), do_sample=False,
                         max_new_tokens=max_new_tokens, logits_processor=LogitsProcessorList([sampler]),
                         pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id, output_logits=True,
                         return_dict_in_generate=True, past_key_values=cache)
    completion_ids = out.sequences[:, prompt_ids.shape[1]:].cpu()
    logits = torch.stack(out.logits, 1).float().cpu() / temperature  # [N, T, V], raw logits / T
    logp = torch.log_softmax(logits, -1).gather(2, completion_ids[..., None])[..., 0]
    mask = completion_mask(completion_ids, tokenizer.eos_token_id)
    texts = tokenizer.batch_decode([ids[m.bool()] for ids, m in zip(completion_ids, mask)], skip_special_tokens=True)
    return Rollouts(prompt_ids, prompt_mask, completion_ids, mask, logp * mask, texts)
