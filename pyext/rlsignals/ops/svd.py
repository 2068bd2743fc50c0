"""delta_svd: top-k singular triplets of dW = after - before, with a certified error bound.

Algorithm (per batch member, all members advanced together; a member that has
converged leaves the batch):

    X_0 = orthonormal basis of [init | Gaussian columns]      [n, p], p = k + oversample
    repeat (one pass over after/before each):
        Y, Z = dW X, dW^T (dW X)                  fused product (ops/svd_products.py)
        C0 = L^-T with L L^T = X^T X (fp64)       X C0: orthonormal basis of span(X)
        Rayleigh-Ritz: eig(C0^T X^T Z C0) = W Theta W^T; Ritz vectors X C0 W,
            their images G X C0 W = Z C0 W and dW X C0 W = Y C0 W (p x p work in fp64)
        bound theta_1..k from the residual R = Z C0 W - X C0 W Theta (ops/svd_bound.py)
        X <- orthonormal basis of Z C0 W          (one step of block subspace iteration)

Iterations run in fp32. When the fp32 bound says a member is within ``tol`` (or at its
last iteration), its next pass runs with fp64 accumulation and certifies: the bound
computed from that pass holds for the exact dW, with every rounding of the pass
counted (``_rounding``). The member stops when the certified bound is within ``tol``.
Each returned ``err_bound`` comes from such a certified pass. When the estimate says the
first NARROW_CERTIFICATE columns of the block certify by themselves, the certifying
pass runs on those columns only (the bound of ops/svd_bound.py holds for any block).

What err_bound bounds: max_i |S_i - sigma_i| / sigma_1 (i = 1..k), the error of the
returned fp32 S relative to the top singular value, the accuracy a dense SVD gives too.
For k = 1 it is the relative error of sigma_1. The bound is tight (quadratic in the
residual) when the top Ritz values hold most of ||dW||_F^2, as for the rank-1-dominated
updates of RL; on a flat spectrum it stays large, honestly (ops/svd_bound.py).

Conventions. S descending. U = dW V / ||dW V|| column by column, so u_i^T dW v_i = S_i
>= 0. Signs: the entry of largest magnitude of each u_i (the first such) is positive;
where S_i = 0, u_i is zero and the same rule applies to v_i. Random starts: member b
draws from numpy's PCG64 seeded by SeedSequence([seed, b]) (fp32, on the CPU), so its
start does not depend on the device or on the batch's other members.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from rlsignals.ops.backends import resolve_backend
from rlsignals.ops.svd_bound import eigenvalue_bounds, relative_error_bound
from rlsignals.ops.delta_products import delta_gram_product, product_backend
from rlsignals.ops.svd_validation import check_delta_svd_args

DEFAULT_MAX_ITERS = 64
# Columns of a narrow certifying pass: when the fp32 estimate says the first 8 Ritz
# vectors alone certify, the fp64 pass (the dearest: fp64 lanes are half as wide) runs
# on those 8 columns only, at half the cost of a full block of 16.
NARROW_CERTIFICATE = 8
_U32 = 2.0 ** -24
_U64 = 2.0 ** -53


class DeltaSVD(NamedTuple):
    """Top-k singular triplets of after - before. Shapes for a batch of B matrices [m, n];
    an unbatched [m, n] input gives the same without the leading B.

    S: fp32 [B, k], descending. U: fp32 [B, m, k]. V: fp32 [B, n, k].
    frob: fp32 [B], ||after - before||_F.
    err_bound: fp32 [B], certified bound on max_i |S_i - sigma_i| / sigma_1 (0 for a zero
        delta, inf when sigma_1 could not be bounded away from 0).
    iters: int64 [B], passes over the inputs (products) this member took.
    nonfinite: bool [B], True where the delta has a NaN/inf entry or overflows fp32 in the
        products; that member's S, U, V, frob, err_bound and basis are NaN and the others
        are unaffected.
    basis: fp32 [B, n, p], the final iterated block: the certified Ritz vectors (V its
        first k columns), then, after a narrow certificate (NARROW_CERTIFICATE), the
        other columns of the block it came from. Pass it as ``init`` for the next
        checkpoint of the same module: the certificate needs the whole block converged,
        so a full-block warm start saves far more passes than V alone.
    """

    S: torch.Tensor
    U: torch.Tensor
    V: torch.Tensor
    frob: torch.Tensor
    err_bound: torch.Tensor
    iters: torch.Tensor
    nonfinite: torch.Tensor
    basis: torch.Tensor


class _RitzStep(NamedTuple):
    theta: torch.Tensor    # fp64 [b, p] descending
    vecs: torch.Tensor     # [b, n, p] Ritz vectors, = X coef (the pass's dtype)
    coef: torch.Tensor     # fp64 [b, p, p]
    y: torch.Tensor        # [b, m, p] dW X as computed (dW @ vecs = y coef)
    g_vecs: torch.Tensor   # [b, n, p] G @ vecs (as computed, the pass's dtype)
    lo: torch.Tensor       # fp64 [b, k] lower bounds on sigma_i^2
    hi: torch.Tensor       # fp64 [b, k] upper bounds on sigma_i^2
    frob2: torch.Tensor    # fp64 [b]
    rtr: torch.Tensor      # fp64 [b, p, p] R^T R, R = g_vecs - vecs diag(theta)
    vtr: torch.Tensor      # fp64 [b, p, p] vecs^T R


def default_block_size(k: int, n: int, oversample: int | None) -> int:
    """p = k + oversample, capped at n; by default a multiple of 16 with >= 8 extra columns.

    The certificate (ops/svd_bound.py) is tight only once the top p Ritz values hold all
    but less than sigma_1^2 of ||dW||_F^2, so noisy deltas need a wide block: at 8
    columns, deltas whose noise holds most of ||dW||_F^2 no longer certify. 16 columns
    cost the same per pass as fewer on the CPU kernel (one 16-lane register per row of X).
    """
    p = 16 * math.ceil((k + 8) / 16) if oversample is None else k + oversample
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
    return torch.linalg.qr(blocks).Q.to(device)


def _rounding(frob2: torch.Tensor, orth_err: torch.Tensor | None, m: int, n: int, p: int,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(margin, frob2 to use) for eigenvalue_bounds after a pass in ``dtype``.

    fp64 (certifying): margin >= ||computed G V - exact G V||_2. Every entry of Y, Z is a
    sum of n resp. m products in any order, so |error| <= (gamma_n + gamma_m + 3u)
    |dW|^T |dW| |V| entrywise, whose 2-norm is <= (...) ||dW||_F^2 sqrt(p); the fp64
    small-matrix work (Cholesky, solves, Ritz step) and V's measured departure from
    orthonormality (orth_err, fp64 passes only) add the rest, with generous constants. frob2 is rounded
    up by its own bound (squares summed over rows of n, rows in fp64).
    fp32 (estimating): the typical (square-root) rounding of the pass is taken OFF the
    residuals and frob2 is rounded down, predicting what the certifying pass will find.
    """
    if dtype == torch.float64:
        margin = frob2 * (math.sqrt(p) * (4 * (m + n + p) + 64) * _U64 + 2 * (orth_err + (n + p) * _U64))
        return margin, frob2 * (1 + (n + m + 4) * _U64)
    floor = math.sqrt(p * (m + n)) * _U32
    return -frob2 * floor, frob2 * (1 - floor)


