"""The shared prefix of a prompt set, run once: its unit-row sums at the hooked
module and its key/value cache, for scoring each question on its own tokens.

In a causal model the prefix's hidden states do not depend on what follows,
so for prompts [prefix P | question Q | suffix] the prefix is run once (batch
1, the forward stopping at the hooked module): that gives S_P = sum_{j in P} u_j
(``reduce.SpanSums``, K = 1) and the keys/values [1, H_kv, |P|, d_head] of every
layer that ran before the hook. A batch of questions then runs only its own
tokens, with position ids continuing after the prefix and an attention mask
that keeps every prefix column; the prefix cache is handed to each batch as a
view expanded over the batch; each layer concatenates it with the batch's own
keys/values for its attention and drops the result (one transient copy per
layer and batch).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import torch
from torch import nn

from rlsignals.signals.capture import StopForward, capture_input
from rlsignals.signals.reduce import SpanSums, span_unit_sums


@dataclasses.dataclass
class PrefixState:
    """ids: the prefix tokens; sums: their SpanSums at the hooked module (K = 1);
    key_values: per layer that ran before the hook, (keys, values) [1, H_kv, |P|, d_head]."""

    ids: tuple[int, ...]
    sums: SpanSums
    key_values: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def length(self) -> int:
        return len(self.ids)

    def cache(self, model: nn.Module, batch: int):
        """A DynamicCache of the prefix for ``batch`` rows, or None when no attention layer
        runs before the hooked module. Each layer holds the prefix's keys/values as a
        view expanded over the batch and hands attention [prefix | batch's own] without
        keeping it (``_ReadOnlyLayer``): one copy per layer, freed with the layer."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if not self.key_values:
            return None
        cache = DynamicCache(ddp_cache_data=self.key_values, config=model.config)
        for index, layer in enumerate(cache.layers[:len(self.key_values)]):
            keys, values = layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1)
            if type(layer) is DynamicLayer:  # sliding-window layers keep their own update
                layer = cache.layers[index] = _read_only_layer_class()()
                layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        return cache


@functools.cache
def _read_only_layer_class():
    """A DynamicLayer whose update returns [cached | new] keys/values without storing them
    (a scoring forward never reads them again), so each layer's copy is freed at once."""
    from transformers.cache_utils import DynamicLayer

    class _ReadOnlyLayer(DynamicLayer):
        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    return _ReadOnlyLayer


def run_prefix(model: nn.Module, module: nn.Module, ids: Sequence[int], backend: str = "auto") -> PrefixState:
    """Run ``ids`` (batch 1) up to ``module``; its PrefixState. Call under inference_mode/no_grad."""
    from transformers import DynamicCache

    ids = tuple(int(i) for i in ids)
    if not ids:
        raise ValueError("run_prefix needs at least one prefix token")
    device = next(model.parameters()).device
    captured: dict[str, SpanSums] = {}

    def on_hidden(hidden: torch.Tensor) -> None:
        captured["sums"] = span_unit_sums(hidden[0], torch.tensor([0]), torch.tensor([len(ids)]), backend)

    cache = DynamicCache(config=model.config)
    with capture_input(module, on_hidden):
        try:
            model(input_ids=torch.tensor([ids], device=device), past_key_values=cache, use_cache=True)
        except StopForward:
            pass
    if "sums" not in captured:
        raise RuntimeError("the prefix's forward pass never reached the hooked module")
    key_values = [(keys, values) for keys, values, *_ in cache if keys is not None and keys.numel()]
    return PrefixState(ids, captured["sums"], key_values)
