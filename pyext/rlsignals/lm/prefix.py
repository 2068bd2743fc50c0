"""A prefix shared by a batch of sequences, run once: ``SharedPrefix``.

In a causal model the prefix's keys and values do not depend on what follows, so B
sequences [prefix P | continuation_b] can run as: the prefix alone (batch 1), then the
B continuations on top of its keys/values. That is the same computation as running the
B whole sequences (results agree to fp32 rounding) for P + sum_b |continuation_b| tokens
instead of B P + sum_b |continuation_b|. Every use in this package goes through it:

    scoring        SharedPrefix.run(model, ids, stop_at=hooked module, on_hidden=...)
                   (the forward stops at the hook: only the layers before it run), then
                   prefix.cache(model, B) under inference mode: read-only
    log-probs      run under autograd, prefix.cache(model, B): gradients reach the
                   parameters through the prefix's keys/values (``prefix_logits``)
    generation     prefix.cache(model, B, grow=True): the cache takes the new tokens

The batch sees the prefix's keys/values as views expanded over the batch (no copy).
A read-only cache (``grow=False``) hands each attention layer [prefix | the batch's own]
and keeps nothing, so each layer's concatenation is freed with that layer; a growing one
keeps it, as generation needs.

Layouts (``lm.generate`` builds them): for one forward, continuations right-padded after
the prefix (positions continue at P; a real token never attends to a pad); for
generation, [prefix | left pads | rest of the prompt] with the attention mask 0 on the
pads, generate deriving each row's positions from the mask.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from rlsignals.lm.capture import StopForward, capture_input


def decoder(model: nn.Module) -> nn.Module:
    """The model without its LM head (``model.base_model``, e.g. LlamaModel), or the model itself."""
    return getattr(model, "base_model", model)


@dataclasses.dataclass
class SharedPrefix:
    """ids: the prefix tokens; key_values: per layer that ran, (keys, values)
    [1, H_kv, P, d_head] (differentiable when run under autograd)."""

    ids: tuple[int, ...]
    key_values: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def length(self) -> int:
        return len(self.ids)

    @classmethod
    def run(cls, model: nn.Module, ids: Sequence[int], *, stop_at: nn.Module | None = None,
            on_hidden: Callable[[torch.Tensor], None] | None = None) -> SharedPrefix:
        """Run ``ids`` (batch 1, positions 0..P-1) under the caller's grad mode. With
        ``stop_at`` the forward stops at that module's input, after calling
        ``on_hidden(input [1, P, d])``: only the layers before it run (and hold keys/values)."""
        from transformers import DynamicCache

        ids = tuple(int(i) for i in ids)
        if not ids:
            raise ValueError("a shared prefix needs at least one token")
        cache = DynamicCache(config=model.config)
        inputs = torch.tensor([ids], device=next(model.parameters()).device)
        if stop_at is None:
            decoder(model)(input_ids=inputs, past_key_values=cache, use_cache=True)
        else:
            reached = []

            def callback(hidden: torch.Tensor) -> None:
                reached.append(True)
                if on_hidden is not None:
                    on_hidden(hidden)

            with capture_input(stop_at, callback):
                try:
                    model(input_ids=inputs, past_key_values=cache, use_cache=True)
                except StopForward:
                    pass
            if not reached:
                raise RuntimeError("the prefix's forward pass never reached the hooked module")
        return cls(ids, [(keys, values) for keys, values, *_ in cache if keys is not None and keys.numel()])

    def cache(self, model: nn.Module, batch: int, *, grow: bool = False):
        """A transformers DynamicCache of the prefix for ``batch`` rows (None when no attention
        layer ran): read-only unless ``grow`` (module docstring)."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if not self.key_values:
            return None
        cache = DynamicCache(ddp_cache_data=self.key_values, config=model.config)
        for index, layer in enumerate(cache.layers[:len(self.key_values)]):
            keys, values = layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1)
            if not grow and type(layer) is DynamicLayer:  # sliding-window layers keep their own update
                layer = cache.layers[index] = _read_only_layer_class()()
                layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        return cache


@functools.cache
def _read_only_layer_class():
    """A DynamicLayer whose update returns [cached | new] keys/values without storing them."""
    from transformers.cache_utils import DynamicLayer

    class _ReadOnlyLayer(DynamicLayer):
        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    return _ReadOnlyLayer


def shared_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Tokens that every row starts with, leaving each row at least its last token
    (whose output predicts what follows the row)."""
    if not rows:
        return 0
    limit = max(min(len(r) for r in rows) - 1, 0)
    first = rows[0]
    for i in range(limit):
        if any(r[i] != first[i] for r in rows):
            return i
    return limit


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


def continuation_inputs(prefix: SharedPrefix | None, model: nn.Module, ids: torch.Tensor,
                        mask: torch.Tensor) -> dict:
    """The model's keyword arguments for right-padded continuations ``ids``/``mask`` [B, S]
    after ``prefix`` (or alone when it is None): a read-only prefix cache and an attention
    mask that keeps every prefix column; positions continue at P."""
    if prefix is None:
        return {"input_ids": ids, "attention_mask": mask}
    ones = torch.ones(ids.shape[0], prefix.length, dtype=mask.dtype, device=mask.device)
    return {"input_ids": ids, "attention_mask": torch.cat([ones, mask], 1),
            "past_key_values": prefix.cache(model, ids.shape[0]), "use_cache": True}


def prefix_logits(model: nn.Module, prefix_ids: Sequence[int] | torch.Tensor, suffix_ids: torch.Tensor,
                  suffix_mask: torch.Tensor) -> torch.Tensor:
    """Logits [B, S, V] of ``suffix_ids`` [B, S] (right-padded) run after the shared
    ``prefix_ids`` [P]: ``logits[b, t]`` is ``model(prefix + suffix[b]).logits[P + t]``.
    Differentiable (gradients reach the parameters through the prefix too)."""
    if suffix_ids.dim() != 2 or suffix_mask.shape != suffix_ids.shape:
        raise ValueError(f"suffix_ids and suffix_mask must both be [B, S]; got {tuple(suffix_ids.shape)} "
                         f"and {tuple(suffix_mask.shape)}")
    ids = [int(i) for i in prefix_ids]
    prefix = SharedPrefix.run(model, ids) if ids else None
    return model(**continuation_inputs(prefix, model, suffix_ids, suffix_mask)).logits
