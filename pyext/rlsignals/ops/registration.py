"""torch.library registration of the rlsignals ops: fake kernels, autograd, Triton ops.

The ops (the C++ schemas are in csrc/bindings/schema.cpp, the one schema file):

    rlsignals::unit_sums(hidden [T, d], offsets [R+1] int64, eps) -> (sums fp32 [R, d], sqsums fp32 [R])
    rlsignals::delta_products(after [B, m, n], before?, x [b, n, p], members [b]) -> (Y, Z, frob2)
        CPU kernels = backend "cpp", CUDA kernels = backend "cuda" (the C++ extension)
    rlsignals_triton::unit_sums, rlsignals_triton::delta_products
        the Triton launchers of triton_kernels/, same arguments and results, registered
        with torch.library.triton_op so that torch.compile sees the kernels. Under the
        Triton CPU interpreter (TRITON_INTERPRET=1) wrap_triton cannot trace a kernel, so
        there the same launchers register as opaque torch.library.custom_op.

Every op has a fake kernel (shapes only), so FakeTensor tracing, torch.compile and
torch.library.opcheck work. One autograd story on every backend (the torch backend
gets the same gradient from torch's own autograd):

    unit_sums: with u_i = h_i / max(||h_i||, eps) and the range r that holds row i,
        grad h_i = (g_r - (g_r . u_i) u_i) / ||h_i||                 where ||h_i|| > eps
                 = g_r / eps + 2 q_r h_i / eps^2                     where ||h_i|| <= eps
        for output gradients g = d/d sums, q = d/d sqsums (||u_i||^2 is 1 above eps, so
        sqsums only has a gradient through rows below it); rows outside every range get 0.
    delta_products: outputs do not require grad (they feed an iterative solver whose
        results are not differentiated); marked non-differentiable on every backend.

One helper op in torch, for block_cosine's data-dependent output size:

    rlsignals_torch::block_positions(blocks_per_seq int64 [B]) -> arange(max blocks) int64 [NB]
        its fake kernel declares NB a dynamic size, so torch.compile(fullgraph=True) traces
        block_cosine (whose output is [B, NB, NB]) without reading a value while tracing.
"""

from __future__ import annotations

import functools
import os
import types

import torch

from rlsignals.ops.extension import ExtensionStatus, load_extension
from rlsignals.ops.unit_rows import unit_rows


def unit_sums_fake(hidden: torch.Tensor, offsets: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes of unit_sums: sums fp32 [R, d], sqsums fp32 [R] on hidden's device."""
    num_ranges = offsets.shape[0] - 1
    return (hidden.new_empty(num_ranges, hidden.shape[1], dtype=torch.float32),
            hidden.new_empty(num_ranges, dtype=torch.float32))


def delta_products_fake(after: torch.Tensor, before: torch.Tensor | None, x: torch.Tensor,
                        members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shapes of delta_products: Y [b, m, p], Z [b, n, p] in x's dtype, frob2 fp64 [b]."""
    b, n, p = x.shape
    return x.new_empty(b, after.shape[1], p), x.new_empty(b, n, p), x.new_empty(b, dtype=torch.float64)


@torch.library.custom_op("rlsignals_torch::block_positions", mutates_args=())
def block_positions(blocks_per_seq: torch.Tensor) -> torch.Tensor:
    """arange(NB), NB = max(blocks_per_seq) (0 when there is no sequence), on its device."""
    num_blocks = int(blocks_per_seq.max()) if blocks_per_seq.numel() else 0
    return torch.arange(num_blocks, device=blocks_per_seq.device)


@block_positions.register_fake
def _block_positions_fake(blocks_per_seq: torch.Tensor) -> torch.Tensor:
    return blocks_per_seq.new_empty(torch.library.get_ctx().new_dynamic_size())


def _unit_sums_setup(ctx, inputs, output) -> None:
    hidden, offsets, eps = inputs
    ctx.save_for_backward(hidden, offsets)
    ctx.eps = eps


def unit_sums_backward(ctx, grad_sums: torch.Tensor | None, grad_sqsums: torch.Tensor | None):
    """The closed-form gradient of unit_sums (module docstring), for hidden only."""
    hidden, offsets = ctx.saved_tensors
    num_rows, num_ranges = hidden.shape[0], offsets.shape[0] - 1
    if num_ranges == 0:
        return torch.zeros_like(hidden), None, None
    x = hidden.detach().float()
    rows = unit_rows(x, ctx.eps)
    owner = torch.searchsorted(offsets.to(hidden.device), torch.arange(num_rows, device=hidden.device),
                               right=True) - 1
    inside = ((owner >= 0) & (owner < num_ranges)).to(x.dtype)
    owner = owner.clamp(0, num_ranges - 1)
    g = (x.new_zeros(num_ranges, x.shape[1]) if grad_sums is None else grad_sums.float())[owner] * inside[:, None]
    q = (x.new_zeros(num_ranges) if grad_sqsums is None else grad_sqsums.float())[owner] * inside
    above = rows.norm > ctx.eps * rows.scale
    tangential = (g - (g * rows.u).sum(1, keepdim=True) * rows.u) * rows.inv[:, None] * rows.scale[:, None]
    below = g * rows.inv[:, None] + 2 * q[:, None] * x * rows.inv.square()[:, None]
    return torch.where(above[:, None], tangential, below).to(hidden.dtype), None, None


def _mark_non_differentiable(ctx, inputs, output) -> None:
    ctx.mark_non_differentiable(*output)


def _no_gradient(ctx, *grads):
    return None, None, None, None


def _register(op: str | object, fake, backward=None, setup=None) -> None:
    """Fake kernel and autograd of one op (a qualified name or a CustomOpDef)."""
    if isinstance(op, str):
        torch.library.register_fake(op)(fake)
    else:
        op.register_fake(fake)
    torch.library.register_autograd(op, backward, setup_context=setup)


@functools.cache
def compiled_ops() -> ExtensionStatus:
    """Build/load the C++ extension (ops/extension.py) and register its ops' fake kernels
    and autograd, once. Never raises."""
    status = load_extension()
    if status.kernels:
        _register("rlsignals::unit_sums", unit_sums_fake, unit_sums_backward, _unit_sums_setup)
        _register("rlsignals::delta_products", delta_products_fake, _no_gradient, _mark_non_differentiable)
    return status


@functools.cache
def triton_ops() -> types.SimpleNamespace:
    """The Triton kernels as ops: ``.unit_sums`` and ``.delta_products`` (imports triton)."""
    from rlsignals.triton_kernels.delta_products import delta_products
    from rlsignals.triton_kernels.unit_sums import unit_sums

    interpreter = os.environ.get("TRITON_INTERPRET") == "1"
    define = torch.library.custom_op if interpreter else torch.library.triton_op
    ops = types.SimpleNamespace(
        unit_sums=define("rlsignals_triton::unit_sums", unit_sums, mutates_args=()),
        delta_products=define("rlsignals_triton::delta_products", delta_products, mutates_args=()),
    )
    _register(ops.unit_sums, unit_sums_fake, unit_sums_backward, _unit_sums_setup)
    _register(ops.delta_products, delta_products_fake, _no_gradient, _mark_non_differentiable)
    return ops
