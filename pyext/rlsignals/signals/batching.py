"""Prompt encoding and batch planning for scoring: each prompt's token ids with its
prefix / question / suffix split (truncated to the context when asked), prompts grouped
by their shared prefix, and batches of similar length under a token budget.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rlsignals.lm.prefix import SharedPrefix
from rlsignals.signals.config import ScoreConfig
from rlsignals.signals.prompts import PromptTemplate, TemplateBounds, fit_context

# Default tokens per forward pass, chosen by bench/score_dataset.py --sweep batch_tokens (the figures
# are in bench/results/score_dataset_sweep-*.json). On the CPU a batch is kept to about 2^21
# activation elements (tokens x d), within [1024, 16384] tokens: larger batches lose to cache misses
# in the MLP's element-wise ops. On CUDA, large batches fill the device.
CPU_BATCH_ELEMENTS = 1 << 21
CPU_BATCH_TOKENS_RANGE = (1024, 16384)
CUDA_BATCH_TOKENS = 16384
# Fixed cost of one forward pass in tokens, for plan_batches' trade-off between padding and
# more, smaller batches (on the CPU a pass of a few hundred tokens runs at nearly full speed).
BATCH_COST_TOKENS = 64


@dataclasses.dataclass
class EncodedPrompt:
    """A prompt's token ids: prefix ids[:prefix_len], question ids[prefix_len:question_end],
    the trailing template after it; ``truncated`` when its question was cut to the context."""

    index: int
    ids: list[int]
    prefix_len: int
    question_end: int
    truncated: bool


def encode_prompts(template: PromptTemplate, prompts: Sequence[str], indices: Sequence[int],
                   config: ScoreConfig, max_length: int | None) -> list[EncodedPrompt]:
    """Every prompt rendered and split (``TemplateBounds``, or config's explicit prefix /
    suffix lengths), fitted to ``max_length`` (``prompts.fit_context``); ValueError naming
    the prompt when a split does not fit or a prompt is too long with on_long="error"."""
    bounds = None if config.prefix_tokens is not None and config.suffix_tokens is not None \
        else TemplateBounds.detect(template)
    encoded, truncated = [], 0
    for index, prompt in zip(indices, prompts):
        ids = template.token_ids(prompt)
        prefix_len, question_end = bounds.split(ids) if bounds else (0, len(ids))
        if config.prefix_tokens is not None:
            prefix_len = config.prefix_tokens
        if config.suffix_tokens is not None:
            question_end = len(ids) - config.suffix_tokens
        if not 0 <= prefix_len <= question_end <= len(ids):
            raise ValueError(f"prompt {index}: prefix ({prefix_len} tokens) and suffix "
                             f"({len(ids) - question_end} tokens) do not fit its {len(ids)} tokens")
        ids, question_end, cut = fit_context(ids, prefix_len, question_end, max_length, config.on_long, index)
        truncated += cut
        encoded.append(EncodedPrompt(index, ids, prefix_len, question_end, cut))
    if truncated:
        warnings.warn(f"{truncated} prompt(s) longer than the model's context ({max_length} tokens) had their "
                      "question truncated", RuntimeWarning, stacklevel=2)
    return encoded


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int,
                 batch_cost_tokens: int = BATCH_COST_TOKENS) -> list[list[int]]:
    """Positions grouped into batches of similar length, padding and batch count traded off.

    Sorted by length, the positions are cut into contiguous batches that minimise
    sum over batches of (size x longest length + batch_cost_tokens): the padded
    tokens computed plus a fixed cost per forward pass, in tokens. A batch holds at
    most max_batch_size prompts and size x longest <= batch_tokens (a prompt longer
    than that runs alone). Exact, by dynamic programming: O(n x max_batch_size).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    best = [0.0] + [math.inf] * len(order)  # best[j]: cost of batching the first j
    cut = [0] * (len(order) + 1)            # cut[j]: where the last batch of that best plan starts
    for j in range(1, len(order) + 1):
        longest = sorted_lengths[j - 1]
        for i in range(j - 1, max(j - max_batch_size, 0) - 1, -1):
            size = j - i
            if size > 1 and size * longest > batch_tokens:
                break
            cost = best[i] + size * longest + batch_cost_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], len(order)
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def default_batch_tokens(device: torch.device, hidden_size: int) -> int:
    """Tokens per forward pass when ScoreConfig.batch_tokens is None: CUDA_BATCH_TOKENS on
    CUDA; on the CPU CPU_BATCH_ELEMENTS / hidden_size, a power of two inside
    CPU_BATCH_TOKENS_RANGE (d = 256: 8192, 1024: 2048, 4096: 1024)."""
    if device.type == "cuda":
        return CUDA_BATCH_TOKENS
    low, high = CPU_BATCH_TOKENS_RANGE
    tokens = 1 << max(CPU_BATCH_ELEMENTS // max(hidden_size, 1), 1).bit_length() - 1
    return min(max(tokens, low), high)


def batch_inputs(model: nn.Module, batch: Sequence[EncodedPrompt], prefix: SharedPrefix | None, padding_side: str,
                 pad_id: int) -> tuple[dict[str, Any], list[int], int]:
    """The model's keyword arguments for one forward of ``batch`` (on the model's device),
    each row's padding in front of its tokens, and the row width.

    Without ``prefix`` the whole prompts run; with it only the tokens after the prefix,
    at positions |P|, |P|+1, ..., on its cache (whose columns the attention mask keeps).
    Layout per row: [pads | tokens] (left) or [tokens | pads] (right).
    """
    device = next(model.parameters()).device
    offset = prefix.length if prefix is not None else 0
    width = max(len(p.ids) - offset for p in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    pads = [width - len(p.ids) + offset if padding_side == "left" else 0 for p in batch]
    for row, (p, pad) in enumerate(zip(batch, pads)):
        input_ids[row, pad:pad + len(p.ids) - offset] = torch.tensor(p.ids[offset:])
        mask[row, pad:pad + len(p.ids) - offset] = 1
    position_ids = offset + (mask.cumsum(1) - 1).clamp_min(0)
    cache = prefix.cache(model, len(batch)) if prefix is not None else None
    attention_mask = torch.cat([torch.ones(len(batch), offset, dtype=torch.long), mask], 1) if cache is not None \
        else mask
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
              "position_ids": position_ids.to(device), "past_key_values": cache, "use_cache": cache is not None}
    return inputs, pads, width


def group_by_prefix(encoded: Sequence[EncodedPrompt]) -> dict[tuple[int, ...], list[int]]:
    """Positions of the prompts grouped by their prefix tokens (usually one group;
    a tokenizer that merges a template token with a question's first characters
    gives that prompt a shorter prefix), largest group first."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for position, p in enumerate(encoded):
        groups.setdefault(tuple(p.ids[:p.prefix_len]), []).append(position)
    return dict(sorted(groups.items(), key=lambda item: -len(item[1])))
