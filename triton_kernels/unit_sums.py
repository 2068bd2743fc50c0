"""Triton kernel for unit_sums: per row range r,

    sums[r] = sum_{i in r} h_i / max(||h_i||, eps)    (fp32 [R, d])
    sqsums[r] = sum_{i in r} ||u_i||^2                 (fp32 [R])

One program per range. It walks the range ROWS rows at a time, holding a
[ROWS, BLOCK_D] tile (BLOCK_D = next power of two >= d): each element is loaded
once, converted to fp32 at once, squared for the row norms, scaled and added
to an fp32 accumulator kept in registers. A row whose squared norm
overflows fp32 (entries above about 1.8e19, as fp32 and bf16 allow) is
normalised after an exact scaling by 2^-100 (the rule of
pyext/rlsignals/ops/unit_rows.py): its squares are summed again from the tile,
which costs arithmetic only. Works under TRITON_INTERPRET=1 (fp32 arithmetic
only, block masks only). Launched through torch.library.wrap_triton, so the
launcher is traceable as a torch.library.triton_op (ops/registration.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

DOWNSCALE = 2.0 ** -100
FLOAT32_MAX = 3.4028234663852886e38


@triton.jit
def _unit_sums_kernel(h_ptr, off_ptr, sums_ptr, sq_ptr, d, row_stride, eps,
                      BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
    r = tl.program_id(0)
    start = tl.load(off_ptr + r)
    end = tl.load(off_ptr + r + 1)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < d
    tile_rows = tl.arange(0, ROWS)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    sq = tl.zeros([ROWS], dtype=tl.float32)
    for first in range(start, end, ROWS):
        rows = first + tile_rows
        mask = (rows < end)[:, None] & col_ok[None, :]
        x = tl.load(h_ptr + rows[:, None].to(tl.int64) * row_stride + cols[None, :],
                    mask=mask, other=0.0).to(tl.float32)
        scale = tl.where(tl.sum(x * x, axis=1) > FLOAT32_MAX, DOWNSCALE, 1.0)
        x = x * scale[:, None]
        sumsq = tl.sum(x * x, axis=1)
        norm = tl.sqrt(sumsq)
        # NaN norms fall to eps here, but x * inv stays NaN, as it must.
        inv = 1.0 / tl.where(norm > eps * scale, norm, eps * scale)
        acc += tl.sum(x * inv[:, None], axis=0)
        sq += sumsq * inv * inv
    tl.store(sums_ptr + r.to(tl.int64) * d + cols, acc, mask=col_ok)
    tl.store(sq_ptr + r, tl.sum(sq, axis=0))


def unit_sums(hidden: torch.Tensor, offsets: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [T, d] (rows contiguous), offsets [R + 1] int64 on hidden's device.
    Returns (sums fp32 [R, d], sqsums fp32 [R])."""
    num_ranges = offsets.numel() - 1
    d = hidden.shape[1]
    sums = torch.empty(num_ranges, d, dtype=torch.float32, device=hidden.device)
    sqsums = torch.empty(num_ranges, dtype=torch.float32, device=hidden.device)
    if num_ranges == 0:
        return sums, sqsums
    block_d = triton.next_power_of_2(d)
    rows = max(1, min(8, 8192 // block_d))
    num_warps = 4 if block_d <= 1024 else 8 if block_d <= 4096 else 16
    wrap_triton(_unit_sums_kernel)[(num_ranges,)](hidden, offsets, sums, sqsums, d, hidden.stride(0), eps,
                                                  BLOCK_D=block_d, ROWS=rows, num_warps=num_warps)
    return sums, sqsums
