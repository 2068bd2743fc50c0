"""The one pass behind each delta_svd iteration: Z = dW^T (dW X), fused.

For member b of a batch, dW = after[b] - before[b] ([m, n], rows contiguous; no
``before`` means dW = after[b]) and a skinny block X [n, p]:

    Y     = dW X           [m, p]
    Z     = dW^T Y         [n, p]     (= G X, G = dW^T dW)
    frob2 = ||dW||_F^2     fp64 scalar

all in ONE pass over the rows of ``after`` and ``before``: for each block of
rows, D = after[rows] - before[rows] is formed in the accumulation dtype (never
all of dW at once), then Y[rows] = D X and Z += D^T Y[rows], and the squares of
D are summed. The accumulation dtype is X's dtype: fp32 for the iterations,
fp64 for the certifying pass of ``ops/svd.py``.

Orientation. With rows contiguous, a row of D is all a thread needs for both
products, so the one-pass form always iterates on the column side
G = dW^T dW (n x n). An m < n matrix costs the same per element as an m > n one
(two multiply-adds per element and per column of X); the only difference is
the size of the Z accumulator, n x p. ``delta_svd`` therefore never transposes;
it only makes rows contiguous.

The kernels are the op delta_products (``ops/registration.py``); its outputs never
require grad, on every backend.

Rounding contract every backend meets (``ops/svd.py`` certifies with it):
entries of D are the inputs' difference rounded once to the accumulation dtype;
each entry of Y and Z is a sum of n (resp. m) products in any order; frob2 sums
the squares of each row in the accumulation dtype and the rows in fp64.
"""

from __future__ import annotations

import torch

from rlsignals.ops.backends import kernel

# Widest X a compiled kernel takes in one pass; wider blocks run in column groups.
MAX_KERNEL_COLS = 32
# Rows per chunk of the torch backend: about 4 Mi elements of D at a time.
_TORCH_CHUNK_ELEMS = 1 << 22


@torch.no_grad()
def delta_products_torch(after: torch.Tensor, before: torch.Tensor | None, x: torch.Tensor,
                       members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch version of the delta_products op (same arguments and results; no gradient)."""
    b, n, p = x.shape
    m = after.shape[1]
    y = x.new_empty(b, m, p)
    z = x.new_zeros(b, n, p)
    frob2 = torch.zeros(b, dtype=torch.float64, device=x.device)
    rows = max(1, _TORCH_CHUNK_ELEMS // n)
    for i, member in enumerate(members.tolist()):
        for start in range(0, m, rows):
            d = after[member, start:start + rows].to(x.dtype)
            if before is not None:
                d = d - before[member, start:start + rows].to(x.dtype)
            y_rows = torch.mm(d, x[i])
            y[i, start:start + rows] = y_rows
            z[i].addmm_(d.mT, y_rows)
            frob2[i] += d.square().sum(1, dtype=x.dtype).sum(dtype=torch.float64)
    return y, z, frob2


def delta_products(after: torch.Tensor, before: torch.Tensor | None, x: torch.Tensor,
                   members: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y = dW X, Z = dW^T Y and ||dW||_F^2 for the listed members, in one pass each (the
    delta_products op on ``backend``, a name resolve_backend returned). Outputs never require grad.

    after, before: [B, m, n] float32/float16/bfloat16 with contiguous rows (before may be
        None: dW = after). x: [b, n, p] float32 or float64; block i of the
        result belongs to matrix members[i]. members: int64 [b] on the CPU.
    Returns Y [b, m, p], Z [b, n, p] in x's dtype and frob2 fp64 [b]. Compiled backends take
    at most MAX_KERNEL_COLS columns per pass; wider blocks run in column groups (frob2 from
    the first).
    """
    if backend == "torch":
        return delta_products_torch(after, before, x, members)
    op = kernel("delta_products", backend)
    members = members.to(after.device)
    if x.shape[2] <= MAX_KERNEL_COLS:
        return op(after, before, x.contiguous(), members)
    parts = [op(after, before, cols.contiguous(), members) for cols in x.split(MAX_KERNEL_COLS, dim=2)]
    return torch.cat([q[0] for q in parts], 2), torch.cat([q[1] for q in parts], 2), parts[0][2]