def _ritz_step(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, frob2: torch.Tensor, k: int,
               dtype: torch.dtype) -> _RitzStep:
    """Rayleigh-Ritz on span(x) from Y = dW x, Z = G x, and the eigenvalue bounds.

    The [n, p] products run in the pass's dtype (fp64 when certifying; fp32 when
    estimating, whose rounding sits far below the floor ``_rounding`` takes off), the
    p x p algebra in fp64.
    """
    x, z = x.to(dtype), z.to(dtype)
    n, p = x.shape[1:]
    eye = torch.eye(p, dtype=torch.float64, device=x.device)
    chol = torch.linalg.cholesky((x.mT @ x).double())
    c0 = torch.linalg.solve_triangular(chol, eye, upper=False).mT               # x L^-T is orthonormal
    h = c0.mT @ (x.mT @ z).double() @ c0
    theta, w = torch.linalg.eigh((h + h.mT) / 2)
    coef = c0 @ w.flip(2)
    theta = theta.flip(1)
    vecs, g_vecs = x @ coef.to(dtype), z @ coef.to(dtype)
    resid = g_vecs - vecs * theta[:, None, :].to(dtype)
    orth_err = torch.linalg.matrix_norm(vecs.mT @ vecs - eye) if dtype == torch.float64 else None
    margin, frob2_used = _rounding(frob2, orth_err, y.shape[1], n, p, dtype)
    rtr, vtr = (resid.mT @ resid).double(), (vecs.mT @ resid).double()
    lo, hi = eigenvalue_bounds(theta, rtr, vtr, frob2_used, margin, k)
    return _RitzStep(theta, vecs, coef, y, g_vecs, lo, hi, frob2, rtr, vtr)


