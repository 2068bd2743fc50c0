"""Random packs of sequences for the angle-op tests."""

from __future__ import annotations

import torch


def make_pack(seq_lens, prefix_lens, d, *, dtype=torch.float32, seed=0, zero_rows=(), device="cpu"):
    """hidden [T, d] with a shared direction (so cosines are not all ~0),
    cu_seqlens [B+1] and prefix_lens [B]. Rows listed in zero_rows are zeroed."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(seq_lens)
    common = torch.randn(1, d, generator=gen, dtype=torch.float64)
    hidden = torch.randn(total, d, generator=gen, dtype=torch.float64) + 0.7 * common
    hidden *= torch.rand(total, 1, generator=gen, dtype=torch.float64) * 4 + 0.1  # varied norms
    for row in zero_rows:
        hidden[row] = 0
    cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(torch.tensor(seq_lens, dtype=torch.int64), 0)
    return (hidden.to(dtype).to(device), cu.to(device),
            torch.tensor(prefix_lens, dtype=torch.int64).to(device))


# (sequence lengths, prefix lengths): odd sizes, length-1 sequences, an empty
# prefix, an empty question, an empty sequence, and a sequence longer than
# the C++ backend's 256-row chunk (so chunk partials are summed).
EDGE_PACK = ([7, 1, 13, 5, 0, 300, 2, 9], [3, 0, 0, 5, 0, 123, 1, 8])
