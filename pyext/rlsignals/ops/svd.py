"""delta_svd: top-k singular triplets of dW = after - before, with an error estimate and a
certified error bound.

Algorithm (per batch member, all members advanced together; a member that has converged
leaves the batch):

    X_0 = orthonormal basis of [init | Gaussian columns]            [n, p], p = k + oversample
    repeat (one pass over after/before each, fp32 accumulation; after the first, a member whose
    ||dW||_F^2 lies outside the range where fp32 passes are safe is set aside: it is exactly
    zero, or solved afterwards as 2^e dW on a scaled copy, ops/svd_scale.py):
        Y, Z = dW P, dW^T (dW P)            fused product of the pending block P (ops/delta_products.py)
        append P, Y, Z to the block Krylov basis (ops/svd_krylov.py); Rayleigh-Ritz on it
        residuals r_i = ||G v_i - theta_i v_i|| of the top k Ritz pairs -> err_estimate
        stop when err_estimate <= tol and max_i r_i / delta_i <= vector_tol (delta_i the gap from
            theta_i to the nearest other Ritz value: the residual test of ARPACK/PROPACK
            scaled by the gap, so that the vectors meet vector_tol, sin(v_i, true) <~ r_i / delta_i,
            ops/svd_estimate.py), or when max_i r_i <= STALL * theta_1 (fp32 can resolve no
            more), or when err_estimate <= tol and an fp64 pass is predicted to certify
            (concentrated spectra: that pass also refines the vectors), or when err_estimate <= tol
            and min_i delta_i < theta_1 STALL / vector_tol: the top is not separated, the vectors
            cannot reach vector_tol before fp32 runs out of resolution (their angle is about
            r_i / delta_i), so the member stops on its values and says so (vectors_undetermined,
            with the vectors' own estimate)
        P <- the new directions of Z (full reorthogonalisation): block Lanczos; after the first
            WIDE_PASSES passes, once every member's top k Ritz values stand clear of the next
            (theta_{k+1} <= SHRINK_GAP theta_k), the new directions of G V_k alone (the top k
            Ritz vectors' images: a block of k columns, at 2k instead of 2p multiply-adds per
            element); restart from the top Ritz vectors when the basis would exceed
            MAX_BASIS_COLUMNS columns
    then, per stopped member, the certificate (ops/svd_certify.py, ops/svd_bound.py) from the
    fp32 data already at hand; only when that does not meet tol but its fp64 prediction does,
    or the estimate has stalled above tol (and a pass is left), one more pass in fp64 on G V
    (V the top 8 or 16 Ritz vectors: one more block power step) certifies and refines.

The small-matrix algebra runs in fp64 on Z / ||dW||_F^2 (each member scaled by its own
frob2), so no factorisation over- or underflows whatever the scale of dW.

What the fields promise (all relative to sigma_1; for k = 1 the relative error of sigma_1):
- err_bound: deterministic. max_i |S_i - sigma_i| / sigma_1 <= err_bound for the exact dW of
  the inputs, every rounding of the passes counted. Tight (quadratic in the residual) when the
  top Ritz values hold nearly all of ||dW||_F^2; loose (often > 1) on dense spectra, where no
  certificate from a trace and residuals can be tight (ops/svd_bound.py).
- certified: err_bound <= tol.
- err_estimate: the a-posteriori estimate (ops/svd_estimate.py): residuals refined by the gap
  to the next Ritz value, as ARPACK/PROPACK report. Not a bound. It can be optimistic if
  the Krylov space has missed the top singular direction (a start nearly orthogonal to it), if
  a cluster hides behind a Ritz value, or, once the block has shrunk, while theta_{k+1} still
  lies well below lambda_{k+1} (it is then refined only through the top vectors' images, so
  the gap is overstated; bench/delta_svd.py records the estimate over the true error per case).
  A gap-free statement from the random start: Kuczynski
  and Wozniakowski (1992, SIAM J. Matrix Anal. Appl. 13, Thm 4.2) bound, for Lanczos from a
  uniformly random start on a symmetric PSD n x n matrix after j steps,
      P(theta_1 < (1 - eps) lambda_1) <= 1.648 sqrt(n) exp(-sqrt(eps) (2 j - 1)).
  The first column of a cold start is such a start and, while the block stays wide, the basis
  after j passes contains its j-dimensional Krylov space (before any restart), so with eps ~ 2 x
  the relative error of S_1: at n = 4096 and 12 passes, S_1 is within 10% of sigma_1 except
  with probability <= 0.5%, whatever the spectrum. The block stays wide exactly where such a
  statement matters: while theta_2 > SHRINK_GAP theta_1 (k = 1), i.e. on clustered or flat
  tops. Once it shrinks, the statement covers only the passes before, and the gap-dependent
  rate (Chebyshev in sqrt(gap), svd_krylov.py) carries the rest; that rate is what makes the
  iteration fast, and it holds for every start with a non-negligible component along v_1: a
  Gaussian start has |cos(x, v_1)| < d / sqrt(n) with probability about d sqrt(2/pi) or less.
- V, U: a member that stops on the estimate has max_i r_i / delta_i <= vector_tol (default
  tol), the estimated sine of the angle of each v_i to the true one (Davis-Kahan with the Ritz
  gap; u_i = dW v_i / S_i is closer still, its bulk components scaled by sigma_j / sigma_1).
  Same caveats as err_estimate. A member whose top is not separated does not meet it: it stops
  on its values with vectors_undetermined set and its vector_estimate (max_i r_i / delta_i at
  the stop) well above vector_tol; one cut short by max_iters may not meet it either (its
  vector_estimate says so). With vector_tol=inf (values only) there is no promise on the
  vectors and no flag.

Conventions. S descending. U = dW V / ||dW V|| column by column, so u_i^T dW v_i = S_i >= 0.
Signs: the entry of largest magnitude of each u_i (the first such) is positive; where S_i = 0,
u_i is zero and the same rule applies to v_i. Random starts: member b draws from numpy's PCG64
seeded by SeedSequence([seed, b]) (fp32, on the CPU), so its start does not depend on the
device, the batch's other members or the rank.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rlsignals.ops import svd_scale
from rlsignals.ops.backends import resolve_backend
from rlsignals.ops.svd_certify import (
    CERTIFICATE_WIDTHS,
    Certificate,
    certificate_in_reach,
    certify,
    conclude,
    predicted_to_certify,
)
from rlsignals.ops.svd_estimate import ritz_estimates
from rlsignals.ops.svd_krylov import Krylov, orthonormal
from rlsignals.ops.svd_outputs import DeltaSVD, Outputs
from rlsignals.ops.svd_rounding import pass_rounding
from rlsignals.ops.svd_rows import Rows
from rlsignals.ops.svd_settings import Settings
from rlsignals.ops.svd_validation import check_delta_svd_args

__all__ = ["CERTIFICATE_WIDTHS", "DeltaSVD", "default_block_size", "delta_svd", "member_generator", "start_basis"]

DEFAULT_MAX_ITERS = 64
# Basis size: restart (keeping the top KEEP_COLUMNS Ritz vectors, whole blocks) when one more
# block would exceed MAX_BASIS_COLUMNS columns. Realistic deltas (a spike at least 1.2 x the
# bulk's edge) converge long before that; a restart slows the Krylov rate for a few passes.
MAX_BASIS_COLUMNS = 160
KEEP_COLUMNS = 48
# Residuals below 2^-16 theta_1 are about the resolution of fp32-accumulated products of a
# dW with tiny singular values next to large ones (sqrt of G's rounding): more fp32 passes
# cannot lower the estimate there, the fp64 pass can.
STALL = 2.0 ** -16
# The block shrinks to k columns, the images of the top k Ritz vectors, from the pass after
# the first WIDE_PASSES, once every member's theta_{k+1} <= SHRINK_GAP theta_k (the top k
# Ritz values stand clear of the rest: sigma_k / sigma_{k+1} >~ 1.12). The wide block finds the
# top directions and resolves clusters; past that, its extra columns cost multiply-adds (the
# pass's cost: default_block_size) and barely change the passes a spike over a bulk needs.
WIDE_PASSES = 3
SHRINK_GAP = 0.8


def default_block_size(k: int, n: int, oversample: int | None) -> int:
    """p = k + oversample, capped at n; by default 4 for k = 1, else a multiple of 8 with
    >= 4 extra columns. The block shrinks to k columns after the first passes where the top
    k Ritz values stand clear (WIDE_PASSES, SHRINK_GAP).

    Why so narrow: a pass does 2 w + 1 multiply-adds per element of dW for a block of w
    columns (Y, Z and ||dW||_F^2) while reading the element once, so on a CPU a pass of one or
    two columns runs at the speed of reading the inputs and wider ones are bound by the
    multiply-adds, their cost growing with w. A few extra columns find the top direction in
    fewer passes and give a better estimate while the basis holds few Ritz values (single
    columns throughout, oversample=0, is single-vector Lanczos as in ARPACK/PROPACK, whose
    estimate is cruder on a clustered top in the first passes); once the top stands clear,
    the extra columns buy little. bench/delta_svd.py times the passes per block width.
    """
    p = (4 if k == 1 else 8 * math.ceil((k + 4) / 8)) if oversample is None else k + oversample
    return min(p, n)


def member_generator(seed: int, member: int) -> np.random.Generator:
    """Generator for batch member ``member``, independent across (seed, member)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, member])))


