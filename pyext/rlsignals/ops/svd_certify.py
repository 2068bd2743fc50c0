"""The certificate stage of delta_svd: err_bound for the members that have stopped, from
the fp32 passes' data or, where only a more accurate pass can certify, from one fp64 pass
on their top Ritz vectors (the bound itself: ops/svd_bound.py).

The fp64 pass costs the most (fp64 lanes are half as wide), so it runs only where it is
predicted to certify, on the narrowest of CERTIFICATE_WIDTHS top Ritz vectors predicted to
(whatever the block size p), or where the fp32 estimate has stalled above tol.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from rlsignals.ops.svd_bound import eigenvalue_bounds, relative_error_bound
from rlsignals.ops.svd_estimate import ritz_estimates
from rlsignals.ops.svd_krylov import Krylov, combine, orthonormal, ritz_block
from rlsignals.ops.svd_outputs import Outputs
from rlsignals.ops.svd_rounding import U32, U64, pass_rounding
from rlsignals.ops.svd_settings import Settings

# The fp32 bound is taken on the top CERTIFICATE_RITZ Ritz vectors; the fp64 pass runs on the
# narrowest of CERTIFICATE_WIDTHS predicted to certify.
CERTIFICATE_RITZ = 32
CERTIFICATE_WIDTHS = (8, 16)


class Certificate(NamedTuple):
    """Stopped members whose certificate needs the fp64 pass on ``vecs``."""

    members: torch.Tensor       # int64 [b] (CPU)
    vecs: torch.Tensor          # fp64 [b, n, w] orthonormal basis of G (top w Ritz vectors)
    rest: torch.Tensor          # fp32 [b, n, max(p - w, 0)] the next Ritz vectors (kept in basis)
    undetermined: torch.Tensor  # bool [b] stopped with the top not separated


def _bound_from(theta, rtr, vtr, margin, frob2, s_hat, k):
    lo, hi = eigenvalue_bounds(theta, rtr, vtr, frob2, margin, k)
    return relative_error_bound(s_hat, lo, hi)


def _s_hat(theta: torch.Tensor, scale: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """The returned S (sqrt(theta scale) unit, rounded to fp32) in units of sqrt(scale):
    fp64 [b, k], what the bound is taken on (theta fp64 [b, k]; scale, unit fp64 [b])."""
    s32 = (torch.sqrt(theta.clamp_min(0) * scale[:, None]) * unit[:, None]).float()
    return s32.double() / unit[:, None] / scale.sqrt()[:, None]


def fp32_certificates(state: Krylov, theta: torch.Tensor, coef: torch.Tensor, unit: torch.Tensor,
                      settings: Settings, *, certified: bool = True, wide: bool = True):
    """From the fp32 data at hand (``unit``: fp64 [b], Outputs.unit of the members): the top
    Ritz vectors V (fp64 [b, n, w], w = min(K, max(CERTIFICATE_RITZ, p)), or min(K, p) unless
    ``wide``), the certified bound on them
    (None unless ``certified``), and {width: the bound an fp64 pass on the first ``width`` of
    them is predicted to give} (the typical fp32 rounding taken off the residuals and frob2,
    as ops/svd_bound.py describes for a negative margin)."""
    k, p, m = settings.k, settings.p, settings.m
    n = state.qt.shape[2]
    if certified:
        w = min(state.width, max(CERTIFICATE_RITZ, p) if wide else p)
    else:
        w = min(state.width, max(CERTIFICATE_WIDTHS))
    vecs, rtr, vtr, margin = ritz_block(state, coef[:, :, :w], theta[:, :w])
    frob2 = 1 + (n + m + 4) * 1.01 * U32                      # >= ||dW||_F^2 / scale (fp32 pass)
    s_hat = _s_hat(theta[:, :k], state.scale, unit)
    full = torch.full_like(state.scale, frob2)
    bound = _bound_from(theta[:, :w], rtr, vtr, margin * frob2, full, s_hat, k) if certified else None
    predicted = {}
    for width in sorted({min(c, w) for c in CERTIFICATE_WIDTHS}):
        if width < k:
            continue
        floor = math.sqrt(width * (m + n)) * U32
        predicted[width] = _bound_from(theta[:, :width], rtr[:, :width, :width], vtr[:, :width, :width],
                                       torch.full_like(state.scale, -floor), full * (1 - floor), s_hat, k)
    return vecs, bound, predicted


def certificate_in_reach(theta: torch.Tensor, tol: float) -> torch.Tensor:
    """bool [b]: False where no certificate on the top max(CERTIFICATE_WIDTHS) Ritz vectors can
    meet tol, from the Ritz values alone (no residuals needed). The bound's hi_1 is at least
    min_j max(theta_1, c_j) with c_j >= ||dW||_F^2 - (theta_1 + ... + theta_j) (ops/svd_bound.py),
    so where that exceeds theta_1 (1 + 2 tol)^2 the relative bound exceeds about 2 tol. Theta is
    in units of the fp32 pass's ||dW||_F^2, taken as 1 - 2^-20 to stay on the safe side."""
    w = min(theta.shape[1], max(CERTIFICATE_WIDTHS))
    rest = (1 - 2.0 ** -20) - theta[:, :w].cumsum(1)
    lowest_hi = torch.maximum(theta[:, :1], rest).amin(1)
    return lowest_hi <= theta[:, 0] * (1 + 2 * tol) ** 2


