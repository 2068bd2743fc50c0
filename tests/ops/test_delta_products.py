"""The fused pass of delta_svd (Y = dW X, Z = dW^T Y, ||dW||_F^2) on every backend,
against fp64 brute force, and delta_svd itself on every backend against the torch one."""

from __future__ import annotations

import pytest
import torch
from helpers.devices import backend_device
from helpers.planted import gap_spectrum, planted_delta, true_errors, weight_pair
from torch.testing import assert_close

import rlsignals
from rlsignals.ops.delta_products import delta_products

# (B, m, n, p): odd sizes, m < n and m > n, a single element, p across register widths,
# m > 256 (several row slabs in the C++ kernel)
SHAPES = [(3, 37, 53, 5), (2, 70, 17, 16), (2, 5, 100, 32), (1, 1, 1, 1), (1, 33, 9, 9), (1, 600, 33, 20)]
# relative to the largest entry of the fp64 result
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def brute_force(after, before, x, members):
    delta = after.double() - (0 if before is None else before.double())
    delta = delta[members]
    y = delta @ x.double()
    return y, delta.mT @ y, delta.square().sum((1, 2))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("acc", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_before", [True, False])
def test_product_matches_fp64(backend, shape, dtype, acc, with_before):
    num, m, n, p = shape
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(m * n + p)
    after = torch.randn(num, m, n, generator=gen).to(dtype)
    before = torch.randn(num, m, n, generator=gen).to(dtype) if with_before else None
    x = torch.randn(2, n, p, generator=gen, dtype=acc)
    members = torch.tensor([num - 1, 0])
    y, z, frob2 = delta_products(after.to(device), None if before is None else before.to(device),
                                     x.to(device), members, backend)
    assert y.dtype == z.dtype == acc and frob2.dtype == torch.float64
    for got, want in zip((y, z, frob2), brute_force(after, before, x, members)):
        assert_close(got.cpu().double(), want, atol=RTOL[acc] * float(want.abs().max()), rtol=0)


def test_wide_block_runs_in_column_groups(backend):
    device = backend_device(backend)
    after = torch.randn(2, 40, 24).to(torch.bfloat16)
    x = torch.randn(1, 24, 45)
    y, z, frob2 = delta_products(after.to(device), None, x.to(device), torch.tensor([1]), backend)
    want = brute_force(after, None, x, torch.tensor([1]))
    for got, ref in zip((y, z, frob2), want):
        assert_close(got.cpu().double(), ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_delta_svd_agrees_with_torch_backend(backend, dtype):
    deltas = [planted_delta(48, 36, gap_spectrum(r, length=20, decay=0.8), noise=0.05, seed=s)
              for s, r in enumerate((0.5, 0.9))]
    pairs = [weight_pair(d, dtype, seed=3) for d in deltas]
    after = torch.stack([a for a, _ in pairs])
    before = torch.stack([b for _, b in pairs])
    device = backend_device(backend)
    out = rlsignals.delta_svd(after.to(device), before.to(device), 2, backend=backend)
    ref = rlsignals.delta_svd(after, before, 2, backend="torch")
    err = true_errors(out, after, before, 2)
    assert bool((err <= out.err_bound.cpu().double()).all())
    assert bool((out.err_bound <= 1e-4).all())
    assert_close(out.S.cpu(), ref.S, rtol=2e-4, atol=0)