def _narrow_estimate(step: _RitzStep, m: int, width: int, k: int) -> torch.Tensor:
    """The fp32 estimate of the bound a certificate on the first ``width`` Ritz vectors
    alone would give (the same step's numbers, the block cut to width columns)."""
    n = step.vecs.shape[1]
    margin, frob2_used = _rounding(step.frob2, None, m, n, width, torch.float32)
    lo, hi = eigenvalue_bounds(step.theta[:, :width], step.rtr[:, :width, :width], step.vtr[:, :width, :width],
                               frob2_used, margin, k)
    return relative_error_bound(step.theta[:, :k].clamp_min(0).sqrt(), lo, hi)


def _fix_signs(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip (u_i, v_i) so the first entry of largest |.| of u_i (of v_i where u_i = 0) is > 0."""
    ref = torch.where((u.abs().amax(1) > 0)[:, None, :].expand_as(u[:, :1]), u.abs().argmax(1, keepdim=True), -1)
    pick_u = torch.gather(u, 1, ref.clamp_min(0))
    pick_v = torch.gather(v, 1, v.abs().argmax(1, keepdim=True))
    sign = torch.where(ref >= 0, pick_u.sign(), pick_v.sign())
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return u * sign, v * sign


def _finish(step: _RitzStep, k: int) -> tuple[torch.Tensor, ...]:
    """Final S, U, V, frob, err_bound, basis (fp32) of certified members."""
    s = step.theta[:, :k].clamp_min(0).sqrt().float()
    left = step.y.double() @ step.coef[:, :, :k]
    norms = torch.linalg.vector_norm(left, dim=1, keepdim=True)
    u = torch.where(norms > 0, left / torch.where(norms > 0, norms, 1), 0)
    u, v = _fix_signs(u, step.vecs[:, :, :k])
    basis = torch.cat([v, step.vecs[:, :, k:]], 2)
    err = relative_error_bound(s.double(), step.lo, step.hi)
    err32 = err.float()
    err32 = torch.where(err32.double() < err, torch.nextafter(err32, torch.full_like(err32, math.inf)), err32)
    return s, u.float(), v.float(), step.frob2.sqrt().float(), err32, basis.float()


def delta_svd(after: torch.Tensor, before: torch.Tensor | None = None, k: int = 1, *, tol: float = 1e-4,
              max_iters: int | None = None, oversample: int | None = None, seed: int = 0,
              init: torch.Tensor | None = None, backend: str = "auto") -> DeltaSVD:
    """Top-k singular values and vectors of after - before (or of after alone), certified.

    after, before: [B, m, n] or [m, n], float32/float16/bfloat16, same shape, dtype and
        device; before=None means the top-k of ``after`` itself. Rows need not be
        contiguous (a copy is made when they are not).
    k: number of triplets, 1 <= k <= min(m, n).
    tol: stop a member once err_bound (see DeltaSVD) is <= tol.
    max_iters: passes per member at most (default 64); the last one certifies.
    oversample: extra columns of the iterated block (default: a block of 16 for k <= 8;
        see default_block_size).
    seed: seeds member b's random start with (seed, b).
    init: [B, n, c] (or [n, c]) warm start, best the ``basis`` of a previous checkpoint's
        result (or its V); the first min(c, p) columns start the block, random columns
        fill the rest.
    backend: "auto", "torch", "cpp", "triton" or "cuda" (the fused product's backend).

    Returns DeltaSVD; unbatched input gives unbatched output (like torch.linalg).
    """
    args = check_delta_svd_args(after, before, k, tol, max_iters, oversample, seed, init)
    name = product_backend(resolve_backend(backend, args.after.device), backend)
    max_iters = DEFAULT_MAX_ITERS if args.max_iters is None else args.max_iters
    out = _solve(args.after, args.before, k, tol, max_iters, oversample, seed, args.init, name)
    if args.unbatched:
        return DeltaSVD(*(t[0] for t in out))
    return out


class _Outputs:
    """Results being filled in, member by member, as members finish."""

    def __init__(self, num: int, m: int, n: int, k: int, p: int, device: torch.device):
        nan = math.nan
        self.S = torch.full((num, k), nan, device=device)
        self.U = torch.full((num, m, k), nan, device=device)
        self.V = torch.full((num, n, k), nan, device=device)
        self.frob = torch.full((num,), nan, device=device)
        self.err_bound = torch.full((num,), nan, device=device)
        self.iters = torch.zeros(num, dtype=torch.int64)
        self.nonfinite = torch.zeros(num, dtype=torch.bool)
        self.basis = torch.full((num, n, p), nan, device=device)

    def store(self, members: torch.Tensor, step: _RitzStep, k: int, rest: torch.Tensor) -> None:
        """Results of certified members; ``rest``: the columns of their blocks past the
        certified width (none for a full-width certificate), kept in ``basis``."""
        at = members.to(self.S.device)
        self.S[at], self.U[at], self.V[at], self.frob[at], self.err_bound[at], basis = _finish(step, k)
        self.basis[at] = torch.cat([basis, rest], 2)

    def result(self) -> DeltaSVD:
        device = self.S.device
        return DeltaSVD(self.S, self.U, self.V, self.frob, self.err_bound, self.iters.to(device),
                        self.nonfinite.to(device), self.basis)


def _solve(after, before, k, tol, max_iters, oversample, seed, init, backend) -> DeltaSVD:
    num, m, n = after.shape
    device = after.device
    p = default_block_size(k, n, oversample)
    out = _Outputs(num, m, n, k, p, device)
    if num == 0:
        return out.result()
    x = start_basis(n, p, seed, range(num), init, device)       # fp32 [num, n, p]
    narrow = min(p, NARROW_CERTIFICATE) if k < NARROW_CERTIFICATE < p else p
    running = torch.ones(num, dtype=torch.bool)
    certify_next = torch.zeros(num, dtype=torch.bool)
    width = torch.full((num,), p)  # columns of the next certifying pass
    trigger = torch.full((num,), float(tol), dtype=torch.float64)  # fp32 estimate that calls for a certifying pass
    for it in range(1, max_iters + 1):
        active = torch.nonzero(running).flatten()
        if active.numel() == 0:
            break
        certifying = certify_next[active] | (it == max_iters)
        if it == max_iters:
            width[active] = p  # the last pass certifies with the whole block
        passes = [(torch.float32, p, active[~certifying])]
        passes += [(torch.float64, w, active[certifying & (width[active] == w)]) for w in sorted({narrow, p})]
        for dtype, cols, group in passes:
            if group.numel() == 0:
                continue
            at = group.to(device)
            block = x[at, :, :cols]
            y, z, frob2 = delta_gram_product(after, before, block.to(dtype), group, backend)
            out.iters[group] += 1
            # a sum in fp64 is non-finite iff some entry is (fp32 entries cannot overflow it)
            finite = (torch.isfinite(frob2) & torch.isfinite(y.sum((1, 2), dtype=torch.float64))
                      & torch.isfinite(z.sum((1, 2), dtype=torch.float64))).cpu()
            out.nonfinite[group[~finite]] = True
            running[group[~finite]] = False
            if not bool(finite.any()):
                continue
            fin = finite.to(device)
            group, at, block = group[finite], at[fin], block[fin]
            step = _ritz_step(block, y[fin], z[fin], frob2[fin], k, dtype)
            bound = relative_error_bound(step.theta[:, :k].clamp_min(0).sqrt(), step.lo, step.hi).cpu()
            done = torch.zeros_like(bound, dtype=torch.bool)
            if dtype == torch.float64:
                done = (bound <= tol) | (it == max_iters)
                keep = done.to(device)
                out.store(group[done], _take(step, keep), k, x[at[keep], :, cols:])
                running[group[done]] = False
                certify_next[group] = False
                trigger[group[~done]] /= 4  # a failed certificate asks for a 4x better estimate
            else:
                ready = bound <= trigger[group]
                if narrow < p:
                    ready_narrow = _narrow_estimate(step, m, narrow, k).cpu() <= trigger[group]
                    width[group] = torch.where(ready_narrow, narrow, p)
                    ready |= ready_narrow
                certify_next[group] = ready
            go_on = ~done.to(device)
            iterated = torch.cat([step.g_vecs[go_on].float(), x[at[go_on], :, cols:]], 2)
            x[at[go_on]] = torch.linalg.qr(iterated).Q
    return out.result()


def _take(step: _RitzStep, mask: torch.Tensor) -> _RitzStep:
    return _RitzStep(*(t[mask] for t in step))
