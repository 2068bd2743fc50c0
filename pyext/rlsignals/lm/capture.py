"""Where the hidden states are read: a forward hook on one module.

The default is the point the GAIN-RL paper used: the input of the last decoder
layer's MLP up-projection (``mlp.up_proj``), i.e. the output of that layer's
post-attention norm. For the scorer (``capture_input``) the hook hands the
activations to a callback and then stops the forward pass, so no later layer
and no lm_head runs and no activation is kept; for the trainer's live signal
(``collect_inputs``) it keeps a detached view of each input and lets the
training forward run on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


class StopForward(Exception):
    """Raised by the capture hook once the hooked module's input is read."""


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of decoder layers: the longest ModuleList in it."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no stack of decoder layers (nn.ModuleList) to hook")
    return best


def default_module_name(model: nn.Module) -> str:
    path, layers = decoder_layers(model)
    return f"{path}.{len(layers) - 1}.mlp.up_proj"


def candidate_modules(model: nn.Module) -> list[str]:
    """Modules of the last decoder layer whose input is a [B, L, d] hidden state."""
    path, layers = decoder_layers(model)
    prefix = f"{path}.{len(layers) - 1}"
    return [f"{prefix}.{name}" for name, module in layers[-1].named_modules()
            if name and (isinstance(module, nn.Linear) or "norm" in type(module).__name__.lower())]


def resolve_module(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    name = name or default_module_name(model)
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        options = ", ".join(candidate_modules(model)) or "(none found)"
        raise ValueError(f"{type(model).__name__} has no module {name!r}. Modules of the last decoder layer "
                         f"that would work: {options}. Pass one with --module.") from None


@contextlib.contextmanager
def capture_input(module: nn.Module, callback: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """While active, a forward that reaches ``module`` calls callback(input [B, L, d])
    and then raises StopForward (catch it around the model call)."""

    def hook(_module: nn.Module, args: tuple) -> None:
        callback(args[0])
        raise StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def collect_inputs(module: nn.Module, into: list[torch.Tensor]) -> Iterator[None]:
    """While active, every forward through ``module`` appends a detached view of its
    input [B, L, d] to ``into`` and carries on (no copy, no early stop)."""

    def hook(_module: nn.Module, args: tuple) -> None:
        into.append(args[0].detach())

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
