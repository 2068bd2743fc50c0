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
    """Unit rows, normalised in fp64 (no overflow for any finite fp32/bf16 row), in fp32
    (fp64 for fp64 input)."""
    return F.normalize(x.double(), dim=-1, eps=EPS).to(torch.float64 if x.dtype == torch.float64 else torch.float32)


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
        blocks = list(torch.split(u, block_size)) if u.shape[0] else []
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


def delta_svd_reference(after, before=None, k=1):
    """Top-k SVD of after - before by fp64 torch.linalg.svd, one matrix at a time, with
    delta_svd's sign convention (the first entry of largest |.| of u_i is positive; of v_i
    where sigma_i = 0). Finite, non-empty batches; fp64 results; err_bound, err_estimate and
    vector_estimate 0, certified, vectors not undetermined, iters 0, basis = V."""
    from rlsignals.ops.svd import DeltaSVD

    unbatched = after.dim() == 2
    stack = after[None] if unbatched else after
    delta = stack.double() - (0 if before is None else (before[None] if unbatched else before).double())
    svals, lefts, rights, frobs = [], [], [], []
    for dw in delta:
        u, s, vh = torch.linalg.svd(dw, full_matrices=False)
        u, s, v = u[:, :k].clone(), s[:k], vh[:k].mT.clone()
        for i in range(k):
            if s[i] == 0:
                u[:, i] = 0
            ref = u[:, i] if s[i] > 0 else v[:, i]
            if ref[ref.abs().argmax()] < 0:
                u[:, i], v[:, i] = -u[:, i], -v[:, i]
        svals.append(s)
        lefts.append(u)
        rights.append(v)
        frobs.append(torch.linalg.matrix_norm(dw))
    num = delta.shape[0]
    out = DeltaSVD(S=torch.stack(svals), U=torch.stack(lefts), V=torch.stack(rights), frob=torch.stack(frobs),
                   err_bound=delta.new_zeros(num), iters=torch.zeros(num, dtype=torch.int64),
                   nonfinite=torch.zeros(num, dtype=torch.bool), basis=torch.stack(rights),
                   err_estimate=delta.new_zeros(num), certified=torch.ones(num, dtype=torch.bool),
                   vector_estimate=delta.new_zeros(num), vectors_undetermined=torch.zeros(num, dtype=torch.bool))
    return DeltaSVD(*(t[0] for t in out)) if unbatched else out
