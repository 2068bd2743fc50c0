"""Certified bounds on the top eigenvalues of G = dW^T dW from a Rayleigh-Ritz step.

Setting. V [n, p] has orthonormal columns, Theta = diag(theta_1 >= ... >= theta_p) are the
Ritz values (eigenvalues of V^T G V) with Ritz vectors as the columns of V, and
R = G V - V Theta is the residual. lambda_1 >= lambda_2 >= ... are the eigenvalues of G
(lambda_i = sigma_i^2) and trace(G) = ||dW||_F^2 = F^2. For j <= p, V_j, Theta_j, R_j
are the first j columns / values.

Lower bound (Cauchy interlacing): lambda_i >= lambda_i(V_j^T G V_j) >= theta_i - s_j, where
s_j >= ||V_j^T G V_j - Theta_j||_2 (zero in exact arithmetic; a rounding term here).

Upper bound (proved here). Complete V_j to an orthonormal basis [V_j, V_perp]. In it
    G = [[H, E^T], [E, C]],   H = V_j^T G V_j,  E = V_perp^T G V_j = V_perp^T R_j,  C = V_perp^T G V_perp.
(1) ||E||_2 <= ||R_j||_2 =: e_j.
(2) C is PSD, so lambda_max(C) <= trace(C) = F^2 - trace(H) <= F^2 - sum_{l<=j} theta_l + j s_j =: c_j.
(3) For x > lambda_max(C), Sylvester's inertia theorem on the Schur complement of C - xI
    (negative definite) gives
        #{eigenvalues of G above x} = #{eigenvalues of H + E^T (xI - C)^{-1} E above x}
                                    <= #{l : theta_l + s_j + e_j^2 / (x - c_j) > x},
    since H + E^T (xI - C)^{-1} E <= Theta_j + s_j I + e_j^2 / (x - c_j) I (Weyl).
(4) Take x_i = the root above max(theta_i + s_j, c_j) of (x - theta_i - s_j)(x - c_j) = e_j^2.
    Every l >= i has theta_l <= theta_i, so at most i - 1 terms count in (3): fewer than i
    eigenvalues of G exceed x_i, i.e. lambda_i <= x_i, for every i <= j.
Hence lambda_i <= min_{j = i..p} x_i(j) (and <= F^2). With d = theta_i + s_j - c_j,
    x_i = max(theta_i + s_j, c_j) + 2 e_j^2 / (|d| + sqrt(d^2 + 4 e_j^2)),
which is <= theta_i + s_j + e_j^2 / d when d > 0 (quadratic in the residual: tight once
the top j Ritz values hold most of F^2 and have converged) and never above
max(theta_i + s_j, c_j) + e_j (first order, the honest answer on a flat spectrum, where
no cheap certificate can be tight: a trace and a residual cannot tell a dense spectrum's
top eigenvalue from its neighbours).

Rounding. To certify, the caller passes ``margin`` >= the 2-norm of (computed G V) - (exact
G V) for its V, and ``frob2`` >= F^2; e_j and s_j are inflated by ``margin`` here, so the
bounds hold for the exact G. A negative ``margin`` (and a ``frob2`` rounded down) instead
removes a rounding floor: an optimistic estimate of what a more accurate pass would
certify, used only to decide when to run one.
"""

from __future__ import annotations

import torch

from rlsignals.ops.svd_rounding import FP64_SLACK


def _root_above(t: torch.Tensor, c: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Smallest x >= max(t, c) with (x - t)(x - c) >= e^2, without cancellation."""
    d = t - c
    gap = d.abs()
    shift = 2 * e.square() / (gap + torch.sqrt(d.square() + 4 * e.square()))
    return torch.maximum(t, c) + torch.where(e > 0, shift, torch.zeros_like(shift))


def eigenvalue_bounds(theta: torch.Tensor, rtr: torch.Tensor, vtr: torch.Tensor, frob2: torch.Tensor,
                      margin: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """lo <= lambda_i(G) <= hi for i = 1..k (module docstring), certified when margin >= 0.

    theta: fp64 [b, p], descending Ritz values. rtr: R^T R [b, p, p]. vtr: V^T R [b, p, p]
    (V the Ritz vectors). frob2: [b] upper bound on ||dW||_F^2. margin: [b] bound on the
    rounding of G V. Returns (lo, hi), fp64 [b, k].
    """
    p = theta.shape[1]
    j = torch.arange(k, p + 1, device=theta.device)                       # block sizes, [J]
    inside = torch.arange(p, device=theta.device)[None, :] < j[:, None]    # [J, p]
    lead = inside[:, :, None] & inside[:, None, :]                         # leading j x j blocks
    # 2-norm of R_j: top eigenvalue of its Gram, zero-padded to p x p (same top eigenvalue).
    top = torch.linalg.eigvalsh(rtr[:, None] * lead).amax(-1).clamp_min(0)            # [b, J]
    e = (torch.sqrt(top) * (1 + FP64_SLACK) + margin[:, None]).clamp_min(0)
    fro = torch.sqrt((vtr.square()[:, None] * lead).sum((-2, -1)))                   # >= ||V_j^T R_j||_2
    s = (fro * (1 + FP64_SLACK) + margin[:, None]).clamp_min(0)
    c = (frob2[:, None] - theta.cumsum(1)[:, j - 1] + j * s).clamp_min(0)
    x = _root_above(theta[:, None, :k] + s[..., None], c[..., None], e[..., None])   # [b, J, k]
    hi = torch.minimum(x.amin(1) * (1 + FP64_SLACK), frob2[:, None])
    lo = (theta[:, :k] - s[:, :1]).clamp_min(0)
    return lo, hi


def relative_error_bound(s_hat: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Bound on max_i |s_hat_i - sigma_i| / sigma_1 given lo_i <= sigma_i^2 <= hi_i.

    s_hat, lo, hi: fp64 [b, k]. 0 where hi_1 = 0 (dW = 0, s_hat = 0); inf where
    sigma_1 cannot be bounded away from 0.
    """
    sigma_lo, sigma_hi = lo.sqrt(), hi.sqrt()
    worst = torch.maximum(sigma_hi - s_hat, s_hat - sigma_lo).amax(1).clamp_min(0)
    err = worst / sigma_lo[:, 0] * (1 + FP64_SLACK)
    zero = (hi[:, 0] == 0) & (s_hat.abs().amax(1) == 0)
    return torch.where(zero, torch.zeros_like(err), torch.nan_to_num(err, nan=torch.inf))
