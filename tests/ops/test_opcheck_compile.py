"""torch.compile(fullgraph=True) over the angle ops matches eager, on every backend
that runs here (value checks become runtime asserts; the backend is chosen while
tracing; block_cosine's data-dependent size comes from a fake kernel's dynamic size)."""

from __future__ import annotations

import pytest
import torch
from helpers.devices import backend_device
from helpers.packs import EDGE_PACK, make_pack
from torch.testing import assert_close

import rlsignals

pytestmark = pytest.mark.slow  # each compile takes 20-90 s on a shared 2-core CPU


def compiled(fn, compiler):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=compiler)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_angle_stats_compiles_and_matches_eager(backend, compiler):
    if compiler == "inductor" and backend == "triton" and not torch.cuda.is_available():
        pytest.skip("inductor over the interpreted Triton op: covered by aot_eager here")
    seq_lens, prefix_lens = EDGE_PACK
    hidden, cu, prefix = make_pack(seq_lens, prefix_lens, 24, seed=3, zero_rows=(2,),
                                   device=backend_device(backend))

    def stats(h, c, p):
        return rlsignals.angle_stats(h, c, p, exclude_diagonal=True, backend=backend)

    got, want = compiled(stats, compiler)(hidden, cu, prefix), stats(hidden, cu, prefix)
    for g, w in zip(got, want):
        assert_close(g, w, atol=1e-6, rtol=0, equal_nan=True)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_block_cosine_compiles_and_matches_eager(backend, compiler):
    if compiler == "inductor" and backend == "triton" and not torch.cuda.is_available():
        pytest.skip("inductor over the interpreted Triton op: covered by aot_eager here")
    hidden, cu, _ = make_pack([7, 0, 12, 3], [0, 0, 0, 0], 16, seed=4, device=backend_device(backend))

    def blocks(h, c):
        return rlsignals.block_cosine(h, c, 4, causal=True, backend=backend)

    got, want = compiled(blocks, compiler)(hidden, cu), blocks(hidden, cu)
    assert got.cosine.shape == want.cosine.shape == (4, 3, 3)
    assert_close(got.cosine, want.cosine, atol=1e-6, rtol=0, equal_nan=True)
    assert torch.equal(got.valid, want.valid) and torch.equal(got.block_lens, want.block_lens)


def test_compiled_call_still_checks_values():
    hidden, cu, prefix = make_pack([4, 5], [1, 2], 8, seed=5)
    fn = compiled(lambda h, c, p: rlsignals.angle_stats(h, c, p), "aot_eager")
    fn(hidden, cu, prefix)
    with pytest.raises(RuntimeError, match="cu_seqlens must start at 0, be non-decreasing"):
        fn(hidden, torch.tensor([0, 6, 4]), prefix)
