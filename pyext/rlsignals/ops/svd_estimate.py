"""A-posteriori error estimates of Ritz values, the tests ARPACK/PROPACK-style solvers stop on.

Setting (as in ops/svd_bound.py): G = dW^T dW with eigenvalues lambda_1 >= lambda_2 >= ...
(lambda_i = sigma_i^2); a Rayleigh-Ritz step on a subspace gives Ritz values
theta_1 >= theta_2 >= ... and Ritz vectors v_i with residuals r_i = ||G v_i - theta_i v_i||.

Two classical facts, for a unit v_i:
  - residual (Weyl/Krylov-Bogoliubov): SOME eigenvalue lambda lies in [theta_i - r_i, theta_i + r_i];
  - gap refinement (Kato-Temple): if the other eigenvalues are at distance >= delta_i from
    theta_i, that eigenvalue is within r_i^2 / delta_i.
Production solvers take delta_i from the Ritz values themselves (the distance from theta_i
to the nearest other Ritz value) and assume the eigenvalue found is lambda_i. Both are
assumptions, not proofs: a missed eigenvalue (an eigenvector nearly orthogonal to the
subspace) or a spectrum denser than the Ritz values show makes the estimate optimistic.
That is why ``err_bound`` (ops/svd_bound.py) exists next to it.

For singular values: with e_i = min(r_i, r_i^2 / delta_i) and s_i = sqrt(theta_i),
sigma_i^2 in [theta_i - e_i, theta_i + e_i] gives |sigma_i - s_i| <= max(sqrt(theta_i + e_i) - s_i,
s_i - sqrt(max(theta_i - e_i, 0))), computed without cancellation below.
"""

from __future__ import annotations

import math

import torch

# Relative rounding of an fp32-accumulated Ritz value (a few fp32 ulps): the floor of
# every estimate; the returned S is fp32 anyway, so its own rounding is 2^-24 alone.
ROUNDING_FLOOR = 2.0 ** -24


def singular_errors(theta: torch.Tensor, lam_err: torch.Tensor) -> torch.Tensor:
    """Bound on |sigma - sqrt(theta)| given |sigma^2 - theta| <= lam_err (fp64, any shape)."""
    theta = theta.clamp_min(0)
    s = theta.sqrt()
    above = lam_err / (torch.sqrt(theta + lam_err) + s)
    below_root = torch.sqrt((theta - lam_err).clamp_min(0))
    below = torch.where(theta >= lam_err, lam_err / (s + below_root), s)
    out = torch.maximum(above, below)
    return torch.where(lam_err == 0, torch.zeros_like(out), out)


def ritz_estimates(theta: torch.Tensor, resid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimate of max_i |S_i - sigma_i| / sigma_1, relative residuals max_i r_i / theta_1).

    theta: fp64 [b, K] all Ritz values of the subspace, descending (K >= k).
    resid: fp64 [b, k] residual norms r_i of the top k Ritz pairs.
    The estimate uses e_i = min(r_i, r_i^2 / delta_i), delta_i the distance from theta_i to
    the nearest other Ritz value, floored at ROUNDING_FLOOR; 0 for a zero delta.
    """
    top = theta[:, :k]
    dist = (top[:, :, None] - theta[:, None, :]).abs()
    own = torch.arange(k, device=theta.device)
    dist[:, own, own] = math.inf
    gap = dist.amin(-1)                                                         # [b, k]
    lam_err = torch.minimum(resid, resid.square() / gap)
    s1 = theta[:, 0].clamp_min(0).sqrt()
    zero = s1 == 0
    est = singular_errors(top, lam_err).amax(1) / torch.where(zero, 1, s1)
    est = torch.where(zero, torch.zeros_like(est), est.clamp_min(ROUNDING_FLOOR))
    rel_resid = torch.where(zero, torch.zeros_like(est), resid.amax(1) / torch.where(zero, 1, theta[:, 0]))
    return est, rel_resid
