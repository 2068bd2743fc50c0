"""delta_svd (torch products) against fp64 torch.linalg.svd on planted spectra.

Every test checks the one promise that matters most: err_bound is never below the true
error max_i |S_i - sigma_i| / sigma_1 (and certified only where it meets tol). The
compiled product backends are compared with the torch products in test_delta_products.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers.devices import backend_device
from helpers.planted import exact_delta, gap_spectrum, planted_delta, spiked_bulk, true_errors, weight_pair
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import rlsignals
from rlsignals.ops.reference import delta_svd_reference

TOL = 1e-4
SHAPES = [(40, 72), (72, 40)]  # m < n and m > n


def solve(after, before=None, k=1, **kw):
    kw.setdefault("backend", "torch")
    return rlsignals.delta_svd(after, before, k, **kw)


def assert_honest(out, after, before, k, tol=TOL):
    err = true_errors(out, after, before, k)
    assert bool((err <= out.err_bound.double()).all()), f"true error {err} above err_bound {out.err_bound}"
    assert torch.equal(out.certified, out.err_bound <= tol)
    return err


def sin_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() / a.double().norm(), b.double() / b.double().norm()
    return float((a - (a @ b) * b).norm())


def davis_kahan(delta: torch.Tensor, v: torch.Tensor, s: float, sigma2: float) -> float:
    """sin(v, v_1) <= ||G v - s^2 v|| / (s^2 - sigma_2^2) for a unit v with s^2 > sigma_2^2."""
    v = v.double() / v.double().norm()
    resid = delta.T @ (delta @ v) - s * s * v
    return float(resid.norm()) / (s * s - sigma2 * sigma2)


@pytest.mark.parametrize("ratio", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_planted_gap_converges_to_tol(ratio, dtype, shape):
    delta = planted_delta(*shape, gap_spectrum(ratio, length=30, decay=0.85), noise=0.05, seed=7)
    after, before = weight_pair(delta, dtype)
    out = solve(after, before, k=2, tol=TOL)
    err = assert_honest(out, after, before, 2)
    assert out.err_estimate <= TOL and err <= TOL
    assert out.S.dtype == out.U.dtype == out.V.dtype == torch.float32
    exact = exact_delta(after, before)
    u, s, vh = torch.linalg.svd(exact)
    assert_close(out.frob.double(), torch.linalg.matrix_norm(exact), rtol=1e-6, atol=0)
    for got, want in ((out.U[:, 0], u[:, 0]), (out.V[:, 0], vh[0])):
        assert sin_angle(got, want) <= (1e-5 if ratio <= 0.5 else 1e-4)
    assert sin_angle(out.V[:, 0], vh[0]) <= davis_kahan(exact, out.V[:, 0], float(s[0]), float(s[1])) + 1e-6


@settings(max_examples=40, deadline=None)
@given(m=st.integers(8, 90), n=st.integers(8, 90), ratio=st.sampled_from([0.5, 0.9, 0.99, 0.999]),
       decay=st.floats(0.3, 0.97), noise=st.sampled_from([0.0, 0.01, 0.1, 1.0]), k=st.integers(1, 4),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), max_iters=st.integers(1, 20),
       seed=st.integers(0, 2 ** 16))
def test_bound_is_honest_on_random_spectra(m, n, ratio, decay, noise, k, dtype, max_iters, seed):
    """Random shapes, gaps, tails, noise levels, dtypes, k and pass caps: never below the true error."""
    k = min(k, m, n)
    sigmas = gap_spectrum(ratio, length=min(m, n), decay=decay)
    after, before = weight_pair(planted_delta(m, n, sigmas, noise=noise, seed=seed), dtype, seed=seed)
    out = solve(after, before, k=k, max_iters=max_iters)
    assert_honest(out, after, before, k)
    assert out.iters <= max_iters


@pytest.mark.parametrize("ratio, passes", [(3.0, 6), (1.5, 8), (1.2, 12)])
def test_spiked_bulk_converges_by_estimate_in_few_passes(ratio, passes):
    """A spike over a Gaussian bulk: the certificate cannot close (the bulk holds most of
    ||dW||_F^2), but the residual/gap test stops the Krylov iteration early with sigma_1, u_1
    and v_1 to tol; the estimate is not below the true error and err_bound stays honest."""
    delta = spiked_bulk(600, 500, ratio, seed=int(10 * ratio))
    after, before = weight_pair(delta, torch.float32)
    out = solve(after, before)
    err = assert_honest(out, after, before, 1)
    assert out.iters <= passes, out.iters
    assert err <= TOL and out.err_estimate <= TOL and not out.certified
    assert out.err_estimate >= err / 10
    exact = exact_delta(after, before)
    u, s, vh = torch.linalg.svd(exact)
    assert float(s[0] / s[1]) == pytest.approx(ratio, rel=0.1)
    assert sin_angle(out.V[:, 0], vh[0]) <= TOL and sin_angle(out.U[:, 0], u[:, 0]) <= TOL


def test_values_only_stops_sooner_with_sigma_to_tol():
    """vector_tol=inf stops on the value estimate alone: on a spike 1.2x the bulk's edge that
    takes fewer passes than the default (vectors to tol too), sigma_1 still meets tol with the
    estimate not below the true error, the bound stays honest, and the vectors are only what
    those passes give (not to tol)."""
    after, before = weight_pair(spiked_bulk(600, 500, 1.2, seed=12), torch.float32)
    full = solve(after, before)
    values = solve(after, before, vector_tol=math.inf)
    err = assert_honest(values, after, before, 1)
    assert values.iters < full.iters, (values.iters, full.iters)
    assert err <= TOL and err / 10 <= values.err_estimate <= TOL
    _, _, vh = torch.linalg.svd(exact_delta(after, before))
    assert sin_angle(values.V[:, 0], vh[0]) > TOL >= sin_angle(full.V[:, 0], vh[0])


def test_vector_estimate_is_residual_over_ritz_gap():
    """estimates.vector = max_i r_i / delta_i (delta_i: distance to the nearest other Ritz
    value), 0 for a zero residual; for a unit v with G v - theta v = r it bounds sin(v, v_1)
    whenever delta_1 is at most the true gap (Davis-Kahan)."""
    from rlsignals.ops.svd_estimate import ritz_estimates

    theta = torch.tensor([[4.0, 3.0, 1.0], [4.0, 3.0, 1.0]], dtype=torch.float64)
    resid = torch.tensor([[0.01, 0.002], [0.0, 0.0]], dtype=torch.float64)
    est = ritz_estimates(theta, resid, 2)
    assert_close(est.vector, torch.tensor([0.01, 0.0], dtype=torch.float64))
    assert_close(est.resid, torch.tensor([0.0025, 0.0], dtype=torch.float64))
    g = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    v = torch.tensor([math.cos(0.01), math.sin(0.01)], dtype=torch.float64)
    theta1 = float(v @ g @ v)
    r = float((g @ v - theta1 * v).norm())
    f64 = dict(dtype=torch.float64)
    one = ritz_estimates(torch.tensor([[theta1, 1.0]], **f64), torch.tensor([[r]], **f64), 1)
    assert float(one.vector) == pytest.approx(math.tan(0.01), rel=1e-9)  # r / (theta_1 - 1) = tan >= sin


@pytest.mark.parametrize("ratio", [3.0, 1.5, 1.2, 1.02, 1.005])
def test_vectors_flagged_undetermined_exactly_where_the_top_is_not_separated(backend, ratio):
    """A spike over a bulk: where sigma_1 / sigma_2 stands clear the vectors meet tol (sin u_1,
    sin v_1 <= tol, not flagged); where it is near 1 they cannot (the Ritz gap is too small
    for fp32 passes), so the member stops on sigma_1, to tol all the same, in the passes of
    a values-only run, and flags its vectors, whose measured angle is then above tol, with an
    estimate above tol. The flag is true exactly where sin(u_1) > tol."""
    after, before = weight_pair(spiked_bulk(320, 256, ratio, seed=int(100 * ratio)), torch.float32)
    device = backend_device(backend)
    out = rlsignals.delta_svd(after.to(device), before.to(device), backend=backend)
    out = type(out)(*(t.cpu() for t in out))
    err = assert_honest(out, after, before, 1)
    u, s, vh = torch.linalg.svd(exact_delta(after, before))
    sin_u, sin_v = sin_angle(out.U[:, 0], u[:, 0]), sin_angle(out.V[:, 0], vh[0])
    assert err <= TOL and out.err_estimate <= TOL
    assert bool(out.vectors_undetermined) == (sin_u > TOL)
    if ratio >= 1.2:
        assert not out.vectors_undetermined and out.vector_estimate <= TOL and sin_v <= TOL
    else:
        assert out.vectors_undetermined and out.vector_estimate > TOL and sin_v > TOL
        values_only = rlsignals.delta_svd(after.to(device), before.to(device), backend=backend,
                                          vector_tol=math.inf)
        assert out.iters == values_only.iters and not values_only.vectors_undetermined


def test_two_equal_top_values_are_flagged_and_their_sigma_met():
    """sigma_1 = sigma_2 exactly (over a bulk): u_1 is any unit vector of a plane, the flag is
    set, the estimate of the vectors' angle is large, and sigma_1 is met to tol; a batch
    mate with a clear top is unaffected."""
    flat = planted_delta(300, 260, [1.0, 1.0], noise=0.5, seed=6)
    clear = planted_delta(300, 260, [1.0, 0.5], noise=0.5, seed=7)
    after, before = weight_pair(torch.stack([flat, clear]), torch.float32)
    out = solve(after, before)
    err = assert_honest(out, after, before, 1)
    assert (err <= TOL).all() and (out.err_estimate <= TOL).all()
    assert out.vectors_undetermined.tolist() == [True, False]
    assert out.vector_estimate[0] > TOL >= out.vector_estimate[1]


def test_single_vector_blocks_converge():
    """oversample=0, k=1: blocks of one column (single-vector Lanczos). The first pass has one
    Ritz value and no gap to refine with, so it must not stop there."""
    delta = spiked_bulk(300, 260, 3.0, seed=4)
    after, before = weight_pair(delta, torch.float32)
    out = solve(after, before, oversample=0)
    err = assert_honest(out, after, before, 1)
    assert out.iters > 1 and err <= TOL and out.err_estimate <= TOL
    _, _, vh = torch.linalg.svd(exact_delta(after, before))
    assert sin_angle(out.V[:, 0], vh[0]) <= TOL
    one = solve(after, before, oversample=0, max_iters=1)
    assert one.err_estimate > TOL


def test_block_shrinks_once_the_top_stands_clear(monkeypatch):
    """After WIDE_PASSES passes of the default block, a spike well above its bulk (theta_2 <=
    SHRINK_GAP theta_1) is iterated with blocks of k columns and still meets tol in value and
    vector; two clustered values (sigma_2 = 0.99 sigma_1) keep the wide block throughout."""
    from rlsignals.ops.svd import WIDE_PASSES, default_block_size

    widths = record_pass_widths(monkeypatch)
    after, before = weight_pair(spiked_bulk(300, 260, 3.0, seed=5), torch.float32)
    out = solve(after, before)
    p = default_block_size(1, 260, None)
    assert len(widths) > WIDE_PASSES + 1, widths
    assert [w for _, w in widths] == [p] * WIDE_PASSES + [1] * (len(widths) - WIDE_PASSES), widths
    err = assert_honest(out, after, before, 1)
    assert err <= TOL and out.err_estimate <= TOL
    _, _, vh = torch.linalg.svd(exact_delta(after, before))
    assert sin_angle(out.V[:, 0], vh[0]) <= TOL
    widths.clear()
    after, before = weight_pair(planted_delta(300, 260, [1.0, 0.99], noise=0.8, seed=2), torch.float32)
    solve(after, before, max_iters=8)
    assert all(w == p for _, w in widths), widths


def test_pass_cap_is_honest_not_converged():
    """sigma_2/sigma_1 = 0.99 over a bulk, two passes allowed: the solver stops at the cap,
    says it has not converged (estimate above tol) and the bound stays honest."""
    delta = planted_delta(300, 260, [1.0, 0.99], noise=0.8, seed=2)
    after, before = weight_pair(delta, torch.float32)
    out = solve(after, before, max_iters=2)
    err = assert_honest(out, after, before, 1)
    assert out.iters == 2 and out.err_estimate > TOL and not out.certified
    assert out.err_estimate >= err


def test_restarted_basis_stays_honest(monkeypatch):
    """Flat noise on 1000 x 800 needs many passes; with the basis capped at 32 columns it
    restarts from its top Ritz vectors (no pass lost), still converges, and the answer and
    bound stay honest."""
    import rlsignals.ops.svd as svd_module
    from rlsignals.ops.svd_krylov import Krylov

    widths = []
    restart = Krylov.restart
    monkeypatch.setattr(Krylov, "restart", lambda self, coef: (widths.append(self.width), restart(self, coef)))
    monkeypatch.setattr(svd_module, "MAX_BASIS_COLUMNS", 32)
    monkeypatch.setattr(svd_module, "KEEP_COLUMNS", 12)
    after, before = weight_pair(planted_delta(1000, 800, [], noise=1.0, seed=5), torch.float32)
    out = solve(after, before, max_iters=40)
    err = assert_honest(out, after, before, 1)
    assert widths and max(widths) <= 32, widths
    assert out.iters < 40 and err <= TOL and out.err_estimate <= TOL and not out.certified


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flat_noise_is_honest(dtype):
    after, before = weight_pair(planted_delta(50, 30, [], noise=1.0, seed=4), dtype)
    out = solve(after, before, k=3, max_iters=10)
    assert_honest(out, after, before, 3)
    assert out.err_bound > TOL and not out.certified
    assert_close(out.frob.double(), torch.linalg.matrix_norm(exact_delta(after, before)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_exact_rank_one(dtype, shape):
    """Small-integer u, v: u v^T is exact in every dtype, so dW has rank exactly 1. sigma_1
    certifies at once; sigma_2 = 0 is met to tol (S_2 <= tol S_1: what the estimate promises;
    S_2 is then at the rounding level of the fp32 products, or below it after the fp64 pass),
    but certifying it would need v_1 beyond fp32 accuracy, so the k = 2 bound stays above tol."""
    gen = torch.Generator().manual_seed(5)
    u = torch.randint(-3, 4, (shape[0],), generator=gen).double()
    v = torch.randint(-3, 4, (shape[1],), generator=gen).double()
    u[0], v[0] = 4, 4  # a unique largest entry, positive: fixes the expected sign
    delta = torch.outer(u, v)
    one = solve(delta.to(dtype), k=1)
    assert_honest(one, delta.to(dtype), None, 1)
    assert one.certified and one.iters <= 3
    out = solve(delta.to(dtype), k=2)
    assert_honest(out, delta.to(dtype), None, 2)
    assert out.err_estimate <= TOL and out.iters <= 4
    assert out.S[0].item() == pytest.approx(float(u.norm() * v.norm()), rel=1e-6)
    assert out.S[1].item() <= TOL * out.S[0].item()
    assert_close(out.U[:, 0].double(), u / u.norm(), atol=1e-6, rtol=0)
    assert_close(out.V[:, 0].double(), v / v.norm(), atol=1e-6, rtol=0)


def test_zero_delta():
    after = torch.randn(30, 20).to(torch.bfloat16)
    out = solve(after, after.clone(), k=2)
    assert torch.equal(out.S, torch.zeros(2)) and out.frob == 0 and out.err_bound == 0 and out.err_estimate == 0
    assert out.certified
    assert torch.equal(out.U, torch.zeros(30, 2))
    assert_close(torch.linalg.vector_norm(out.V, dim=0), torch.ones(2))
    assert out.iters <= 2 and not out.nonfinite


def test_matches_reference_with_sign_convention():
    delta = planted_delta(60, 44, gap_spectrum(0.5, length=20, decay=0.7), noise=0.01, seed=11)
    after, before = weight_pair(delta, torch.float32)
    out = solve(after, before, k=3, tol=1e-6)
    ref = delta_svd_reference(after, before, k=3)
    assert out.err_bound <= 1e-6 and out.certified
    assert_close(out.S.double(), ref.S, rtol=1e-6, atol=0)
    assert_close(out.U.double(), ref.U, atol=1e-4, rtol=0)
    assert_close(out.V.double(), ref.V, atol=1e-4, rtol=0)
    idx = out.U.abs().argmax(0)
    assert bool((out.U[idx, torch.arange(3)] > 0).all())
    assert_close(out.U.double().mT @ exact_delta(after, before) @ out.V.double(), torch.diag(ref.S),
                 atol=1e-5, rtol=0)


def test_tighter_tol_takes_more_iterations_and_is_met():
    """A 40-value spectrum certifies at 1e-7 with blocks of 8 (with the default 4 for k = 1
    the estimate meets 1e-7 and the bound stays at 4e-4: too few Ritz vectors converge)."""
    delta = planted_delta(64, 48, gap_spectrum(0.9, length=40, decay=0.9), noise=0.1, seed=3)
    after, before = weight_pair(delta, torch.float32)
    loose, tight = solve(after, before, tol=1e-2, oversample=7), solve(after, before, tol=1e-7, oversample=7)
    assert loose.err_estimate <= 1e-2 and tight.err_bound <= 1e-7 and tight.certified
    assert loose.iters < tight.iters
    assert_honest(loose, after, before, 1, tol=1e-2)
    assert_honest(tight, after, before, 1, tol=1e-7)


def test_batch_mixes_easy_and_hard_members_independently():
    shape = (48, 40)
    easy = planted_delta(*shape, [3.0], seed=1)
    hard = planted_delta(*shape, gap_spectrum(0.99, length=40, decay=0.9), noise=0.1, seed=2)
    noise = planted_delta(*shape, [], noise=1.0, seed=3)
    after = torch.stack([easy, hard, noise]).float()
    out = solve(after, k=1, max_iters=30)
    assert_honest(out, after, None, 1)
    assert out.certified[0] and not out.certified[2] and out.iters[0] < out.iters[1]
    # a member's result does not depend on the other members of its batch
    swapped = solve(torch.stack([noise, hard, easy]).float(), k=1, max_iters=30)
    assert torch.equal(swapped.S[1], out.S[1]) and torch.equal(swapped.V[1], out.V[1])
    assert swapped.iters[1] == out.iters[1]


def test_warm_start_cuts_iterations():
    """W1 tracked from W0's subspace: init=basis of W0's result converges in a fraction of the passes."""
    d0 = spiked_bulk(400, 300, 1.5, seed=8)
    d1 = d0 + planted_delta(400, 300, [], noise=0.02, seed=9)
    w0 = torch.randn(400, 300, generator=torch.Generator().manual_seed(1)).double()
    before, step0, step1 = w0.float(), (w0 + d0).float(), (w0 + d1).float()
    first = solve(step0, before)
    cold = solve(step1, before)
    warm = solve(step1, before, init=first.basis)
    for out in (cold, warm):
        assert assert_honest(out, step1, before, 1) <= TOL and out.err_estimate <= TOL
    assert warm.iters <= 3 and 2 * warm.iters <= cold.iters, (warm.iters, cold.iters)
    from_v = solve(step1, before, init=first.V)  # V alone is a valid start too
    assert from_v.err_estimate <= TOL and from_v.iters < cold.iters
    assert_close(from_v.S, warm.S, rtol=2 * TOL, atol=0)


def record_pass_widths(monkeypatch) -> list[tuple[torch.dtype, int]]:
    """(dtype, columns) of every fused pass delta_svd runs from now on."""
    import rlsignals.ops.svd_rows as rows_module

    widths = []
    product = rows_module.delta_products

    def recording(after, before, x, members, backend):
        widths.append((x.dtype, x.shape[2]))
        return product(after, before, x, members, backend)

    monkeypatch.setattr(rows_module, "delta_products", recording)
    return widths


def test_fp64_pass_runs_only_where_it_certifies(monkeypatch):
    """A clear low-rank delta certifies with a narrow fp64 pass (CERTIFICATE_WIDTHS[0] columns)
    after fp32 passes of the default block (4 columns for k = 1); a spike over a bulk, where no
    certificate can close, runs no fp64 pass at all: its answer rests on the estimate."""
    from rlsignals.ops.svd import CERTIFICATE_WIDTHS

    widths = record_pass_widths(monkeypatch)
    easy = planted_delta(80, 96, gap_spectrum(0.5, length=20, decay=0.7), noise=0.01, seed=4)
    after, before = weight_pair(easy, torch.float32)
    out = solve(after, before)
    assert out.certified and widths[-1] == (torch.float64, CERTIFICATE_WIDTHS[0]), widths
    assert all(w == (torch.float32, 4) for w in widths[:-1]), widths
    assert_honest(out, after, before, 1)
    assert out.basis.shape == (96, 4)
    widths.clear()
    after, before = weight_pair(spiked_bulk(300, 260, 1.5, seed=3), torch.float32)
    out = solve(after, before)
    assert out.err_estimate <= TOL and not out.certified
    assert all(dtype == torch.float32 for dtype, _ in widths), widths


def test_deterministic_per_seed():
    delta = planted_delta(50, 70, gap_spectrum(0.9, length=30, decay=0.85), noise=0.1, seed=6)
    after, before = weight_pair(delta, torch.bfloat16)
    a, b = solve(after, before, k=2, seed=3), solve(after, before, k=2, seed=3)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    c = solve(after, before, k=2, seed=4)
    assert not torch.equal(a.V, c.V)
    assert_close(a.S, c.S, rtol=2 * TOL, atol=0)


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
def test_non_finite_member_is_isolated(bad_value):
    deltas = [planted_delta(30, 26, gap_spectrum(0.5), noise=0.05, seed=s) for s in range(3)]
    after = torch.stack(deltas).float()
    clean = solve(after, k=2)
    poisoned = after.clone()
    poisoned[1, 4, 7] = bad_value
    out = solve(poisoned, k=2)
    assert out.nonfinite.tolist() == [False, True, False]
    for field in ("S", "U", "V", "frob", "err_bound", "err_estimate", "basis"):
        got, want = getattr(out, field), getattr(clean, field)
        assert torch.isnan(got[1]).all()
        assert torch.equal(got[[0, 2]], want[[0, 2]])


def test_extreme_scales_stay_per_member():
    """Each member is scaled before the small-matrix algebra: sigma_1 ~ 1e10 solves like
    sigma_1 ~ 1, and a member whose products would overflow fp32 (sigma_1 ~ 1e30) is solved on
    a copy scaled by a power of two, its bound honest; the others are unaffected."""
    base = planted_delta(40, 30, gap_spectrum(0.5), noise=0.05, seed=1)
    stack = torch.stack([base, 1e10 * base, 1e30 * base]).float()
    out = solve(stack, k=2)
    assert not out.nonfinite.any() and out.certified.all()
    for b, scale in ((1, 1e10), (2, 1e30)):
        assert_close(out.S[b].double() / scale, out.S[0].double(), rtol=1e-5, atol=0)
        assert_close(out.V[b], out.V[0], atol=1e-5, rtol=0)
    for b in range(3):
        assert_honest(DeltaSVDMember(out, b), stack[b], None, 2)
    alone = solve(stack[:1], k=2)
    assert torch.equal(alone.S[0], out.S[0]) and torch.equal(alone.V[0], out.V[0])


# every scale an update can have: fp32's smallest subnormal, its smallest normal, then decades
SCALES = [2.0 ** -149, 2.0 ** -140, 2.0 ** -126] + [10.0 ** e for e in range(-38, 31, 2)] + [1e36]


def scaled_pairs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """[len(SCALES) + 1, 64, 16] (after, before): weights of each scale s, an update of s / 10
    (rank one plus 30% noise), and a last member whose update is zero."""
    afters, befores = [], []
    for i, s in enumerate(SCALES):
        gen = torch.Generator().manual_seed(i)
        before = torch.randn(64, 16, generator=gen, dtype=torch.float64) * s
        spike = torch.outer(torch.randn(64, generator=gen, dtype=torch.float64),
                            torch.randn(16, generator=gen, dtype=torch.float64))
        update = (spike + 0.3 * torch.randn(64, 16, generator=gen, dtype=torch.float64)) * (s / 10)
        afters.append((before + update).to(dtype))
        befores.append(before.to(dtype))
    afters.append(befores[5].clone())
    befores.append(befores[5].clone())
    return torch.stack(afters), torch.stack(befores)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the 1e36 member's first pass
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_scale_is_solved_or_flagged_never_certified_wrongly(backend, dtype):
    """Updates from fp32's smallest subnormal to 1e36 (squares far outside fp32's range):
    err_bound is never below the true error, a certified member meets tol, zero updates are
    exact, and every update of a normal scale is solved to tol, on every backend."""
    after, before = scaled_pairs(dtype)
    device = backend_device(backend)
    out = rlsignals.delta_svd(after.to(device), before.to(device), backend=backend)
    out = type(out)(*(t.cpu() for t in out))
    exact = torch.linalg.svdvals(exact_delta(after, before))[:, 0]
    assert not out.nonfinite.any()
    zero = exact == 0
    assert zero[-1] and (out.S[zero] == 0).all() and (out.err_bound[zero] == 0).all() and out.certified[zero].all()
    err = (out.S[~zero, 0].double() - exact[~zero]).abs() / exact[~zero]
    assert bool((err <= out.err_bound[~zero].double()).all()), (err, out.err_bound[~zero])
    assert bool((err[out.certified[~zero]] <= TOL).all())
    normal = (exact > 1e-30) & ~zero  # S far inside fp32's normal range
    assert out.certified[normal].all() and (out.err_estimate[normal] <= TOL).all()
    assert_close(out.frob[normal].double(), torch.linalg.matrix_norm(exact_delta(after, before))[normal],
                 rtol=1e-5, atol=0)


def test_an_update_far_below_the_weights_scale_is_not_taken_for_zero():
    """The reported case: weights of 1e-25 and an update of 1e-26, whose squares underflow fp32."""
    gen = torch.Generator().manual_seed(0)
    before = torch.randn(64, 16, generator=gen) * 1e-25
    after = before + torch.outer(torch.randn(64, generator=gen), torch.randn(16, generator=gen)) * 1e-26
    out = solve(after, before)
    sigma = float(torch.linalg.svdvals(exact_delta(after, before))[0])
    assert out.S[0].item() == pytest.approx(sigma, rel=TOL) and out.frob > 0 and out.certified
    assert_honest(out, after, before, 1)


def DeltaSVDMember(out, b):  # noqa: N802 - reads like the result type it stands for
    return type(out)(*(t[b] for t in out))


def test_unbatched_and_batched_shapes():
    after = torch.randn(3, 12, 9)
    batched = solve(after, k=2)
    assert batched.S.shape == (3, 2) and batched.U.shape == (3, 12, 2) and batched.V.shape == (3, 9, 2)
    assert batched.frob.shape == batched.err_bound.shape == batched.iters.shape == batched.nonfinite.shape == (3,)
    assert batched.err_estimate.shape == batched.certified.shape == (3,) and batched.certified.dtype == torch.bool
    assert batched.basis.shape == (3, 9, 8)  # p = min(8, n) for k = 2
    single = solve(after[0], k=2)
    assert single.S.shape == (2,) and single.U.shape == (12, 2) and single.V.shape == (9, 2)
    assert single.frob.shape == single.iters.shape == ()
    for x, y in zip(single, batched):
        assert torch.equal(x, y[0])


def test_empty_batch():
    out = solve(torch.zeros(0, 5, 4), k=2)
    assert out.S.shape == (0, 2) and out.U.shape == (0, 5, 2) and out.V.shape == (0, 4, 2)
    assert out.iters.shape == (0,)


def test_strided_input_equals_contiguous():
    base = torch.randn(2, 20, 30)
    view = base.transpose(1, 2)  # [2, 30, 20], column-major rows
    assert_close(solve(view, k=2).S, solve(view.contiguous(), k=2).S, rtol=0, atol=0)


def test_max_iters_one_is_certified():
    delta = planted_delta(30, 40, gap_spectrum(0.5), noise=0.01, seed=1)
    out = solve(delta.float(), max_iters=1)
    assert out.iters == 1
    assert_honest(out, delta.float(), None, 1)


def test_block_wider_than_kernel_limit():
    delta = planted_delta(60, 50, gap_spectrum(0.9, length=40, decay=0.9), seed=2)
    out = solve(delta.float(), k=3, oversample=37)
    assert out.err_bound <= TOL
    assert_honest(out, delta.float(), None, 3)


BAD_INPUTS = [
    (dict(after=[[1.0]]), TypeError, "after must be a torch.Tensor"),
    (dict(after=torch.zeros(3)), ValueError, r"after must be \[m, n\] or \[B, m, n\]"),
    (dict(after=torch.zeros(3, 4, dtype=torch.float64)), TypeError, "after must be float32"),
    (dict(before=torch.zeros(3, 5)), ValueError, "before must have after's shape"),
    (dict(before=torch.zeros(3, 4, dtype=torch.bfloat16)), TypeError, "before must have after's dtype"),
    (dict(k=4), ValueError, r"k must be <= min\(m, n\) = 3"),
    (dict(k=0), ValueError, "k must be >= 1"),
    (dict(k=1.5), TypeError, "k must be an int"),
    (dict(tol=0.0), ValueError, "tol must be a finite number > 0"),
    (dict(tol=math.nan), ValueError, "tol must be a finite number > 0"),
    (dict(vector_tol=0.0), ValueError, "vector_tol must be a number > 0"),
    (dict(vector_tol=math.nan), ValueError, "vector_tol must be a number > 0"),
    (dict(vector_tol="1e-4"), ValueError, "vector_tol must be a number > 0"),
    (dict(max_iters=0), ValueError, "max_iters must be >= 1"),
    (dict(oversample=-1), ValueError, "oversample must be >= 0"),
    (dict(seed=-2), ValueError, "seed must be >= 0"),
    (dict(init=torch.zeros(5, 1)), ValueError, r"init must be \[n, c\] with n = 4 and c >= 1"),
    (dict(init=torch.full((4, 2), math.nan)), ValueError, "init must be finite"),
    (dict(init=torch.zeros(4, 2, dtype=torch.int64)), TypeError, "init must be a floating-point"),
    (dict(backend="gpu"), ValueError, "backend must be 'auto' or one of"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_INPUTS)
def test_bad_inputs_raise(kwargs, error, match):
    args = dict(after=torch.zeros(3, 4), before=None, k=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        rlsignals.delta_svd(args.pop("after"), args.pop("before"), args.pop("k"), **args)


def test_batched_init_shape_is_checked():
    with pytest.raises(ValueError, match=r"init must be \[B, n, c\] with B = 2"):
        rlsignals.delta_svd(torch.zeros(2, 3, 4), init=torch.zeros(3, 4, 1))


SHARDED_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    import rlsignals

    def work(rank, path, world):
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=world)
        after, before = torch.load(path)
        rows = after.shape[1] // world
        part = slice(rank * rows, (rank + 1) * rows if rank < world - 1 else None)
        out = rlsignals.delta_svd(after[:, part], before[:, part], 2, backend="torch",
                                  process_group=dist.group.WORLD)
        torch.save(out._asdict(), path + f".rank{rank}")
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(work, args=(sys.argv[1], 2), nprocs=2)
""")


