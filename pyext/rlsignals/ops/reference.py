"""Readable exact torch versions of the public ops: the oracle every backend
is tested against. One sequence at a time, straight from the definitions in
``ops/angle.py`` (means of unit vectors; no kernels, no tricks beyond the
closed forms). fp32 in, fp32 out; pass fp64 input for an fp64 result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlsignals.ops.angle import AngleStats, BlockCosine
from rlsignals.ops.unit_sums import EPS

NAN = float("nan")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x if x.dtype == torch.float64 else x.float(), dim=-1, eps=EPS)


def _within(u: torch.Tensor, *, exclude_diagonal: bool, causal: bool) -> float:
    n = u.shape[0]
    total = float(u.sum(0).square().sum())
    diagonal = float(u.square().sum())
    if exclude_diagonal:
        return (total - diagonal) / (n * (n - 1)) if n >= 2 else NAN
    if causal:
        return (total + diagonal) / (n * (n + 1)) if n >= 1 else NAN
    return total / (n * n) if n >= 1 else NAN


def _between(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape[0] == 0 or b.shape[0] == 0:
        return NAN
    return float(a.mean(0) @ b.mean(0))


def angle_stats_reference(hidden, cu_seqlens, prefix_lens, *, exclude_diagonal=False, causal=False) -> AngleStats:
    cu = cu_seqlens.tolist()
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    intra, inter = [], []
    for b, p in enumerate(prefix_lens.tolist()):
        u = _unit(hidden[cu[b]:cu[b + 1]])
        prefix, question = u[:p], u[p:]
        intra.append(_within(question, exclude_diagonal=exclude_diagonal, causal=causal))
        inter.append(_between(question, prefix))
    as_tensor = lambda v: torch.tensor(v, dtype=out_dtype, device=hidden.device)  # noqa: E731
    return AngleStats(intra=as_tensor(intra), inter=as_tensor(inter))


def block_cosine_reference(hidden, cu_seqlens, block_size, *, exclude_diagonal=False, causal=False) -> BlockCosine:
    cu = cu_seqlens.tolist()
    num_seqs = len(cu) - 1
    nb = max((math.ceil((cu[b + 1] - cu[b]) / block_size) for b in range(num_seqs)), default=0)
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    cosine = torch.full((num_seqs, nb, nb), NAN, dtype=out_dtype)
    valid = torch.zeros(num_seqs, nb, nb, dtype=torch.bool)
    block_lens = torch.zeros(num_seqs, nb, dtype=torch.int64)
    for b in range(num_seqs):
        u = _unit(hidden[cu[b]:cu[b + 1]])
        blocks = list(torch.split(u, block_size))
        for a, ua in enumerate(blocks):
            block_lens[b, a] = ua.shape[0]
            for c, uc in enumerate(blocks):
                if causal and c > a:
                    continue
                value = (_within(ua, exclude_diagonal=exclude_diagonal, causal=causal) if a == c
                         else _between(ua, uc))
                valid[b, a, c] = not (a == c and exclude_diagonal and ua.shape[0] < 2)
                cosine[b, a, c] = value
    return BlockCosine(cosine=cosine.to(hidden.device), valid=valid.to(hidden.device),
                       block_lens=block_lens.to(hidden.device))
