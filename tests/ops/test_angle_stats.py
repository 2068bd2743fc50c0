"""angle_stats on every backend against the torch reference and fp64 brute force."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.brute_force import angle_stats_brute
from helpers.devices import backend_device
from helpers.packs import EDGE_PACK, make_pack
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import rlsignals
from rlsignals.ops.reference import angle_stats_reference

VARIANTS = [dict(), dict(exclude_diagonal=True), dict(causal=True), dict(causal=True, exclude_diagonal=True)]
# fp32 compares at 1e-5; half-precision inputs are compared with the brute force
# on the already rounded inputs, at 1e-4 (the tolerance rule of tests/README.md).
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-4, torch.float16: 1e-4}


def check_against_oracles(backend, hidden, cu, prefix, **variant):
    out = rlsignals.angle_stats(hidden, cu, prefix, backend=backend, **variant)
    assert out.intra.dtype == out.inter.dtype == torch.float32
    assert out.intra.shape == out.inter.shape == (cu.numel() - 1,)
    assert out.intra.device == hidden.device
    atol = ATOL[hidden.dtype]
    if hidden.dtype == torch.float32:
        ref = angle_stats_reference(hidden, cu, prefix, **variant)
        assert_close(out.intra, ref.intra, atol=atol, rtol=0, equal_nan=True)
        assert_close(out.inter, ref.inter, atol=atol, rtol=0, equal_nan=True)
    intra, inter = angle_stats_brute(hidden, cu, prefix, **variant)
    assert_close(out.intra.cpu().double(), intra, atol=atol, rtol=0, equal_nan=True)
    assert_close(out.inter.cpu().double(), inter, atol=atol, rtol=0, equal_nan=True)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [1, 17, 96, 333])
def test_edge_pack_matches_oracles(backend, dtype, d):
    seq_lens, prefix_lens = EDGE_PACK
    hidden, cu, prefix = make_pack(seq_lens, prefix_lens, d, dtype=dtype, seed=d,
                                   zero_rows=(2, 8, 40), device=backend_device(backend))
    for variant in VARIANTS:
        out = check_against_oracles(backend, hidden, cu, prefix, **variant)
    # documented NaNs: empty prefix -> inter NaN; empty question or empty sequence -> both NaN
    assert torch.isnan(out.inter[[1, 2, 4]]).all()
    assert torch.isnan(out.intra[[3, 4]]).all() and torch.isnan(out.inter[3])
    # a one-token question has no off-diagonal pair
    assert torch.isnan(out.intra[1]) and torch.isnan(out.intra[6])


def test_hand_computed_values(backend):
    """Q = [x, 0, -x], P = [x]: cosines x.x=1, x.(-x)=-1, 0 with the zero row."""
    x = torch.tensor([3.0, 4.0])
    hidden = torch.stack([x, x, torch.zeros(2), -x]).to(backend_device(backend))
    cu = torch.tensor([0, 4], device=hidden.device)
    prefix = torch.tensor([1], device=hidden.device)
    # full 3x3 question block: diag 1, 0, 1; (0,2) and (2,0) = -1 -> sum 0 over 9 pairs
    plain = rlsignals.angle_stats(hidden, cu, prefix, backend=backend)
    assert plain.intra.item() == pytest.approx(0.0, abs=1e-6)
    assert plain.inter.item() == pytest.approx(0.0, abs=1e-6)  # (1 + 0 - 1) / 3
    # off-diagonal only: (-1 - 1) / 6
    off = rlsignals.angle_stats(hidden, cu, prefix, backend=backend, exclude_diagonal=True)
    assert off.intra.item() == pytest.approx(-1 / 3, abs=1e-6)
    # causal j <= i: diag (1 + 0 + 1) + (1,0)=0 + (2,0)=-1 + (2,1)=0 -> 1 over 6 pairs
    causal = rlsignals.angle_stats(hidden, cu, prefix, backend=backend, causal=True)
    assert causal.intra.item() == pytest.approx(1 / 6, abs=1e-6)


def test_non_finite_rows_poison_only_what_reads_them(backend):
    seq_lens, prefix_lens = [6, 8, 5], [2, 3, 1]
    hidden, cu, prefix = make_pack(seq_lens, prefix_lens, 24, device=backend_device(backend))
    clean = rlsignals.angle_stats(hidden, cu, prefix, backend=backend)
    for bad_value in (math.nan, math.inf, -math.inf):
        in_question = hidden.clone()
        in_question[6 + 5, 3] = bad_value  # sequence 1, question token
        out = rlsignals.angle_stats(in_question, cu, prefix, backend=backend)
        assert torch.isnan(out.intra[1]) and torch.isnan(out.inter[1])
        assert_close(out.intra[[0, 2]], clean.intra[[0, 2]], atol=0, rtol=0)
        assert_close(out.inter[[0, 2]], clean.inter[[0, 2]], atol=0, rtol=0)

        in_prefix = hidden.clone()
        in_prefix[6 + 1, 0] = bad_value  # sequence 1, prefix token
        out = rlsignals.angle_stats(in_prefix, cu, prefix, backend=backend)
        assert torch.isnan(out.inter[1])
        assert_close(out.intra, clean.intra, atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")  # Triton interpreter's numpy
@pytest.mark.parametrize("dtype, peak", [(torch.float32, 3.0e38), (torch.bfloat16, 3.3e38)])
def test_rows_up_to_the_largest_finite_value(backend, dtype, peak):
    """Rows whose squared norm overflows fp32 (any entry above about 1.8e19) still give
    their cosines: fp32 rows near 3e38 and bf16 rows near 3.3e38 (its largest finite value
    is 3.39e38), mixed with ordinary and tiny rows, against fp64 brute force."""
    seq_lens, prefix_lens = [6, 9, 5], [2, 4, 1]
    hidden, cu, prefix = make_pack(seq_lens, prefix_lens, 33, seed=11)
    scale = torch.ones(hidden.shape[0], 1, dtype=torch.float64)
    scale[[0, 3, 4, 8, 9, 16, 17]] = peak / hidden.abs().amax(1, keepdim=True).double()[[0, 3, 4, 8, 9, 16, 17]]
    scale[[5, 12]] = 1e-20  # tiny rows in the same sequences
    huge = (hidden.double() * scale).to(dtype)
    assert bool(torch.isfinite(huge).all()) and float(huge.abs().max()) > 2.9e38
    huge = huge.to(backend_device(backend))
    for variant in VARIANTS:
        out = rlsignals.angle_stats(huge, cu.to(huge.device), prefix.to(huge.device), backend=backend, **variant)
        intra, inter = angle_stats_brute(huge, cu, prefix, **variant)
        assert_close(out.intra.cpu().double(), intra, atol=ATOL[dtype], rtol=0, equal_nan=True)
        assert_close(out.inter.cpu().double(), inter, atol=ATOL[dtype], rtol=0, equal_nan=True)


def test_empty_pack(backend):
    hidden = torch.zeros(0, 8, device=backend_device(backend))
    cu = torch.zeros(1, dtype=torch.int64, device=hidden.device)
    out = rlsignals.angle_stats(hidden, cu, torch.zeros(0, dtype=torch.int64, device=hidden.device),
                                backend=backend)
    assert out.intra.shape == out.inter.shape == (0,)


def test_int32_indices_and_strided_rows(backend):
    seq_lens, prefix_lens = [5, 9], [2, 4]
    hidden, cu, prefix = make_pack(seq_lens, prefix_lens, 20, device=backend_device(backend))
    wide = torch.zeros(hidden.shape[0], 40, device=hidden.device)
    wide[:, ::2] = hidden  # column stride 2: rows not contiguous
    check_against_oracles(backend, wide[:, ::2], cu.int(), prefix.int())


@pytest.mark.parametrize("backend_name", ["cpp"])
def test_cpp_result_does_not_depend_on_thread_count(backend_name):
    hidden, cu, prefix = make_pack([700, 300, 1], [100, 0, 0], 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = rlsignals.angle_stats(hidden, cu, prefix, backend=backend_name)
        torch.set_num_threads(max(2, threads))
        many = rlsignals.angle_stats(hidden, cu, prefix, backend=backend_name)
    finally:
        torch.set_num_threads(threads)
    assert_close(one.intra, many.intra, atol=0, rtol=0, equal_nan=True)
    assert_close(one.inter, many.inter, atol=0, rtol=0, equal_nan=True)


pack_shapes = st.lists(st.integers(0, 24), min_size=0, max_size=8).flatmap(
    lambda lens: st.tuples(st.just(lens), st.tuples(*[st.integers(0, n) for n in lens]))
)


@settings(max_examples=40, deadline=None)
@given(shape=pack_shapes, d=st.integers(1, 48), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), variant=st.sampled_from(VARIANTS))
@pytest.mark.parametrize("backend_name", ["torch", "cpp", "triton"])
def test_random_packs_property(backend_name, shape, d, seed, dtype, variant):
    seq_lens, prefix_lens = shape
    hidden, cu, prefix = make_pack(seq_lens, list(prefix_lens), d, dtype=dtype, seed=seed,
                                   device=backend_device(backend_name))
    check_against_oracles(backend_name, hidden, cu, prefix, **variant)
