"""CUDA backend of unit_sums (csrc/cuda/unit_sums.cu) against fp64 brute force
and the torch version, directly and through angle_stats. Needs a GPU.

The shapes reach every path of the kernel: 16-byte vectors and single elements
(odd d, a misaligned base pointer), every row of its launch table (d up to
32768 16-bit / 16384 fp32 in registers) and the any-d kernel past it; ranges
empty, of one row, and longer than the Python layer's 64-row chunks (also
straight through torch.ops, unchunked). The angle ops on every backend, cuda
included, are tested in test_angle_stats.py and test_block_cosine.py; here
angle_stats runs at model-sized d.
"""

from __future__ import annotations

import pytest
import torch
from helpers.brute_force import angle_stats_brute
from helpers.packs import make_pack
from torch.testing import assert_close

import rlsignals
from rlsignals.ops.unit_sums import EPS, unit_sums, unit_sums_torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# 1, 7: single elements; 64..1000: 16-byte vectors, one per thread; 1001, 1999, 3001:
# single elements on rows 2-4 of the launch table; 4100: single elements past the table
# for fp16/bf16 (any-d kernel); 4096..32768: vectors on rows 2-4 (fp32 32768: any-d);
# 40000: any-d for every dtype.
DIMS = [1, 7, 64, 896, 1000, 1001, 1999, 3001, 4096, 4100, 8192, 16384, 32768, 40000]
# Range lengths: empty, one row, more than one 64-row chunk, odd.
LENGTHS = [0, 1, 0, 65, 130, 7, 1, 33, 0, 64, 2]


@pytest.fixture(scope="module", autouse=True)
def cuda_backend():
    live, reason = rlsignals.available_backends()["cuda"]
    assert live, f"a CUDA device is present but the cuda backend is not live: {reason}"


def tolerance(dtype: torch.dtype) -> dict:
    # bf16/fp16 inputs are exact in fp64; only the fp32 accumulation differs (the tolerance rule of tests/README.md).
    return {"atol": 1e-5 if dtype == torch.float32 else 1e-4, "rtol": 1e-5}


def ranges(lengths, d, dtype, seed):
    """hidden [sum(lengths), d] on the GPU (a shared direction, varied norms) and offsets [R+1] on the CPU."""
    hidden, offsets, _ = make_pack(lengths, [0] * len(lengths), d, dtype=dtype, seed=seed, device="cuda")
    return hidden, offsets.cpu()


def brute_force(hidden: torch.Tensor, offsets: torch.Tensor, eps: float = EPS):
    """fp64 on the CPU from the definition; NaN and inf propagate as in the kernels."""
    x = hidden.detach().to("cpu", torch.float64)
    inv = 1.0 / (x * x).sum(1).sqrt().clamp_min(eps)  # clamp_min keeps NaN; inf -> inv 0
    u = x * inv[:, None]
    bounds = offsets.tolist()
    sums = torch.stack([u[a:b].sum(0) for a, b in zip(bounds, bounds[1:])]) if len(bounds) > 1 else u[:0]
    sqsums = torch.tensor([float(u[a:b].square().sum()) for a, b in zip(bounds, bounds[1:])], dtype=torch.float64)
    return sums, sqsums


def check(hidden: torch.Tensor, offsets: torch.Tensor, eps: float = EPS, *, direct: bool = False):
    """unit_sums on the cuda backend (or torch.ops unchunked) against the brute force."""
    if direct:
        sums, sqsums = torch.ops.rlsignals.unit_sums(hidden, offsets.to(hidden.device), eps)
    else:
        sums, sqsums = unit_sums(hidden, offsets, "cuda", eps)
    assert sums.dtype == sqsums.dtype == torch.float32
    assert sums.device == sqsums.device == hidden.device
    assert sums.shape == (offsets.numel() - 1, hidden.shape[1]) and sqsums.shape == (offsets.numel() - 1,)
    want_sums, want_sq = brute_force(hidden, offsets, eps)
    assert_close(sums.cpu().double(), want_sums, equal_nan=True, **tolerance(hidden.dtype))
    assert_close(sqsums.cpu().double(), want_sq, equal_nan=True, **tolerance(hidden.dtype))
    return sums, sqsums


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_brute_force_and_torch(d, dtype):
    hidden, offsets = ranges(LENGTHS * 2, d, dtype, seed=d)
    sums, sqsums = check(hidden, offsets)
    ref_sums, ref_sq = unit_sums_torch(hidden, offsets)
    assert_close(sums, ref_sums, **tolerance(dtype))
    assert_close(sqsums, ref_sq, **tolerance(dtype))
    empty = offsets.diff().cuda() == 0
    assert bool((sums[empty] == 0).all()) and bool((sqsums[empty] == 0).all())


