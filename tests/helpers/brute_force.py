"""fp64 brute force for the angle ops: the full cosine matrix of each
sequence, averaged over explicitly selected entries. Independent of the
closed forms used by the ops and the reference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-12


def cosine_matrix(hidden: torch.Tensor) -> torch.Tensor:
    u = F.normalize(hidden.detach().cpu().double(), dim=1, eps=EPS)
    return u @ u.T


def pair_mask(n_rows: int, n_cols: int, *, same_block: bool, exclude_diagonal: bool, causal: bool) -> torch.Tensor:
    mask = torch.ones(n_rows, n_cols, dtype=torch.bool)
    if same_block and causal:
        mask = mask.tril()
    if same_block and exclude_diagonal:
        mask &= ~torch.eye(n_rows, n_cols, dtype=torch.bool)
    return mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float(values[mask].mean()) if bool(mask.any()) else math.nan


def angle_stats_brute(hidden, cu_seqlens, prefix_lens, *, exclude_diagonal=False, causal=False):
    cu, prefix = cu_seqlens.tolist(), prefix_lens.tolist()
    intra, inter = [], []
    for b, p in enumerate(prefix):
        cos = cosine_matrix(hidden[cu[b]:cu[b + 1]])
        nq = cos.shape[0] - p
        intra.append(masked_mean(cos[p:, p:], pair_mask(nq, nq, same_block=True,
                                                          exclude_diagonal=exclude_diagonal, causal=causal)))
        inter.append(masked_mean(cos[p:, :p], pair_mask(nq, p, same_block=False,
                                                          exclude_diagonal=False, causal=False)))
    return torch.tensor(intra, dtype=torch.float64), torch.tensor(inter, dtype=torch.float64)


def block_cosine_brute(hidden, cu_seqlens, block_size, *, exclude_diagonal=False, causal=False):
    cu = cu_seqlens.tolist()
    nb = max((math.ceil((cu[b + 1] - cu[b]) / block_size) for b in range(len(cu) - 1)), default=0)
    out = torch.full((len(cu) - 1, nb, nb), math.nan, dtype=torch.float64)
    for b in range(len(cu) - 1):
        cos = cosine_matrix(hidden[cu[b]:cu[b + 1]])
        n = cos.shape[0]
        for a in range(math.ceil(n / block_size)):
            for c in range(math.ceil(n / block_size)):
                rows = torch.arange(a * block_size, min(n, (a + 1) * block_size))
                cols = torch.arange(c * block_size, min(n, (c + 1) * block_size))
                # causal: pair (i, j) counts iff j <= i, over the whole sequence
                mask = torch.ones(len(rows), len(cols), dtype=torch.bool)
                if causal:
                    mask &= cols[None, :] <= rows[:, None]
                if exclude_diagonal:
                    mask &= cols[None, :] != rows[:, None]
                out[b, a, c] = masked_mean(cos[rows][:, cols], mask)
    return out
