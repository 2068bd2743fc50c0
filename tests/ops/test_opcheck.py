"""torch.library registration of every op on every backend that runs here:
opcheck (schema, autograd registration, fake tensors, AOT dispatch with dynamic
shapes), and one gradient on every backend, equal to fp64 autograd of the definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.devices import backend_device
from helpers.packs import make_pack
from torch.testing import assert_close

import rlsignals
from rlsignals.ops.backends import kernel
from rlsignals.ops.registration import block_positions
from rlsignals.ops.unit_sums import EPS

COMPILED = ["cpp", "triton", "cuda"]


@pytest.fixture(params=COMPILED)
def compiled_backend(request, backend_table) -> str:
    return backend_table(request.param)


@pytest.fixture
def backend_table():
    def live(name: str) -> str:
        if name == "cuda" and not torch.cuda.is_available():
            pytest.skip("cuda backend needs a CUDA device")
        ok, reason = rlsignals.available_backends()[name]
        assert ok, f"backend {name} is not live: {reason}"
        return name
    return live


def unit_sums_samples(device):
    """(hidden, offsets, eps) with empty ranges, rows outside every range, zero rows, three dtypes."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(11, 6, generator=gen)
    hidden[4] = 0
    offsets = torch.tensor([1, 1, 5, 10])
    variants = [(torch.float32, False), (torch.float32, True), (torch.bfloat16, True), (torch.float16, False)]
    return [(hidden.to(device, dtype).clone().requires_grad_(grad), offsets.to(device), EPS)
            for dtype, grad in variants]


def test_unit_sums_opcheck(compiled_backend):
    op = kernel("unit_sums", compiled_backend)
    for args in unit_sums_samples(backend_device(compiled_backend)):
        torch.library.opcheck(op, args)


def test_delta_products_opcheck(compiled_backend):
    device = backend_device(compiled_backend)
    gen = torch.Generator().manual_seed(1)
    after = torch.randn(3, 7, 5, generator=gen).to(torch.bfloat16).to(device)
    before = torch.randn(3, 7, 5, generator=gen).to(torch.bfloat16).to(device)
    members = torch.tensor([2, 0], device=device)
    op = kernel("delta_products", compiled_backend)
    for acc in (torch.float32, torch.float64):
        x = torch.randn(2, 5, 3, generator=gen, dtype=acc).to(device)
        for b in (before, None):
            torch.library.opcheck(op, (after, b, x, members))
        torch.library.opcheck(op, (after.float().requires_grad_(True), None, x, members))


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton", "cuda"])
def test_delta_products_outputs_never_require_grad(backend, backend_table):
    from rlsignals.ops.delta_products import delta_products

    backend_table(backend)
    device = backend_device(backend)
    after = torch.randn(2, 6, 4, device=device, requires_grad=True)
    x = torch.randn(1, 4, 2, device=device, requires_grad=True)
    outputs = delta_products(after, None, x, torch.tensor([1]), backend)
    assert not any(t.requires_grad for t in outputs)


def test_block_positions_opcheck():
    for counts in ([3, 0, 5], [], [0, 0]):
        torch.library.opcheck(block_positions, (torch.tensor(counts, dtype=torch.int64),))
    assert block_positions(torch.tensor([3, 0, 5])).tolist() == list(range(5))


def reference_loss(hidden, cu, prefix, block_size):
    """fp64 autograd of the definitions: unit rows by F.normalize, means of unit rows."""
    u = F.normalize(hidden.double(), dim=1, eps=EPS)
    cu_list, loss = cu.tolist(), u.new_zeros(())
    for b, p in enumerate(prefix.tolist()):
        seq = u[cu_list[b]:cu_list[b + 1]]
        q, pre = seq[p:], seq[:p]
        if q.shape[0] and pre.shape[0]:
            loss = loss + (b + 1) * (q.mean(0) @ pre.mean(0))
        if q.shape[0] >= 2:  # intra, diagonal excluded: (||S||^2 - sum ||u||^2) / (n (n - 1))
            n = q.shape[0]
            loss = loss + (q.sum(0).square().sum() - q.square().sum()) / (n * (n - 1))
        blocks = seq.split(block_size)
        for mean_a in (blk.mean(0) for blk in blocks):
            for mean_c in (blk.mean(0) for blk in blocks):
                loss = loss + 0.5 * (mean_a @ mean_c)
    return loss


def op_loss(hidden, cu, prefix, block_size, backend):
    stats = rlsignals.angle_stats(hidden, cu, prefix, exclude_diagonal=True, backend=backend)
    weights = torch.arange(1, cu.numel(), device=hidden.device, dtype=torch.float32)
    loss = (stats.inter.nan_to_num() * weights).sum() + stats.intra.nan_to_num().sum()
    blocks = rlsignals.block_cosine(hidden, cu, block_size, backend=backend)
    loss = loss + 0.5 * torch.where(blocks.valid, blocks.cosine, 0).sum()
    return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_is_the_same_on_every_backend(backend, dtype):
    """angle_stats and block_cosine: d loss / d hidden equals fp64 autograd of the definition
    (zero rows included), on every backend (the torch one by autograd, the others by the
    registered closed form)."""
    seq_lens, prefix_lens = [5, 1, 9, 4], [2, 0, 3, 4]
    hidden, cu, prefix = make_pack(seq_lens, prefix_lens, 6, dtype=dtype, seed=7, zero_rows=(3,),
                                   device=backend_device(backend))
    leaf = hidden.detach().requires_grad_(True)
    op_loss(leaf, cu, prefix, 3, backend).backward()
    ref_leaf = hidden.detach().cpu().double().requires_grad_(True)
    reference_loss(ref_leaf, cu.cpu(), prefix.cpu(), 3).backward()
    assert leaf.grad.dtype == dtype
    got, want = leaf.grad.cpu().double(), ref_leaf.grad
    live = want.abs().amax(1) < 1e6  # the zero row's gradient is g / eps (~1e12): compare it relatively
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert_close(got[live], want[live], atol=tol * float(want[live].abs().max()), rtol=0)
    assert_close(got[~live], want[~live], rtol=1e-4 if dtype == torch.float32 else 2e-2, atol=0)
