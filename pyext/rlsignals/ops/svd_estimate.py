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

Vectors (Davis-Kahan sin-theta): if the other eigenvalues are at distance >= delta_i from
theta_i, sin(v_i, the eigenvector of that eigenvalue) <= r_i / delta_i. With delta_i again
taken from the Ritz values, r_i / delta_i is the estimate of the angle of v_i (for i = 1 on
a spike over a bulk, theta_2 sits at the bulk's edge after a few passes, so delta_1 is the
true gap to within a few percent).

For singular values: with e_i = min(r_i, r_i^2 / delta_i) and s_i = sqrt(theta_i),
sigma_i^2 in [theta_i - e_i, theta_i + e_i] gives |sigma_i - s_i| <= max(sqrt(theta_i + e_i) - s_i,
s_i - sqrt(max(theta_i - e_i, 0))), computed without cancellation below.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from rlsignals.ops.svd_rounding import U32

# The floor of every estimate: the returned S is fp32, so its own rounding is U32 alone.
ROUNDING_FLOOR = U32


def singular_errors(theta: torch.Tensor, lam_err: torch.Tensor) -> torch.Tensor:
    """Bound on |sigma - sqrt(theta)| given |sigma^2 - theta| <= lam_err (fp64, any shape)."""
    theta = theta.clamp_min(0)
    s = theta.sqrt()
    above = lam_err / (torch.sqrt(theta + lam_err) + s)
    below_root = torch.sqrt((theta - lam_err).clamp_min(0))
    below = torch.where(theta >= lam_err, lam_err / (s + below_root), s)
    out = torch.maximum(above, below)
    return torch.where(lam_err == 0, torch.zeros_like(out), out)


class RitzEstimates(NamedTuple):
    """Estimates for the top k Ritz pairs, each fp64 [b] (0 for a zero delta).

    value: max_i |S_i - sigma_i| / sigma_1, floored at ROUNDING_FLOOR.
    vector: max_i r_i / delta_i, the estimated sine of the angle of v_i to the true v_i.
    resid: max_i r_i / theta_1, the relative residual.
    gap: min_i delta_i / theta_1, the relative Ritz gap the vector estimate divides by (inf
        with no other Ritz value or a zero delta).
    """

    value: torch.Tensor
    vector: torch.Tensor
    resid: torch.Tensor
    gap: torch.Tensor


def ritz_estimates(theta: torch.Tensor, resid: torch.Tensor, k: int) -> RitzEstimates:
    """Error estimates of the top k Ritz pairs (module docstring).

    theta: fp64 [b, K] all Ritz values of the subspace, descending (K >= k).
    resid: fp64 [b, k] residual norms r_i of the top k Ritz pairs.
    Both use delta_i, the distance from theta_i to the nearest other Ritz value:
    e_i = min(r_i, r_i^2 / delta_i) for the values, r_i / delta_i for the vectors; with no
    other Ritz value (K = 1) e_i = r_i and the vector estimate is inf (unless r_i = 0).
    """
    top = theta[:, :k]
    dist = (top[:, :, None] - theta[:, None, :]).abs()
    own = torch.arange(k, device=theta.device)
    dist[:, own, own] = math.inf
    gap = dist.amin(-1)                                                         # [b, k]
    known = torch.isfinite(gap)  # no other Ritz value (K = 1): nothing to refine or bound with
    refined = torch.where(resid > 0, resid.square() / gap, 0.0)  # 0, not NaN, for r = delta = 0
    lam_err = torch.where(known, torch.minimum(resid, refined), resid)
    s1 = theta[:, 0].clamp_min(0).sqrt()
    zero = s1 == 0
    est = singular_errors(top, lam_err).amax(1) / torch.where(zero, 1, s1)
    est = torch.where(zero, torch.zeros_like(est), est.clamp_min(ROUNDING_FLOOR))
    vector = torch.where(resid > 0, torch.where(known, resid / gap, math.inf), 0.0).amax(1)
    rel_resid = resid.amax(1) / torch.where(zero, 1, theta[:, 0])
    rel_gap = torch.where(zero, math.inf, gap.amin(1) / torch.where(zero, 1, theta[:, 0]))
    nothing = torch.zeros_like(est)
    return RitzEstimates(est, torch.where(zero, nothing, vector), torch.where(zero, nothing, rel_resid), rel_gap)