def start_basis(n: int, p: int, seed: int, members: range, init: torch.Tensor | None,
                device: torch.device) -> torch.Tensor:
    """fp32 [B, n, p]: orthonormal basis of [init columns | seeded Gaussian columns]."""
    blocks = torch.from_numpy(np.stack([member_generator(seed, b).standard_normal((n, p), dtype=np.float32)
                                        for b in members]))
    if init is not None:
        cols = min(p, init.shape[2])
        blocks[:, :, :cols] = init[:, :, :cols].to("cpu", torch.float32)
    return orthonormal(blocks).to(device)


def delta_svd(after: torch.Tensor, before: torch.Tensor | None = None, k: int = 1, *, tol: float = 1e-4,
              max_iters: int | None = None, oversample: int | None = None, seed: int = 0,
              init: torch.Tensor | None = None, backend: str = "auto", process_group=None,
              vector_tol: float | None = None) -> DeltaSVD:
    """Top-k singular values and vectors of after - before (or of after alone).

    after, before: [B, m, n] or [m, n], float32/float16/bfloat16, same shape, dtype and
        device; before=None means the top-k of ``after`` itself. Rows need not be
        contiguous (a copy is made when they are not).
    k: number of triplets, 1 <= k <= min(m, n).
    tol: stop a member once err_estimate <= tol and the estimated angles of its V columns,
        ||G v_i - S_i^2 v_i|| / delta_i, are <= vector_tol (module docstring); ``certified``
        says whether err_bound met tol too.
    max_iters: passes per member at most (default 64), the certifying pass included.
    oversample: extra columns of each block (default: blocks of 4 for k = 1, 8 for k <= 4, 16 for
        k <= 12, ...).
    seed: seeds member b's random start with (seed, b).
    init: [B, n, c] (or [n, c]) warm start, best the ``basis`` of a previous checkpoint's
        result (or its V); the first min(c, p) columns start the block, random columns
        fill the rest.
    backend: "auto", "torch", "cpp", "triton" or "cuda" (the fused product's backend).
    process_group: a torch.distributed group whose ranks each pass their slab of rows
        ([B, m_r, n], slabs in rank order; the same n, k, seed, init and options on every
        rank). Every rank gets the same S, V, frob, err fields, iters and basis, and its
        slab of U (ops/svd_rows.py).
    vector_tol: the angle test's threshold (default: tol). math.inf stops on the values
        alone (err_estimate <= tol): fewer passes where sigma_1 / sigma_2 is near 1, since
        Ritz values converge with the square of the vectors' angles; U and V are then the
        Ritz vectors at that point, with no promise on their angles.

    Returns DeltaSVD; unbatched input gives unbatched output (like torch.linalg).
    """
    args = check_delta_svd_args(after, before, k, tol, max_iters, oversample, seed, init, process_group,
                                vector_tol)
    rows = Rows(process_group, args.after.shape[1], args.after.device)
    settings = Settings(k=k, p=default_block_size(k, args.after.shape[2], oversample), tol=tol,
                        vector_tol=tol if vector_tol is None else vector_tol,
                        max_iters=DEFAULT_MAX_ITERS if args.max_iters is None else args.max_iters,
                        backend=resolve_backend(backend, args.after.device, "delta_products"), rows=rows)
    out = _solve(args.after, args.before, args.init, seed, settings)
    if args.unbatched:
        return DeltaSVD(*(t[0] for t in out))
    return out


