"""block_cosine on every backend against the torch reference and fp64 brute force."""

from __future__ import annotations

import pytest
import torch
from helpers.brute_force import block_cosine_brute, cosine_matrix
from helpers.devices import backend_device
from helpers.packs import EDGE_PACK, make_pack
from torch.testing import assert_close

import rlsignals
from rlsignals.ops.reference import block_cosine_reference

VARIANTS = [dict(), dict(exclude_diagonal=True), dict(causal=True), dict(causal=True, exclude_diagonal=True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [1, 3, 64, 500])
def test_matches_oracles(backend, dtype, block_size):
    seq_lens, prefix_lens = EDGE_PACK
    if block_size == 1:  # keep the per-token brute force small
        seq_lens, prefix_lens = [7, 1, 0, 13], [0, 0, 0, 0]
    hidden, cu, _ = make_pack(seq_lens, prefix_lens, 19, dtype=dtype, seed=block_size,
                              zero_rows=(2,), device=backend_device(backend))
    atol = 1e-5 if dtype == torch.float32 else 1e-4
    for variant in VARIANTS:
        out = rlsignals.block_cosine(hidden, cu, block_size, backend=backend, **variant)
        assert out.cosine.dtype == torch.float32 and out.cosine.device == hidden.device
        brute = block_cosine_brute(hidden, cu, block_size, **variant)
        assert_close(out.cosine.cpu().double(), brute, atol=atol, rtol=0, equal_nan=True)
        assert torch.equal(out.valid.cpu(), ~torch.isnan(brute))
        if dtype == torch.float32:
            ref = block_cosine_reference(hidden, cu, block_size, **variant)
            assert_close(out.cosine, ref.cosine, atol=atol, rtol=0, equal_nan=True)
            assert torch.equal(out.valid, ref.valid) and torch.equal(out.block_lens, ref.block_lens)


def test_block_size_one_is_the_full_cosine_matrix(backend):
    hidden, cu, _ = make_pack([9], [0], 11, zero_rows=(4,), device=backend_device(backend))
    out = rlsignals.block_cosine(hidden, cu, 1, backend=backend)
    assert_close(out.cosine[0].cpu().double(), cosine_matrix(hidden), atol=1e-5, rtol=0)
    assert out.cosine[0, 4, 4].item() == 0.0  # a zero row has cosine 0 with itself
    assert out.block_lens.tolist() == [[1] * 9]


def test_shapes_and_block_lens(backend):
    hidden, cu, _ = make_pack([10, 0, 4], [0, 0, 0], 5, device=backend_device(backend))
    out = rlsignals.block_cosine(hidden, cu, 4, backend=backend)
    assert out.cosine.shape == out.valid.shape == (3, 3, 3)
    assert out.block_lens.tolist() == [[4, 4, 2], [0, 0, 0], [4, 0, 0]]
    assert not out.valid[1].any() and out.valid[2].sum() == 1
