"""delta_svd: top-k singular triplets of dW = after - before, with an error estimate and a
certified error bound.

Algorithm (per batch member, all members advanced together; a member that has converged
leaves the batch):

    X_0 = orthonormal basis of [init | Gaussian columns]            [n, p], p = k + oversample
    repeat (one pass over after/before each, fp32 accumulation):
        Y, Z = dW P, dW^T (dW P)            fused product of the pending block P (ops/delta_products.py)
        append P, Y, Z to the block Krylov basis (ops/svd_krylov.py); Rayleigh-Ritz on it
        residuals r_i = ||G v_i - theta_i v_i|| of the top k Ritz pairs -> err_estimate
        stop when err_estimate <= tol and max_i r_i / delta_i <= vector_tol (delta_i the gap from
            theta_i to the nearest other Ritz value: the residual test of ARPACK/PROPACK
            scaled by the gap, so that the vectors meet vector_tol, sin(v_i, true) <~ r_i / delta_i,
            ops/svd_estimate.py), or when max_i r_i <= STALL * theta_1 (fp32 can resolve no
            more), or when err_estimate <= tol and an fp64 pass is predicted to certify
            (concentrated spectra)
        P <- the new directions of Z (full reorthogonalisation): block Lanczos; after the first
            WIDE_PASSES passes, once every member's top k Ritz values stand clear of the next
            (theta_{k+1} <= SHRINK_GAP theta_k), the new directions of G V_k alone (the top k
            Ritz vectors' images: a block of k columns, at 2k instead of 2p multiply-adds per
            element); restart from the top Ritz vectors when the basis would exceed
            MAX_BASIS_COLUMNS columns
    then, per stopped member, the certificate (ops/svd_bound.py) from the fp32 data already
    at hand; only when that does not meet tol but its fp64 prediction does, or the estimate
    has stalled above tol (and a pass is left), one more pass in fp64 on G V (V the top
    8 or 16 Ritz vectors: one more block power step) certifies and refines.

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
  the gap is overstated): on the bench's rank-3 spikes at sigma_1/sigma_2 = 1.2, values only,
  the estimate came out at 0.83-0.99 of the true error (on the other values-only cases
  at or above it).
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
  Same caveats as err_estimate; a member stopped by STALL or max_iters may not meet it, nor
  does one run with vector_tol=inf (values only).

Conventions. S descending. U = dW V / ||dW V|| column by column, so u_i^T dW v_i = S_i >= 0.
Signs: the entry of largest magnitude of each u_i (the first such) is positive; where S_i = 0,
u_i is zero and the same rule applies to v_i. Random starts: member b draws from numpy's PCG64
seeded by SeedSequence([seed, b]) (fp32, on the CPU), so its start does not depend on the
device, the batch's other members or the rank.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from rlsignals.ops.backends import resolve_backend
from rlsignals.ops.svd_bound import eigenvalue_bounds, relative_error_bound
from rlsignals.ops.svd_estimate import ritz_estimates
from rlsignals.ops.svd_krylov import Krylov, combine, orthonormal, pass_rounding, ritz_block
from rlsignals.ops.svd_rows import Rows
from rlsignals.ops.svd_validation import check_delta_svd_args

DEFAULT_MAX_ITERS = 64
# Basis size: restart (keeping the top KEEP_COLUMNS Ritz vectors, whole blocks) when one more
# block would exceed MAX_BASIS_COLUMNS columns. Realistic deltas (a spike at least 1.2 x the
# bulk's edge) converge long before that; a restart slows the Krylov rate for a few passes.
MAX_BASIS_COLUMNS = 160
KEEP_COLUMNS = 48
# The certificate: the fp32 bound on the top CERTIFICATE_RITZ Ritz vectors; when it does not
# meet tol, the fp64 pass (the dearest: fp64 lanes are half as wide) runs on the narrowest of
# CERTIFICATE_WIDTHS top Ritz vectors predicted to certify (whatever the block size p).
CERTIFICATE_RITZ = 32
CERTIFICATE_WIDTHS = (8, 16)
# Residuals below 2^-16 theta_1 are about the resolution of fp32-accumulated products of a
# dW with tiny singular values next to large ones (sqrt of G's rounding): more fp32 passes
# cannot lower the estimate there, the fp64 pass can.
STALL = 2.0 ** -16
_U32 = 2.0 ** -24
# The block shrinks to k columns, the images of the top k Ritz vectors, from the pass after
# the first WIDE_PASSES, once every member's theta_{k+1} <= SHRINK_GAP theta_k (the top k
# Ritz values stand clear of the rest: sigma_k / sigma_{k+1} >~ 1.12). The wide block finds the
# top directions and resolves clusters; past that, its extra columns cost multiply-adds (the
# CPU's bound: default_block_size) and, on the bench's spikes, saved 0-0.25 passes on average.
WIDE_PASSES = 3
SHRINK_GAP = 0.8


class DeltaSVD(NamedTuple):
    """Top-k singular triplets of after - before. Shapes for a batch of B matrices [m, n];
    an unbatched [m, n] input gives the same without the leading B.

    S: fp32 [B, k], descending. U: fp32 [B, m, k] (with a process group: this rank's rows).
    V: fp32 [B, n, k]. frob: fp32 [B], ||after - before||_F.
    err_bound: fp32 [B], certified bound on max_i |S_i - sigma_i| / sigma_1 (module
        docstring; 0 for a zero delta, inf when sigma_1 could not be bounded away from 0,
        as on dense spectra that stop without the fp64 pass: the fp32 rounding margin, about
        1e-3 ||dW||_F^2, exceeds sigma_1^2 when the top direction holds under ~1% of it).
    iters: int64 [B], passes over the inputs (products) this member took, the fp64 one included.
    nonfinite: bool [B], True where the delta has a NaN/inf entry or overflows fp32 in the
        products; that member's S, U, V, frob, err_bound, err_estimate and basis are NaN,
        certified is False, and the others are unaffected.
    basis: fp32 [B, n, p], the top p Ritz vectors (V its first k columns). Pass it as
        ``init`` for the next checkpoint of the same module.
    err_estimate: fp32 [B], a-posteriori estimate of max_i |S_i - sigma_i| / sigma_1 (the
        residual/gap test of ARPACK-style solvers; not a bound: module docstring).
    certified: bool [B], err_bound <= tol.
    """

    S: torch.Tensor
    U: torch.Tensor
    V: torch.Tensor
    frob: torch.Tensor
    err_bound: torch.Tensor
    iters: torch.Tensor
    nonfinite: torch.Tensor
    basis: torch.Tensor
    err_estimate: torch.Tensor
    certified: torch.Tensor


def default_block_size(k: int, n: int, oversample: int | None) -> int:
    """p = k + oversample, capped at n; by default 4 for k = 1, else a multiple of 8 with
    >= 4 extra columns. The block shrinks to k columns after the first passes where the top
    k Ritz values stand clear (WIDE_PASSES, SHRINK_GAP).

    A pass does 2 w + 1 multiply-adds per element of dW for a block of w columns (Y, Z and
    ||dW||_F^2). On the bench's CPU (a 2-core AVX2 VM that sustains about 1.24 G 8-wide FMAs
    per second per core) a 4096 x 4096 bf16 pass of 1, 2, 3 and 4 columns took 5.2, 7.2, 8.5
    and 9.0 ms: one column reads memory at its speed (a plain a - b of the pair: 5.7 ms), from
    3 on the FMAs bound it (floor 7.6 ms for 4 columns; the kernel reaches about 84% of it).
    On the bench's spiked spectra 4 columns need the passes of 8 or 16 for k = 1; single
    columns throughout (oversample=0, single-vector Lanczos as in ARPACK/PROPACK) need 0.1-1.4
    more on average over 8 members, up to 3 more for one, and their estimate is cruder while
    the basis holds few Ritz values (on two clustered values, sigma_2 = 0.99 sigma_1, after 2
    passes it fell below the true error). Three passes of 4 columns, then single columns
    (WIDE_PASSES): on the bench's 4096 x 4096 families, 8 members each, the same passes on
    average as 4 columns throughout, or 0.25 more (mp3-1.5, geo30-1.2), the estimate of the
    wide block, and the later passes at the single column's cost.
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
        alone (err_estimate <= tol): a third fewer passes or more where sigma_1 / sigma_2 is near
        1, since Ritz values converge with the square of the vectors' angles; U and V are
        then the Ritz vectors at that point, with no promise on their angles.

    Returns DeltaSVD; unbatched input gives unbatched output (like torch.linalg).
    """
    args = check_delta_svd_args(after, before, k, tol, max_iters, oversample, seed, init, process_group,
                                vector_tol)
    name = resolve_backend(backend, args.after.device, "delta_products")
    max_iters = DEFAULT_MAX_ITERS if args.max_iters is None else args.max_iters
    rows = Rows(process_group, args.after.shape[1], args.after.device)
    vector_tol = tol if vector_tol is None else vector_tol
    out = _solve(args.after, args.before, k, tol, vector_tol, max_iters, oversample, seed, args.init, name, rows)
    if args.unbatched:
        return DeltaSVD(*(t[0] for t in out))
    return out


def _round_up(x: torch.Tensor) -> torch.Tensor:
    """fp32 of fp64 ``x``, never below it."""
    x32 = x.float()
    return torch.where(x32.double() < x, torch.nextafter(x32, torch.full_like(x32, math.inf)), x32)


class _Outputs:
    """Results being filled in, member by member, as members finish."""

    def __init__(self, num: int, m: int, n: int, k: int, p: int, device: torch.device, rows: Rows):
        nan = math.nan
        self.rows = rows
        self.S = torch.full((num, k), nan, device=device)
        self.U = torch.full((num, m, k), nan, device=device)
        self.V = torch.full((num, n, k), nan, device=device)
        self.frob = torch.full((num,), nan, device=device)
        self.err_bound = torch.full((num,), nan, device=device)
        self.err_estimate = torch.full((num,), nan, device=device)
        self.certified = torch.zeros(num, dtype=torch.bool, device=device)
        self.iters = torch.zeros(num, dtype=torch.int64)
        self.nonfinite = torch.zeros(num, dtype=torch.bool)
        self.basis = torch.full((num, n, p), nan, device=device)

    def store(self, members: torch.Tensor, tol: float, scale: torch.Tensor, theta: torch.Tensor,
              left: torch.Tensor, vecs: torch.Tensor, bound: torch.Tensor, estimate: torch.Tensor,
              basis: torch.Tensor) -> None:
        """Results of finished members. theta: fp64 [b, k] Ritz values / scale; left: fp64
        [b, m_r, k] dW V (this rank's rows); vecs: [b, n, k] V; bound, estimate: fp64 [b]."""
        at = members.to(self.S.device)
        s = torch.sqrt(theta.clamp_min(0) * scale[:, None]).float()
        norms = self.rows.sum(left.square().sum(1)).sqrt()[:, None, :]
        u = torch.where(norms > 0, left / torch.where(norms > 0, norms, 1), 0)
        u, v = _fix_signs(u, vecs.double(), self.rows)
        err = _round_up(bound)
        self.S[at], self.U[at], self.V[at] = s, u.float(), v.float()
        self.frob[at] = scale.sqrt().float()
        self.err_bound[at], self.err_estimate[at] = err, _round_up(estimate)
        self.certified[at] = err <= tol
        self.basis[at] = basis.float()

    def result(self) -> DeltaSVD:
        device = self.S.device
        return DeltaSVD(self.S, self.U, self.V, self.frob, self.err_bound, self.iters.to(device),
                        self.nonfinite.to(device), self.basis, self.err_estimate, self.certified)


def _fix_signs(u: torch.Tensor, v: torch.Tensor, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip (u_i, v_i) so the first entry of largest |.| of u_i (of v_i where u_i = 0) is > 0."""
    mag, val = rows.first_largest(u)
    ref_v = torch.gather(v, 1, v.abs().argmax(1, keepdim=True))[:, 0]
    sign = torch.where(mag > 0, val.sign(), ref_v.sign())
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)[:, None, :]
    return u * sign, v * sign


class _Certificate(NamedTuple):
    """A stopped member whose certificate needs the fp64 pass on ``vecs``."""

    members: torch.Tensor     # int64 [b] (CPU)
    vecs: torch.Tensor        # fp64 [b, n, w] orthonormal basis of G (top w Ritz vectors)
    rest: torch.Tensor        # fp32 [b, n, max(p - w, 0)] the next Ritz vectors (kept in basis)


def _bound_from(theta, rtr, vtr, margin, frob2, s_hat, k):
    lo, hi = eigenvalue_bounds(theta, rtr, vtr, frob2, margin, k)
    return relative_error_bound(s_hat, lo, hi)


def _fp32_certificates(state: Krylov, theta, coef, k: int, p: int, m: int, *, certified: bool = True,
                       wide: bool = True):
    """From the fp32 data at hand: the top Ritz vectors V (fp64 [b, n, w], w = min(K,
    max(CERTIFICATE_RITZ, p)), or min(K, p) unless ``wide``), the certified bound on them
    (None unless ``certified``), and {width: the bound an fp64 pass on the first ``width`` of
    them is predicted to give} (the typical fp32 rounding taken off the residuals and frob2,
    as ops/svd_bound.py describes for a negative margin)."""
    n = state.qt.shape[2]
    if certified:
        w = min(state.width, max(CERTIFICATE_RITZ, p) if wide else p)
    else:
        w = min(state.width, max(CERTIFICATE_WIDTHS))
    vecs, rtr, vtr, margin = ritz_block(state, coef[:, :, :w], theta[:, :w])
    frob2 = 1 + (n + m + 4) * 1.01 * _U32                      # >= ||dW||_F^2 / scale (fp32 pass)
    s32 = torch.sqrt(theta[:, :k].clamp_min(0) * state.scale[:, None]).float()
    s_hat = s32.double() / state.scale.sqrt()[:, None]
    full = torch.full_like(state.scale, frob2)
    bound = _bound_from(theta[:, :w], rtr, vtr, margin * frob2, full, s_hat, k) if certified else None
    predicted = {}
    for width in sorted({min(c, w) for c in CERTIFICATE_WIDTHS}):
        if width < k:
            continue
        floor = math.sqrt(width * (m + n)) * _U32
        predicted[width] = _bound_from(theta[:, :width], rtr[:, :width, :width], vtr[:, :width, :width],
                                       torch.full_like(state.scale, -floor), full * (1 - floor), s_hat, k)
    return vecs, bound, predicted


def _certificate_in_reach(theta: torch.Tensor, tol: float) -> torch.Tensor:
    """bool [b]: False where no certificate on the top max(CERTIFICATE_WIDTHS) Ritz vectors can
    meet tol, from the Ritz values alone (no residuals needed). The bound's hi_1 is at least
    min_j max(theta_1, c_j) with c_j >= ||dW||_F^2 - (theta_1 + ... + theta_j) (ops/svd_bound.py),
    so where that exceeds theta_1 (1 + 2 tol)^2 the relative bound exceeds about 2 tol. Theta is
    in units of the fp32 pass's ||dW||_F^2, taken as 1 - 2^-20 to stay on the safe side."""
    w = min(theta.shape[1], max(CERTIFICATE_WIDTHS))
    rest = (1 - 2.0 ** -20) - theta[:, :w].cumsum(1)
    lowest_hi = torch.maximum(theta[:, :1], rest).amin(1)
    return lowest_hi <= theta[:, 0] * (1 + 2 * tol) ** 2


def _conclude(state: Krylov, members: torch.Tensor, theta, coef, estimate, out: _Outputs, k: int, p: int,
              tol: float, m: int, certify_possible: torch.Tensor) -> _Certificate | None:
    """Finish the stopped members of ``state`` from the fp32 data, or queue their fp64 certificate."""
    # a certificate out of reach needs only the honest (loose) bound: from the first p Ritz vectors
    wide = bool(_certificate_in_reach(theta, tol).any())
    vecs, bound, predicted = _fp32_certificates(state, theta, coef, k, p, m, wide=wide)
    w = vecs.shape[2]
    # the narrowest width predicted to certify; the whole block where the estimate has not
    # met tol (fp32 stalled: the fp64 pass refines) and no width is predicted to certify
    pick = torch.where(estimate > tol, min(max(CERTIFICATE_WIDTHS), w), 0)
    for width in sorted(predicted, reverse=True):
        pick = torch.where(predicted[width] <= tol, width, pick)
    certify = (bound > tol) & (pick > 0) & certify_possible.to(bound.device)
    now = ~certify
    if bool(now.any()):
        left = combine(state.yt[now].double(), coef[now][:, :, :k])
        out.store(members[now.cpu()], tol, state.scale[now], theta[now][:, :k], left, vecs[now][:, :, :k],
                  bound[now], estimate[now], vecs[now][:, :, :p])
    if not bool(certify.any()):
        return None
    width = int(pick[certify].max())  # one width per call: the widest any member needs
    sel = certify
    # one block power step for free: G V (the fp32 images at hand) spans better top vectors
    iterated = orthonormal(combine(state.zt[sel], coef[sel][:, :, :width]))
    return _Certificate(members[sel.cpu()], iterated, vecs[sel][:, :, width:p].float())


def _certify(after, before, cert: _Certificate, out: _Outputs, k: int, tol: float, m: int, backend: str,
             rows: Rows) -> None:
    """The fp64 pass on the queued Ritz vectors, and the results from it (ops/svd_bound.py)."""
    x = cert.vecs
    y, z, frob2, finite = rows.product(after, before, x, cert.members, backend)
    out.iters[cert.members] += 1
    out.nonfinite[cert.members[~finite]] = True
    fin = finite.to(x.device)
    if not bool(fin.any()):
        return
    x, y, z, frob2 = x[fin], y[fin], z[fin], frob2[fin]
    n, w = x.shape[1:]
    z = z / frob2[:, None, None]
    eye = torch.eye(w, dtype=torch.float64, device=x.device)
    chol = torch.linalg.cholesky(x.mT @ x)
    c0 = torch.linalg.solve_triangular(chol, eye, upper=False).mT             # x c0 is orthonormal
    h = c0.mT @ (x.mT @ z) @ c0
    theta, vecs_w = torch.linalg.eigh((h + h.mT) / 2)
    coef = c0 @ vecs_w.flip(2)
    theta = theta.flip(1)
    vecs, g_vecs = x @ coef, z @ coef
    resid = g_vecs - vecs * theta[:, None, :]
    orth_err = torch.linalg.matrix_norm(vecs.mT @ vecs - eye)
    u64 = 2.0 ** -53
    margin = math.sqrt(w) * pass_rounding(m, n, w, torch.float64) + 2 * (orth_err + (n + w) * u64)
    f2 = 1 + (n + m + 4) * u64
    margin = margin * f2
    s32 = torch.sqrt(theta[:, :k].clamp_min(0) * frob2[:, None]).float()
    s_hat = s32.double() / frob2.sqrt()[:, None]
    rtr, vtr = resid.mT @ resid, vecs.mT @ resid
    bound = _bound_from(theta, rtr, vtr, margin, torch.full_like(frob2, f2), s_hat, k)
    estimate = ritz_estimates(theta, torch.linalg.vector_norm(resid[:, :, :k], dim=1), k).value
    left = y.double() @ coef[:, :, :k]
    basis = torch.cat([vecs, cert.rest[fin].double()], 2)[:, :, :out.basis.shape[2]]
    out.store(cert.members[finite], tol, frob2, theta[:, :k], left, vecs[:, :, :k], bound, estimate, basis)


def _solve(after, before, k, tol, vector_tol, max_iters, oversample, seed, init, backend, rows: Rows) -> DeltaSVD:
    num, m_local, n = after.shape
    device = after.device
    m = rows.rows
    p = default_block_size(k, n, oversample)
    out = _Outputs(num, m_local, n, k, p, device, rows)
    if num == 0:
        return out.result()
    block = start_basis(n, p, seed, range(num), init, device)
    members = torch.arange(num)
    state: Krylov | None = None
    certificates = []
    for it in range(1, max_iters + 1):
        y, z, frob2, finite = rows.product(after, before, block, members, backend)
        out.iters[members] += 1
        fin = finite.to(device)
        if not bool(finite.all()):
            out.nonfinite[members[~finite]] = True
            members, block, y, z, frob2 = members[finite], block[fin], y[fin], z[fin], frob2[fin]
        if state is None:
            zero = frob2 == 0
            if bool(zero.any()):
                _store_zero(out, members[zero.cpu()], block[zero], k, tol, rows)
            members, block, y, z, frob2 = (t[~zero] for t in (members, block, y, z, frob2))
            state = Krylov(frob2, n, m_local, device, capacity=16 * p)
        else:
            state = state.subset(fin)
        if members.numel() == 0:
            break
        state.append(block, y, z, pass_rounding(m, n, block.shape[2], torch.float32))
        theta, coef = state.ritz()
        resid, ritz_images = state.residuals(coef[:, :, :k], theta[:, :k])
        estimate, vector, rel_resid = ritz_estimates(theta, resid, k)
        step = min(p, n - state.width)
        done = ((estimate <= tol) & (vector <= vector_tol)) | (rel_resid <= STALL)
        # sigma converged: stop if the fp64 pass will certify it (where it can at all)
        check = (estimate <= tol) & ~done
        if bool(check.any()):
            check &= _certificate_in_reach(theta, tol)
        if bool(check.any()):
            _, _, predicted = _fp32_certificates(state.subset(check), theta[check], coef[check], k, p, m,
                                                 certified=False)
            done[check] = torch.stack(list(predicted.values())).amin(0) <= tol
        if it == max_iters or step == 0:
            done = torch.ones_like(done)
        if bool(done.any()):
            left_passes = (out.iters[members] < max_iters)[done.cpu()]
            cert = _conclude(state.subset(done), members[done.cpu()], theta[done], coef[done], estimate[done],
                             out, k, p, tol, m, left_passes)
            if cert is not None:
                certificates.append(cert)
            go_on = ~done
            state, members, theta, coef = state.subset(go_on), members[go_on.cpu()], theta[go_on], coef[go_on]
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
        _certify(after, before, cert, out, k, tol, m, backend, rows)
    return out.result()


def _top_stands_clear(theta: torch.Tensor, k: int) -> bool:
    """Whether every member's theta_{k+1} <= SHRINK_GAP theta_k (theta fp64 [b, K], descending)."""
    return theta.shape[1] > k and bool((theta[:, k] <= SHRINK_GAP * theta[:, k - 1]).all())


def _store_zero(out: _Outputs, members: torch.Tensor, block: torch.Tensor, k: int, tol: float, rows: Rows):
    """dW = 0: S = 0, U = 0, V = the start's first k columns, exact (bound and estimate 0)."""
    b = members.numel()
    zeros = torch.zeros(b, dtype=torch.float64, device=block.device)
    left = torch.zeros(b, out.U.shape[1], k, dtype=torch.float64, device=block.device)
    out.store(members, tol, zeros, torch.zeros(b, k, dtype=torch.float64, device=block.device), left,
              block[:, :, :k], zeros, zeros, block)