def _solve(after: torch.Tensor, before: torch.Tensor | None, init: torch.Tensor | None, seed: int,
           settings: Settings) -> DeltaSVD:
    """Every member of the batch through ``_iterate``; those outside fp32's safe range again,
    scaled by a power of two (ops/svd_scale.py)."""
    num, m_local, n = after.shape
    out = Outputs(num, m_local, n, settings, after.device)
    if num == 0:
        return out.result()
    block = start_basis(n, settings.p, seed, range(num), init, after.device)
    rescale = _iterate(after, before, block, torch.arange(num), out)
    if rescale.numel():
        exponent = svd_scale.exponents(svd_scale.max_abs_delta(after, before, rescale, settings.rows))
        scaled_after, scaled_before = svd_scale.scaled_operands(after, before, rescale, exponent)
        part = Outputs(rescale.numel(), m_local, n, settings, after.device,
                       unit=torch.ldexp(torch.ones(rescale.numel(), dtype=torch.float64), -exponent))
        block = start_basis(n, settings.p, seed, rescale.tolist(), None if init is None else init[rescale],
                            after.device)
        _iterate(scaled_after, scaled_before, block, torch.arange(rescale.numel()), part)
        out.take(rescale, part)
    return out.result()


def _first_pass(after, before, members: torch.Tensor, frob2: torch.Tensor, finite: torch.Tensor,
                rows: Rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """After the first pass: bool [b] (CPU) masks of the members whose dW is exactly zero, of
    those to solve again scaled (outside fp32's safe range, or overflowed with finite inputs:
    ops/svd_scale.py), and of those with non-finite inputs."""
    frob2 = frob2.cpu()
    outside = finite & svd_scale.out_of_range(frob2)
    zero = torch.zeros_like(finite)
    if bool(outside.any()):
        zero[outside] = svd_scale.max_abs_delta(after, before, members[outside], rows) == 0
    nonfinite = ~finite
    if bool(nonfinite.any()):
        nonfinite[nonfinite.clone()] = ~svd_scale.inputs_finite(after, before, members[nonfinite], rows)
    return zero, (outside & ~zero) | (~finite & ~nonfinite), nonfinite


def _iterate(after: torch.Tensor, before: torch.Tensor | None, block: torch.Tensor, members: torch.Tensor,
             out: Outputs) -> torch.Tensor:
    """The iteration of the module docstring for ``members`` (int64 [b], CPU; indices into
    after, before and ``out``) from their start ``block`` [b, n, p]; results into ``out``.
    Returns the members (int64, CPU) left to be solved scaled (``_first_pass``)."""
    _, m_local, n = after.shape
    device = after.device
    settings = out.settings
    k, p, tol, max_iters, rows = settings.k, settings.p, settings.tol, settings.max_iters, settings.rows
    state: Krylov | None = None
    certificates: list[Certificate] = []
    rescale = members[:0]
    for it in range(1, max_iters + 1):
        y, z, frob2, finite = rows.product(after, before, block, members, settings.backend)
        out.iters[members] += 1
        if state is None:
            zero, scaled, nonfinite = _first_pass(after, before, members, frob2, finite, rows)
            out.nonfinite[members[nonfinite]] = True
            if bool(zero.any()):
                out.store_zero(members[zero], block[zero.to(device)])
            rescale = members[scaled]
            keep = (~(zero | scaled | nonfinite)).to(device)
            members, block, y, z, frob2 = members[keep.cpu()], block[keep], y[keep], z[keep], frob2[keep]
            state = Krylov(frob2, n, m_local, device, capacity=16 * p)
        else:
            fin = finite.to(device)
            if not bool(finite.all()):
                out.nonfinite[members[~finite]] = True
                members, block, y, z, frob2 = members[finite], block[fin], y[fin], z[fin], frob2[fin]
            state = state.subset(fin, room=True)
        if members.numel() == 0:
            break
        state.append(block, y, z, pass_rounding(settings.m, n, block.shape[2], torch.float32))
        theta, coef = state.ritz()
        resid, ritz_images = state.residuals(coef[:, :, :k], theta[:, :k])
        estimate, vector, rel_resid, rel_gap = ritz_estimates(theta, resid, k)
        step = min(p, n - state.width)
        # the vectors' angles are about r_i / delta_i and fp32 passes take r_i no lower than
        # STALL theta_1: below a relative Ritz gap of STALL / vector_tol they cannot meet
        # vector_tol (the top is not separated), so such a member stops on its values. (A
        # vector_tol below STALL is out of the fp32 passes' reach on any gap: those run on to
        # STALL and the fp64 pass, as they always did.)
        unresolvable = (rel_gap * settings.vector_tol < STALL) & (settings.vector_tol >= STALL)
        done = ((estimate <= tol) & ((vector <= settings.vector_tol) | unresolvable)) | (rel_resid <= STALL)
        # sigma converged: stop if the fp64 pass will certify it (where it can at all)
        check = (estimate <= tol) & ~done
        if bool(check.any()):
            check &= certificate_in_reach(theta, tol)
        if bool(check.any()):
            unit = out.unit[members.to(out.unit.device)][check]
            done[check] = predicted_to_certify(state.subset(check), theta[check], coef[check], unit, settings)
        if it == max_iters or step == 0:
            done = torch.ones_like(done)
        if bool(done.any()):
            left_passes = (out.iters[members] < max_iters)[done.cpu()]
            undetermined = unresolvable & (vector > settings.vector_tol)
            cert = conclude(state.subset(done), members[done.cpu()], theta[done], coef[done], estimate[done],
                            vector[done], undetermined[done], left_passes, out)
            if cert is not None:
                certificates.append(cert)
            go_on = ~done
            state, members = state.subset(go_on, room=True), members[go_on.cpu()]
            theta, coef = theta[go_on], coef[go_on]
            ritz_images = ritz_images[go_on]
            if members.numel() == 0:
                break
        if it >= WIDE_PASSES and step >= k and _top_stands_clear(theta, k):
            step = k
            block = state.next_block(ritz_images)                           # G V_k: the Ritz residuals' span
        else:
            block = state.next_block(state.zt[:, -step:])                  # G P: block Lanczos
        if state.width + step > max(MAX_BASIS_COLUMNS, 2 * p):
            state.restart(coef[:, :, :max(KEEP_COLUMNS // p, 1) * p])
    for cert in certificates:
        certify(after, before, cert, out)
    return rescale


def _top_stands_clear(theta: torch.Tensor, k: int) -> bool:
    """Whether every member's theta_{k+1} <= SHRINK_GAP theta_k (theta fp64 [b, K], descending)."""
    return theta.shape[1] > k and bool((theta[:, k] <= SHRINK_GAP * theta[:, k - 1]).all())
