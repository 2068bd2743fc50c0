"""Triton kernel for unit_sums: per row range r,

    sums[r] = sum_{i in r} h_i / max(||h_i||, eps)    (fp32 [R, d])
    sqsums[r] = sum_{i in r} ||u_i||^2                 (fp32 [R])

One program per range. It walks the range ROWS rows at a time, holding a
[ROWS, BLOCK_D] tile (BLOCK_D = next power of two >= d): each element is loaded
once, converted to fp32 at once, squared for the row norms, scaled and added
to an fp32 accumulator kept in registers. Works under TRITON_INTERPRET=1
(fp32 arithmetic only, block masks only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
        sumsq = tl.sum(x * x, axis=1)
        norm = tl.sqrt(sumsq)
        # NaN norms fall to eps here, but x * inv stays NaN, as it must.
        inv = 1.0 / tl.where(norm > eps, norm, eps)
        acc += tl.sum(x * inv[:, None], axis=0)
        sq += sumsq * inv * inv
    tl.store(sums_ptr + r.to(tl.int64) * d + cols, acc, mask=col_ok)
    tl.store(sq_ptr + r, tl.sum(sq, axis=0))


def unit_sums(hidden: torch.Tensor, offsets: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [T, d] (rows contiguous), offsets [R + 1] int64 on hidden's device."""
    num_ranges = offsets.numel() - 1
    d = hidden.shape[1]
    sums = torch.empty(num_ranges, d, dtype=torch.float32, device=hidden.device)
    sqsums = torch.empty(num_ranges, dtype=torch.float32, device=hidden.device)
    if num_ranges == 0:
        return sums, sqsums
    block_d = triton.next_power_of_2(d)
    rows = max(1, min(8, 8192 // block_d))
    num_warps = 4 if block_d <= 1024 else 8 if block_d <= 4096 else 16
    _unit_sums_kernel[(num_ranges,)](hidden, offsets, sums, sqsums, d, hidden.stride(0), eps,
                                     BLOCK_D=block_d, ROWS=rows, num_warps=num_warps)
    return sums, sqsums
