"""What an update changed, and what it left alone ("The Path Not Taken").

For one weight matrix W0 -> W1 (both [m, n]):

- bf16 update mask: entry changed iff the two values differ after casting both
  to bf16, compared bitwise (for bf16 values this equals the paper's
  |w1 - w0| > 1e-3 * max(|w0|, |w1|)); sparsity = fraction unchanged.
- principal weights: the top ``alpha`` fraction of entries of |W0^(k)|, with
  W0^(k) the rank-k reconstruction of W0 (top-k SVD); overlap with the update
  mask = |principal & changed| / |changed|, against the random baseline alpha.
- principal angles between the top-k left (and right) singular subspaces of W0
  and W1: theta_i = arcsin of the singular values of (I - U0 U0^T) U1, in fp64,
  accurate for the tiny angles of near-identical matrices (arccos of the
  cosines is not). W1's top-k is warm-started from W0's subspace.
- spectrum drift ||s(W1) - s(W0)|| / ||s(W0)|| over the top-k singular values.
- rank-1 energy sigma_1(W1 - W0)^2 / ||W1 - W0||_F^2.
"""

from __future__ import annotations

import math

import torch

from rlsignals.ops.svd import DeltaSVD, delta_svd


def bf16_changed(w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """bool [m, n]: entries whose bf16 values differ bitwise."""
    return w0.to(torch.bfloat16).view(torch.int16) != w1.to(torch.bfloat16).view(torch.int16)


def principal_mask(top: DeltaSVD, alpha: float) -> torch.Tensor:
    """bool [m, n]: the top ``alpha`` fraction of |U S V^T| (the rank-k reconstruction)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    magnitude = ((top.U * top.S) @ top.V.T).abs()
    count = max(1, round(alpha * magnitude.numel()))
    threshold = magnitude.flatten().kthvalue(magnitude.numel() - count + 1).values
    return magnitude >= threshold


def overlap(principal: torch.Tensor, changed: torch.Tensor) -> float:
    """|principal & changed| / |changed| (NaN when nothing changed)."""
    total = int(changed.sum())
    return int((principal & changed).sum()) / total if total else math.nan


def principal_angles_deg(basis0: torch.Tensor, basis1: torch.Tensor) -> torch.Tensor:
    """Principal angles (degrees, ascending) between span(basis0) and span(basis1), [*, k] orthonormal."""
    q0, q1 = basis0.double(), basis1.double()
    residual = q1 - q0 @ (q0.T @ q1)
    sines = torch.linalg.svdvals(residual).clamp(0, 1).flip(0)
    return torch.rad2deg(torch.asin(sines))


def spectrum_drift(s0: torch.Tensor, s1: torch.Tensor) -> float:
    return float((s1.double() - s0.double()).norm() / s0.double().norm())


def module_geometry(w0: torch.Tensor, w1: torch.Tensor, *, k: int = 64, alpha: float = 0.5, tol: float = 1e-6,
                    max_iters: int | None = None, backend: str = "auto") -> dict:
    """Every metric above for one matrix pair (k is capped at min(m, n)). ``err_bound``
    in the result is the worse certified bound of the two top-k solves (relative to
    sigma_1): large when max_iters stopped them on a flat spectrum."""
    k = min(k, *w0.shape)
    top0 = delta_svd(w0, None, k, tol=tol, max_iters=max_iters, backend=backend)
    top1 = delta_svd(w1, None, k, tol=tol, max_iters=max_iters, init=top0.basis, backend=backend)
    delta = delta_svd(w1, w0, 1, tol=1e-4, max_iters=max_iters, backend=backend)
    changed = bf16_changed(w0, w1)
    principal = principal_mask(top0, alpha)
    angles_u = principal_angles_deg(top0.U, top1.U)
    angles_v = principal_angles_deg(top0.V, top1.V)
    frob = float(delta.frob)
    return {
        "shape": list(w0.shape),
        "unchanged_frac": 1.0 - float(changed.float().mean()),
        "overlap": overlap(principal, changed),
        "overlap_random": alpha,
        "angles_u_deg": angles_u.tolist(),
        "angles_v_deg": angles_v.tolist(),
        "max_angle_u_deg": float(angles_u.max()),
        "max_angle_v_deg": float(angles_v.max()),
        "spectrum_drift": spectrum_drift(top0.S, top1.S),
        "rank1_energy": float(delta.S[0]) ** 2 / frob ** 2 if frob > 0 else math.nan,
        "update_frob": frob,
        "err_bound": max(float(top0.err_bound), float(top1.err_bound)),
    }
