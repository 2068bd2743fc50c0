"""Rollouts with HF ``generate``: G sampled completions per prompt and the
sampling policy's per-token log-probs (the rollout engine's view, for the IS
correction).

The prompts go through ``rlsignals.lm.generate`` (their shared prefix, e.g. the G
copies of a prompt, runs once); a completion ends at (and includes) its first EOS,
tokens after it are padding (mask 0). Log-probs are those of the distribution actually
sampled from, log_softmax(logits / temperature), taken for each token as it is drawn.

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

from rlsignals.lm.generate import Generation, generate


@dataclasses.dataclass
class Rollouts(Generation):
    """N = prompts x generations samples, grouped by prompt (sample i is prompt i // G): the
    generation (``lm.generate.Generation``), each sampled token's log-prob and the texts."""

    rollout_logp: torch.Tensor     # [N, T] log-prob of each sampled token under the rollout policy (0 at padding)
    texts: list[str]

    @classmethod
    def concat(cls, parts: Sequence[Rollouts], pad_id: int) -> Rollouts:
        """The samples of ``parts`` in order: prompts left-padded (mask 0) and completions
        right-padded (mask 0, log-prob 0) to the widest part."""
        width = max(p.prompt_ids.shape[1] for p in parts)
        length = max(p.completion_ids.shape[1] for p in parts)

        def pad(t: torch.Tensor, value: float, left: int = 0, right: int = 0) -> torch.Tensor:
            return torch.nn.functional.pad(t, (left, right), value=value)

        return cls(torch.cat([pad(p.prompt_ids, pad_id, width - p.prompt_ids.shape[1]) for p in parts]),
                   torch.cat([pad(p.prompt_mask, 0, width - p.prompt_mask.shape[1]) for p in parts]),
                   torch.cat([pad(p.completion_ids, pad_id, 0, length - p.completion_ids.shape[1]) for p in parts]),
                   torch.cat([pad(p.completion_mask, 0, 0, length - p.completion_mask.shape[1]) for p in parts]),
                   torch.cat([pad(p.rollout_logp, 0.0, 0, length - p.rollout_logp.shape[1]) for p in parts]),
                   [text for p in parts for text in p.texts])


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts (the same on every machine and rank)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


class GumbelSampler(LogitsProcessor):
    """Greedy decoding over log_softmax(logits / T) + Gumbel noise = sampling from
    softmax(logits / T); row n's noise comes from its own generator (seed ``seeds[n]``).
    ``logp`` collects, per step, the log-probability [N] of the token each row draws."""

    def __init__(self, seeds: Sequence[int], temperature: float):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.seeds, self.temperature = list(seeds), temperature
        self.generators: list[torch.Generator] = []
        self.logp: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.generators:  # on the logits' device: the draws are the same for a device type
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        logp = torch.log_softmax(scores.float() / self.temperature, -1)
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, dtype=torch.float64, device=scores.device)
                               for g in self.generators]).clamp_min(1e-300)
        perturbed = logp + (-torch.log(-torch.log(uniform))).to(logp)
        self.logp.append(logp.gather(1, perturbed.argmax(1, keepdim=True))[:, 0].cpu())
        return perturbed


@torch.no_grad()
def hf_rollouts(model, tokenizer, prompts: Sequence[Sequence[int]], generations: int, *, max_new_tokens: int,
                temperature: float = 1.0, keys: Sequence[int] | None = None) -> Rollouts:
    """Sample ``generations`` completions of every prompt; ``keys`` (one int per prompt)
    fix the draws (see the module docstring); without them keys come from torch's global RNG.
    The rollout log-probabilities are taken per token as it is drawn (no [N, T, V] logits kept)."""
    if keys is None:
        keys = torch.randint(0, 2**62, (len(prompts),)).tolist()
    if len(keys) != len(prompts):
        raise ValueError(f"keys must hold one key per prompt ({len(prompts)}), got {len(keys)}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampler = GumbelSampler([mix_seed(key, g) for key in keys for g in range(generations)], temperature)
    out = generate(model, [list(p) for p in prompts for _ in range(generations)], pad_id=pad_id,
                   eos_id=tokenizer.eos_token_id, max_new_tokens=max_new_tokens,
                   logits_processor=LogitsProcessorList([sampler]))
    logp = torch.stack(sampler.logp, 1)[:, :out.completion_ids.shape[1]] if sampler.logp \
        else torch.zeros(out.completion_ids.shape)
    mask = out.completion_mask
    texts = tokenizer.batch_decode([ids[m.bool()] for ids, m in zip(out.completion_ids, mask)],
                                   skip_special_tokens=True)
    return Rollouts(out.prompt_ids, out.prompt_mask, out.completion_ids, mask, logp * mask, texts)
