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

Rounding contract every backend meets (``ops/svd.py`` certifies with it):
entries of D are the inputs' difference rounded once to the accumulation dtype;
each entry of Y and Z is a sum of n (resp. m) products in any order; frob2 sums
the squares of each row in the accumulation dtype and the rows in fp64.
"""

from __future__ import annotations

import torch

from rlsignals.ops.extension import _has_kernel, load_extension
from rlsignals.ops.backends import _warn_once, available_backends

# Widest X a compiled kernel takes in one pass; wider blocks run in column groups.
MAX_KERNEL_COLS = 32
# Rows per chunk of the torch backend: about 4 Mi elements of D at a time.
_TORCH_CHUNK_ELEMS = 1 << 22


def gram_product_torch(after: torch.Tensor, before: torch.Tensor | None, x: torch.Tensor,
                       members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch version of ``delta_gram_product`` (same arguments and results)."""
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


def _triton_product(after, before, x, members):
    from rlsignals.triton_kernels.delta_products import delta_gram_product as triton_product

    return triton_product(after, before, x, members)


def _cpp_product(after, before, x, members):
    load_extension()
    return torch.ops.rlsignals.delta_gram_product(after, before, x, members)


_COMPILED = {"cpp": (_cpp_product, "CPU"), "cuda": (_cpp_product, "CUDA"), "triton": (_triton_product, None)}


def product_available(backend: str) -> tuple[bool, str]:
    """Whether ``backend`` has a delta_gram_product kernel (the generic backend status, and
    for compiled backends whether this op is registered in the built extension)."""
    live, reason = available_backends()[backend]
    if not live or backend not in ("cpp", "cuda"):
        return live, reason
    load_extension()
    key = _COMPILED[backend][1]
    if not _has_kernel("delta_gram_product", key):
        return False, f"the built extension has no {key} kernel for delta_gram_product"
    return True, reason


def product_backend(backend: str, requested: str) -> str:
    """The backend that runs the products, given the op-wide choice ``backend`` (already
    resolved for the device). ``auto`` falls back (Triton, then torch) with one warning when
    the resolved backend has no product kernel; an explicit choice that cannot run raises."""
    live, reason = product_available(backend)
    if live:
        return backend
    if requested != "auto":
        raise RuntimeError(f"backend {backend!r} cannot run delta_svd: {reason}")
    fallback = "triton" if backend == "cuda" and product_available("triton")[0] else "torch"
    _warn_once(f"delta-product-{backend}",
               f"rlsignals: delta_svd has no {backend} product kernel ({reason}); using {fallback}.")
    return fallback


def delta_gram_product(after: torch.Tensor, before: torch.Tensor | None, x: torch.Tensor,
                       members: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y = dW X, Z = dW^T Y and ||dW||_F^2 for the listed members, in one pass each.

    after, before: [B, m, n] float32/float16/bfloat16 with contiguous rows (before may be
        None: dW = after). x: [b, n, p] float32 or float64; block i of the
        result belongs to matrix members[i]. members: int64 [b] on the CPU.
    Returns Y [b, m, p], Z [b, n, p] in x's dtype and frob2 fp64 [b]. Compiled backends take
    at most MAX_KERNEL_COLS columns per pass; wider blocks run in column groups (frob2 from
    the first).
    """
    if backend == "torch":
        return gram_product_torch(after, before, x, members)
    kernel = _COMPILED[backend][0]
    members = members.to(after.device)
    if x.shape[2] <= MAX_KERNEL_COLS:
        return kernel(after, before, x.contiguous(), members)
    parts = [kernel(after, before, cols.contiguous(), members) for cols in x.split(MAX_KERNEL_COLS, dim=2)]
    return torch.cat([q[0] for q in parts], 2), torch.cat([q[1] for q in parts], 2), parts[0][2]