def test_sharded_rows_over_two_gloo_ranks_equal_one_process(tmp_path):
    """Each rank passes its slab of rows; Z and frob2 are all-reduced per pass, so both ranks
    get the single-process S, V and err fields (to fp32 reduction order) and their slab of U,
    also for an update too small for fp32 passes (solved scaled, the scale agreed by the ranks)."""
    import socket

    deltas = [spiked_bulk(90, 70, 2.0, seed=1), planted_delta(90, 70, gap_spectrum(0.5), noise=0.05, seed=2)]
    after, before = weight_pair(torch.stack(deltas), torch.float32)
    tiny = 1e-25 * torch.randn(1, 90, 70, generator=torch.Generator().manual_seed(3))
    after = torch.cat([after, tiny + 1e-26 * planted_delta(90, 70, gap_spectrum(0.5), seed=4).float()[None]])
    before = torch.cat([before, tiny])
    torch.save((after, before), tmp_path / "pair.pt")
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([sys.executable, str(script), str(tmp_path / "pair.pt"), str(port)], check=True, timeout=300)
    whole = solve(after, before, k=2)
    assert whole.certified[2] and whole.S[2, 0] > 0
    ranks = [torch.load(tmp_path / f"pair.pt.rank{r}") for r in range(2)]
    for got in ranks:
        assert_close(got["S"], whole.S, rtol=1e-5, atol=0)
        assert_close(got["V"], whole.V, atol=1e-4, rtol=0)
        assert torch.equal(got["certified"], whole.certified) and torch.equal(got["iters"], whole.iters)
    assert torch.equal(ranks[0]["S"], ranks[1]["S"]) and torch.equal(ranks[0]["V"], ranks[1]["V"])
    assert_close(torch.cat([ranks[0]["U"], ranks[1]["U"]], 1), whole.U, atol=1e-4, rtol=0)


def test_process_group_needs_initialized_distributed():
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(ValueError, match="process_group was given but torch.distributed is not initialized"):
        rlsignals.delta_svd(torch.zeros(3, 4), process_group=object())
