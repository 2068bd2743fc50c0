"""Rounding constants of delta_svd's certificates, and the rounding contract of one pass.

The one place that says how large a rounding error the solver assumes; ops/svd.py,
ops/svd_krylov.py, ops/svd_certify.py, ops/svd_bound.py and ops/svd_estimate.py take them
from here.
"""

from __future__ import annotations

import torch

U32 = 2.0 ** -24   # unit roundoff of fp32 (round to nearest)
U64 = 2.0 ** -53   # unit roundoff of fp64
# Relative slack on an fp64 spectral norm, square root or eigenvalue taken by the solver (their
# rounding is a few U64; 1e-12 leaves a wide margin).
FP64_SLACK = 1e-12
# Relative slack on the fp64 2-norm of a matrix with orthonormal columns (a restart's C_r).
ORTHO_SLACK = 1e-12


def pass_rounding(m: int, n: int, w: int, dtype: torch.dtype) -> float:
    """Bound on ||fl(G P) - G P||_2 / ||dW||_F^2 per unit of ||P||_F for a pass in ``dtype``:
    each entry of Y and Z is a sum of n resp. m products in any order, and D is rounded
    once, so |error| <= (gamma_n + gamma_m + 3u) |dW|^T |dW| |P| entrywise (generous constants).
    Underflow adds an absolute error that delta_svd keeps far inside the "+ 64" by solving any
    dW outside fp32's safe range on a copy scaled by a power of two (ops/svd_scale.py)."""
    u = torch.finfo(dtype).eps / 2
    return (4 * (m + n + w) + 64) * u
