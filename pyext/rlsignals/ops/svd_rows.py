"""Rows of dW split over the ranks of a torch.distributed process group (or not split).

Each rank holds a slab of rows of after/before ([B, m_r, n], the slabs in rank order make
the whole matrix). The fused pass splits exactly over rows:

    Z = dW^T (dW X) = sum_r dW_r^T (dW_r X),   ||dW||_F^2 = sum_r ||dW_r||_F^2,

so one all-reduce (sum) of Z [b, n, p] and of frob2 per pass gives every rank the same
products, while Y = dW_r X stays on its rank (its slab of dW X, hence of U). Everything
delta_svd computes from Z and frob2 is then the same on every rank, and so are its
decisions (which member stops when), which keeps the ranks' collectives in step. With no
group every call is local.
"""

from __future__ import annotations

import torch

from rlsignals.ops.delta_products import delta_products


class Rows:
    """The row slabs of one delta_svd call: ``group`` None means one process holds all rows."""

    def __init__(self, group, m_local: int, device: torch.device):
        self.group = group
        self.rows = int(self.sum(torch.tensor([float(m_local)], dtype=torch.float64, device=device)).item())

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over the ranks (in place; returned)."""
        if self.group is not None:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum of ``t`` over the ranks (in place; returned)."""
        if self.group is not None:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t

    def product(self, after, before, x, members, backend):
        """delta_products over all rows: (Y of this slab, Z, frob2, finite [b] bool on the CPU).

        ``finite`` is False where any rank's Y, the summed Z or frob2 has a NaN/inf entry (a
        sum in fp64 is non-finite iff some entry is: fp32 entries cannot overflow it)."""
        y, z, frob2 = delta_products(after, before, x, members, backend)
        z = z.contiguous()  # collectives need dense tensors
        bad_y = (~torch.isfinite(y.sum((1, 2), dtype=torch.float64))).double()
        small = self.sum(torch.cat([frob2.double(), bad_y]))
        self.sum(z)
        b = frob2.shape[0]
        frob2, bad_y = small[:b], small[b:]
        finite = torch.isfinite(frob2) & (bad_y == 0) & torch.isfinite(z.sum((1, 2), dtype=torch.float64))
        return y, z, frob2, finite.cpu()

    def first_largest(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Over all ranks' rows of u [b, m_r, k]: the largest |entry| of each column [b, k] and
        the value of its first occurrence in row order [b, k]."""
        mag, idx = u.abs().max(1)
        val = torch.gather(u, 1, idx[:, None, :])[:, 0]
        if self.group is None:
            return mag, val
        import torch.distributed as dist

        world = dist.get_world_size(self.group)
        gathered = [torch.empty(2, *mag.shape, dtype=mag.dtype, device=mag.device) for _ in range(world)]
        dist.all_gather(gathered, torch.stack([mag, val]).contiguous(), group=self.group)
        stack = torch.stack(gathered)                                        # [world, 2, b, k]
        first = stack[:, 0].argmax(0)                                        # first rank holding the max
        pick = torch.gather(stack[:, 1], 0, first[None])[0]
        return stack[:, 0].amax(0), pick