def predicted_to_certify(state: Krylov, theta: torch.Tensor, coef: torch.Tensor, unit: torch.Tensor,
                         settings: Settings) -> torch.Tensor:
    """bool [b]: whether an fp64 pass on some width of CERTIFICATE_WIDTHS is predicted to meet tol."""
    _, _, predicted = fp32_certificates(state, theta, coef, unit, settings, certified=False)
    return torch.stack(list(predicted.values())).amin(0) <= settings.tol


def conclude(state: Krylov, members: torch.Tensor, theta: torch.Tensor, coef: torch.Tensor,
             estimate: torch.Tensor, vector: torch.Tensor, undetermined: torch.Tensor,
             certify_possible: torch.Tensor, out: Outputs) -> Certificate | None:
    """Finish the stopped members of ``state`` from the fp32 data (``estimate``, ``vector``: fp64
    [b], the value and vector estimates of ops/svd_estimate.py; ``undetermined``: bool [b],
    stopped with the top not separated), or queue their fp64 pass (where
    ``certify_possible``: a pass is left to them): where it is predicted to certify and the
    fp32 bound does not, or where the vectors are short of vector_tol though their top is
    separated (the pass is a block power step on the top Ritz vectors)."""
    settings = out.settings
    k, p, tol = settings.k, settings.p, settings.tol
    # a certificate out of reach needs only the honest (loose) bound: from the first p Ritz vectors
    wide = bool(certificate_in_reach(theta, tol).any())
    unit = out.unit[members.to(out.unit.device)]
    vecs, bound, predicted = fp32_certificates(state, theta, coef, unit, settings, wide=wide)
    w = vecs.shape[2]
    # the narrowest width predicted to certify; the whole block where the estimate has not
    # met tol (fp32 stalled: the fp64 pass refines) and no width is predicted to certify
    pick = torch.where(estimate > tol, min(max(CERTIFICATE_WIDTHS), w), 0)
    for width in sorted(predicted, reverse=True):
        pick = torch.where(predicted[width] <= tol, width, pick)
    refine = (vector > settings.vector_tol) & ~undetermined
    certify = ((bound > tol) | refine) & (pick > 0) & certify_possible.to(bound.device)
    now = ~certify
    if bool(now.any()):
        left = combine(state.yt[now].double(), coef[now][:, :, :k])
        out.store(members[now.cpu()], state.scale[now], theta[now][:, :k], left, vecs[now][:, :, :k],
                  bound[now], estimate[now], vector[now], undetermined[now], vecs[now][:, :, :p])
    if not bool(certify.any()):
        return None
    width = int(pick[certify].max())  # one width per call: the widest any member needs
    sel = certify
    # one block power step for free: G V (the fp32 images at hand) spans better top vectors
    iterated = orthonormal(combine(state.zt[sel], coef[sel][:, :, :width]))
    return Certificate(members[sel.cpu()], iterated, vecs[sel][:, :, width:p].float(), undetermined[sel])


def certify(after: torch.Tensor, before: torch.Tensor | None, cert: Certificate, out: Outputs) -> None:
    """The fp64 pass on the queued Ritz vectors, and the results from it (ops/svd_bound.py)."""
    settings = out.settings
    k, m = settings.k, settings.m
    x = cert.vecs
    y, z, frob2, finite = settings.rows.product(after, before, x, cert.members, settings.backend)
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
    margin = math.sqrt(w) * pass_rounding(m, n, w, torch.float64) + 2 * (orth_err + (n + w) * U64)
    f2 = 1 + (n + m + 4) * U64
    margin = margin * f2
    s_hat = _s_hat(theta[:, :k], frob2, out.unit[cert.members[finite].to(out.unit.device)])
    rtr, vtr = resid.mT @ resid, vecs.mT @ resid
    bound = _bound_from(theta, rtr, vtr, margin, torch.full_like(frob2, f2), s_hat, k)
    estimates = ritz_estimates(theta, torch.linalg.vector_norm(resid[:, :, :k], dim=1), k)
    left = y.double() @ coef[:, :, :k]
    basis = torch.cat([vecs, cert.rest[fin].double()], 2)[:, :, :out.basis.shape[2]]
    out.store(cert.members[finite], frob2, theta[:, :k], left, vecs[:, :, :k], bound, estimates.value,
              estimates.vector, cert.undetermined[fin], basis)
