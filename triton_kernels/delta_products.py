"""Triton kernel for delta_products: for member i of the block list and
dW = after[members[i]] - before[members[i]] ([m, n], rows contiguous), X_i [n, p]:

    Y_i = dW X_i          [m, p]
    Z_i = dW^T Y_i        [n, p]
    rowsq[i, r] = sum_j dW[r, j]^2        (the caller adds the rows in fp64)

One program per (block of BLOCK_M rows, member). It walks its rows' columns
twice, BLOCK_N at a time: first Y_rows = D X (D = the difference tile, formed
in the accumulation dtype from loads in the input dtype), then Z += D^T Y_rows
with atomic adds, so after and before are read from memory once and the
second walk hits L2. The accumulation dtype is X's (fp32 or fp64); fp32 dots
use input_precision="ieee" (no TF32, whose 10-bit products would stall the
iteration), fp64 products a multiply-and-sum. Atomic adds make the order of Z's row sums vary on a
GPU (the rounding bound holds for any order); the interpreter is sequential.
Works under TRITON_INTERPRET=1 (loads cast to the accumulation dtype at once;
block masks only). Launched through torch.library.wrap_triton, so the launcher
is traceable as a torch.library.triton_op (ops/registration.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton


@triton.jit
def _delta_tile(a_rows, b_rows, cols, row_ok, n, acc: tl.constexpr, HAS_BEFORE: tl.constexpr):
    """[BLOCK_M, BLOCK_N] tile of after - before in the accumulation dtype (0 outside)."""
    mask = row_ok[:, None] & (cols < n)[None, :]
    d = tl.load(a_rows + cols[None, :], mask=mask, other=0.0).to(acc)
    if HAS_BEFORE:
        d = d - tl.load(b_rows + cols[None, :], mask=mask, other=0.0).to(acc)
    return d


@triton.jit
def _matmul(a, b, ACC64: tl.constexpr):
    """a @ b in the accumulation dtype: tl.dot for fp32 (no TF32), a multiply-and-sum for
    fp64 (tl.dot's fp64 support varies across Triton versions and GPUs)."""
    if ACC64:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _delta_products_kernel(a_ptr, b_ptr, x_ptr, y_ptr, z_ptr, sq_ptr, mem_ptr, m, n, p,
                       a_batch, a_row, b_batch, b_row,
                       HAS_BEFORE: tl.constexpr, ACC64: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_m = tl.program_id(0)
    i = tl.program_id(1)
    member = tl.load(mem_ptr + i).to(tl.int64)
    acc = x_ptr.dtype.element_ty
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < m
    kcols = tl.arange(0, BLOCK_P)
    k_ok = kcols < p
    a_rows = a_ptr + member * a_batch + rows[:, None].to(tl.int64) * a_row
    b_rows = b_ptr + member * b_batch + rows[:, None].to(tl.int64) * b_row
    x_base = x_ptr + i.to(tl.int64) * n * p
    z_base = z_ptr + i.to(tl.int64) * n * p

    y = tl.zeros([BLOCK_M, BLOCK_P], dtype=acc)
    sq = tl.zeros([BLOCK_M], dtype=acc)
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        d = _delta_tile(a_rows, b_rows, cols, row_ok, n, acc, HAS_BEFORE)
        sq += tl.sum(d * d, axis=1)
        x_mask = (cols < n)[:, None] & k_ok[None, :]
        xt = tl.load(x_base + cols[:, None] * p + kcols[None, :], mask=x_mask, other=0.0)
        y += _matmul(d, xt, ACC64)
    out_mask = row_ok[:, None] & k_ok[None, :]
    tl.store(y_ptr + i.to(tl.int64) * m * p + rows[:, None] * p + kcols[None, :], y, mask=out_mask)
    tl.store(sq_ptr + i.to(tl.int64) * m + rows, sq, mask=row_ok)

    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        d = _delta_tile(a_rows, b_rows, cols, row_ok, n, acc, HAS_BEFORE)
        zt = _matmul(tl.trans(d), y, ACC64)
        z_mask = (cols < n)[:, None] & k_ok[None, :]
        tl.atomic_add(z_base + cols[:, None] * p + kcols[None, :], zt, mask=z_mask)


def delta_products(after: torch.Tensor, before: torch.Tensor | None, x: torch.Tensor,
                   members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """after/before [B, m, n] (rows contiguous), x [b, n, p] contiguous fp32/fp64 (p <= 32),
    members int64 [b] on x's device. Returns Y [b, m, p], Z [b, n, p] (x's dtype) and
    frob2 fp64 [b]."""
    b, n, p = x.shape
    m = after.shape[1]
    y = torch.empty(b, m, p, dtype=x.dtype, device=x.device)
    z = torch.zeros(b, n, p, dtype=x.dtype, device=x.device)
    rowsq = torch.empty(b, m, dtype=x.dtype, device=x.device)
    if b == 0 or m == 0:
        return y, z, rowsq.sum(1, dtype=torch.float64)
    acc64 = x.dtype == torch.float64
    if x.device.type == "cpu":  # the interpreter: few, large programs
        block_m, block_n = 32, 32
    else:  # fp64's multiply-and-sum holds a BLOCK_M x BLOCK_N x BLOCK_P product
        block_m, block_n = (16, 16) if acc64 else (64, 64)
    ref = after if before is None else before
    grid = (triton.cdiv(m, block_m), b)
    wrap_triton(_delta_products_kernel)[grid](
        after, ref, x, y, z, rowsq, members, m, n, p, after.stride(0), after.stride(1), ref.stride(0),
        ref.stride(1), HAS_BEFORE=before is not None, ACC64=acc64, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_P=max(16, triton.next_power_of_2(p)), num_warps=4)
    return y, z, rowsq.sum(1, dtype=torch.float64)