@pytest.mark.parametrize("d", [7, 896, 4096, 16384, 40000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_long_ranges_unchunked(d, dtype):
    """The kernel itself is right for any range length (the Python layer cuts at 64 rows)."""
    hidden, offsets = ranges([300, 0, 1, 8, 9, 7, 257], d, dtype, seed=1000 + d)
    check(hidden, offsets, direct=True)


@pytest.mark.parametrize("d", [1, 7, 1000, 4096, 40000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_nan_inf_rows(d, dtype):
    hidden, offsets = ranges([3, 70, 2, 5, 1, 66, 4], d, dtype, seed=2000 + d)
    o = offsets.tolist()
    hidden[o[1] + 40] = float("nan")  # range 1: a NaN row, in its second 64-row chunk
    hidden[o[2]] = 0  # range 2: a zero row and a normal one
    hidden[o[3] + 1, d // 2] = float("inf")  # range 3: one inf element
    hidden[o[4]] = 0  # range 4: a single zero row
    hidden[o[5] + 2, 0] = -float("inf")  # range 5: -inf in its first chunk
    for direct in (False, True):
        sums, sqsums = (t.cpu() for t in check(hidden, offsets, direct=direct))
        assert torch.isnan(sqsums[[1, 3, 5]]).all() and torch.isnan(sums[1]).all()
        assert torch.isnan(sums[3, d // 2]) and torch.isnan(sums[5, 0])
        assert torch.isfinite(sums[[0, 2, 4, 6]]).all() and torch.isfinite(sqsums[[0, 2, 4, 6]]).all()
        assert sqsums[4] == 0 and (sums[4] == 0).all()
        assert_close(sqsums[2], torch.tensor(1.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_eps(dtype):
    hidden, offsets = ranges(LENGTHS, 96, dtype, seed=3)
    check(hidden, offsets, eps=10.0)  # most rows have a norm below 10: u = h / 10


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["padded_rows", "misaligned_base", "broadcast_rows"])
def test_strided_rows(dtype, layout):
    d = 1024
    wide, offsets = ranges(LENGTHS, d + 8, dtype, seed=4)
    if layout == "padded_rows":  # row stride d + 8: still 16-byte vectors
        hidden = wide[:, :d]
    elif layout == "misaligned_base":  # data pointer one element past 16-byte alignment: single elements
        hidden = wide[:, 1:d + 1]
    else:  # row stride 0: every row is the same memory
        hidden = wide[:1, :d].expand(wide.shape[0], d)
    assert hidden.stride(1) == 1
    check(hidden, offsets)
    check(hidden, offsets, direct=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_edge_partitions(dtype):
    d = 136
    check(torch.zeros(0, d, dtype=dtype, device="cuda"), torch.zeros(4, dtype=torch.int64))  # no rows
    hidden, _ = ranges([20000], d, dtype, seed=5)
    check(hidden[:5], torch.tensor([0, 0, 5, 5]))
    _, sqsums = check(hidden, torch.arange(20001))  # one row per range: 20000 blocks
    assert_close(sqsums, torch.ones_like(sqsums), atol=1e-5, rtol=0)
    check(hidden[:3000], torch.tensor([0, 3000]), direct=True)  # one block, 3000 rows


def test_deterministic_and_on_the_current_stream():
    hidden, offsets = ranges(LENGTHS * 20, 2048, torch.bfloat16, seed=6)
    first = unit_sums(hidden, offsets, "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        second = unit_sums(hidden, offsets, "cuda")
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
def test_second_device():
    hidden, offsets = ranges(LENGTHS, 512, torch.float16, seed=7)
    with torch.cuda.device(0):  # the current device is not hidden's
        check(hidden.to("cuda:1"), offsets)


def test_direct_op_argument_errors():
    hidden = torch.randn(10, 8, device="cuda")
    with pytest.raises(RuntimeError, match="offsets must be on hidden's device"):
        torch.ops.rlsignals.unit_sums(hidden, torch.tensor([0, 10]), EPS)
    with pytest.raises(RuntimeError, match="int64"):
        torch.ops.rlsignals.unit_sums(hidden, torch.tensor([0, 10], dtype=torch.int32, device="cuda"), EPS)
    with pytest.raises(RuntimeError, match=r"\[T, d\]"):
        torch.ops.rlsignals.unit_sums(hidden[0], torch.tensor([0, 8], device="cuda"), EPS)


@pytest.mark.parametrize("d", [896, 4096])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", [{}, {"exclude_diagonal": True}, {"causal": True}], ids=str)
def test_angle_stats_at_model_sizes(d, dtype, variant):
    # empty prefix, empty question, empty sequence, a long prefix, a question longer than 64 rows
    hidden, cu, prefix = make_pack([1, 5, 130, 40, 0, 7, 200, 2], [0, 2, 100, 0, 0, 7, 64, 1], d,
                                   dtype=dtype, seed=d, device="cuda")
    out = rlsignals.angle_stats(hidden, cu, prefix, backend="cuda", **variant)
    via_torch = rlsignals.angle_stats(hidden, cu, prefix, backend="torch", **variant)
    intra, inter = angle_stats_brute(hidden, cu.cpu(), prefix.cpu(), **variant)
    atol = tolerance(dtype)["atol"]
    assert_close(out.intra.cpu().double(), intra, atol=atol, rtol=0, equal_nan=True)
    assert_close(out.inter.cpu().double(), inter, atol=atol, rtol=0, equal_nan=True)
    assert_close(out.intra, via_torch.intra, atol=atol, rtol=0, equal_nan=True)
    assert_close(out.inter, via_torch.inter, atol=atol, rtol=0, equal_nan=True)
