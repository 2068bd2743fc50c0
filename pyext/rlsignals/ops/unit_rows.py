"""Unit-normalised rows in fp32, without overflow: the math every unit_sums backend shares.

For a row h (fp32, from any input dtype) the unit vector is u = h / max(||h||, eps).
||h||^2 overflows fp32 once entries pass about 1.8e19 / sqrt(d), which fp32 and
bf16 inputs reach; such rows are scaled by s = 2^-100 first (exact: a power of
two), u = (s h) / max(||s h||, s eps). Every finite fp32 or bf16 value then
squares without overflow (< 2^56) and the scaled row's largest entry stays far
above the underflow range. The C++, CUDA and Triton kernels use the same rule.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

DOWNSCALE = 2.0 ** -100


class UnitRows(NamedTuple):
    """u [T, d] the unit rows; sq [T] = ||u||^2; norm [T] = ||s h||; inv [T] = 1 / max(norm, s eps);
    scale [T] = s (1 or 2^-100, no gradient)."""

    u: torch.Tensor
    sq: torch.Tensor
    norm: torch.Tensor
    inv: torch.Tensor
    scale: torch.Tensor


def unit_rows(x: torch.Tensor, eps: float) -> UnitRows:
    """x: fp32 (or fp64) [T, d]. Differentiable in x; a NaN row stays NaN."""
    overflow = torch.isinf(x.detach().square().sum(1))
    scale = torch.where(overflow, DOWNSCALE, 1.0).to(x.dtype)
    xs = x * scale[:, None]
    norm = torch.linalg.vector_norm(xs, dim=1)
    inv = 1.0 / torch.maximum(norm, eps * scale)
    return UnitRows(u=xs * inv[:, None], sq=xs.square().sum(1) * inv.square(), norm=norm, inv=inv, scale=scale)
