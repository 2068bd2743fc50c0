"""Public angle ops: mean cosines between hidden states, exactly, in one pass.

With u_i = h_i / max(||h_i||, eps) and, for a block A of n_A tokens,
S_A = sum_{i in A} u_i and q_A = sum_{i in A} ||u_i||^2 (= n_A unless rows are zero):

    mean_{i in A, j in B} cos(h_i, h_j)          = <S_A, S_B> / (n_A n_B)
    mean_{i, j in A} cos(h_i, h_j)               = ||S_A||^2 / n_A^2
    same, diagonal i = j excluded                = (||S_A||^2 - q_A) / (n_A (n_A - 1))
    causal, pairs j <= i (diagonal kept)         = (||S_A||^2 + q_A) / (n_A (n_A + 1))
    causal with the diagonal excluded (j < i)    = the diagonal-excluded mean

(the cosine matrix is symmetric, so its lower triangle holds half the
off-diagonal sum). The only pass over ``hidden`` is ``unit_sums``; no T x T or
m x m matrix is formed.

Defined results: a zero row has u = 0 (cosine 0 with everything, itself
included) and still counts in n. A mean over no pairs is NaN (empty question,
empty prefix for ``inter``, one-token block with the diagonal excluded). A
non-finite value makes exactly the statistics that read that row NaN; other
sequences are unaffected.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rlsignals.ops.backends import resolve_backend
from rlsignals.ops.registration import block_positions
from rlsignals.ops.unit_sums import split_ranges, unit_sums
from rlsignals.ops.validation import check_block_size, check_cu_seqlens, check_hidden, check_prefix_lens, require_values


class AngleStats(NamedTuple):
    """Per-sequence angle signal, fp32 [B] each.

    intra: mean cosine between question tokens (the tokens after the prefix).
    inter: mean cosine between question tokens and shared-prefix tokens.
    """

    intra: torch.Tensor
    inter: torch.Tensor


class BlockCosine(NamedTuple):
    """Block-mean cosine matrices of a pack of sequences.

    cosine: fp32 [B, NB, NB], NB = max blocks per sequence; cosine[b, a, c] is the
        mean cosine between tokens of block a and block c of sequence b (NaN where
        not valid).
    valid: bool [B, NB, NB], where the entry is defined by the shapes alone.
    block_lens: int64 [B, NB], tokens in each block (0 past a sequence's end).
    """

    cosine: torch.Tensor
    valid: torch.Tensor
    block_lens: torch.Tensor


def within_block_mean(sum_sq: torch.Tensor, sqsum: torch.Tensor, n: torch.Tensor, *,
                      exclude_diagonal: bool, causal: bool) -> torch.Tensor:
    """Mean cosine over pairs inside blocks, from ||S||^2, q and n (all [N]); NaN when no pairs."""
    n = n.to(torch.float64)
    sum_sq = sum_sq.to(torch.float64)
    sqsum = sqsum.to(torch.float64)
    # denominators clamped to >= 1 where undefined, so that gradients stay finite there
    if exclude_diagonal:
        value, defined = (sum_sq - sqsum) / (n * (n - 1)).clamp_min(1), n >= 2
    elif causal:
        value, defined = (sum_sq + sqsum) / (n * (n + 1)).clamp_min(1), n >= 1
    else:
        value, defined = sum_sq / (n * n).clamp_min(1), n >= 1
    return torch.where(defined, value, torch.nan).to(torch.float32)


def angle_stats(hidden: torch.Tensor, cu_seqlens: torch.Tensor, prefix_lens: torch.Tensor, *,
                exclude_diagonal: bool = False, causal: bool = False, backend: str = "auto") -> AngleStats:
    """Intra-question and question-prefix mean cosines of each packed sequence.

    hidden: [T, d] float32/float16/bfloat16, the tokens of B sequences packed end to end.
    cu_seqlens: [B + 1] int32/int64, sequence b is rows cu_seqlens[b]:cu_seqlens[b+1].
    prefix_lens: [B] int, the first prefix_lens[b] tokens of sequence b are the shared
        prefix P; the rest is the question Q.
    exclude_diagonal: leave the pairs i = j out of ``intra``.
    causal: ``intra`` over the pairs j <= i only (what a causal model attends to).
        ``inter`` is unaffected: every prefix token precedes every question token.
    backend: "auto", "torch", "cpp", "triton" or "cuda".

    Returns AngleStats(intra, inter), fp32 [B] on hidden's device.
    """
    hidden = check_hidden(hidden)
    cu = check_cu_seqlens(cu_seqlens, hidden.shape[0], hidden.device)
    prefix = check_prefix_lens(prefix_lens, cu.diff(), hidden.device)
    return angle_stats_spans(hidden, cu[:-1], cu[:-1] + prefix, cu[1:], exclude_diagonal=exclude_diagonal,
                             causal=causal, backend=backend)


def angle_stats_spans(hidden: torch.Tensor, starts: torch.Tensor, splits: torch.Tensor, ends: torch.Tensor, *,
                      exclude_diagonal: bool = False, causal: bool = False, backend: str = "auto") -> AngleStats:
    """angle_stats for sequences at arbitrary ordered row spans of ``hidden``.

    Sequence b has prefix rows [starts[b], splits[b]) and question rows
    [splits[b], ends[b]); rows outside every span (padding, trailing template
    tokens) are read but ignored, so a padded batch viewed as [B*L, d] is scored
    in place. starts, splits, ends: int64 [B] on the CPU, with
    starts[b] <= splits[b] <= ends[b] <= starts[b+1]. ``hidden`` as in angle_stats
    (already validated).
    """
    num_rows = hidden.shape[0]
    bounds = torch.stack([starts, splits, ends], 1).flatten()
    message = "spans must be ordered, non-overlapping and inside hidden's rows"
    if bounds.numel() and not require_values((bounds.diff() >= 0).all() & (bounds[0] >= 0) & (bounds[-1] <= num_rows),
                                             message):
        raise ValueError(message)
    name = resolve_backend(backend, hidden.device)
    # partition: [0, s_0) junk, P_0, Q_0, [e_0, s_1) junk, P_1, Q_1, ..., [e_last, T) junk
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=bounds.device), bounds,
                         torch.full((1,), num_rows, device=bounds.device)])
    sums, sqsums = unit_sums(hidden, offsets, name)
    sum_p, sum_q, sq_q = sums[1::3], sums[2::3], sqsums[2::3]
    n_p = (splits - starts).to(hidden.device)
    n_q = (ends - splits).to(hidden.device)
    return stats_from_sums(sum_q, sq_q, n_q, sum_p, n_p, exclude_diagonal=exclude_diagonal, causal=causal)


def stats_from_sums(sum_q: torch.Tensor, sq_q: torch.Tensor, n_q: torch.Tensor, sum_p: torch.Tensor,
                    n_p: torch.Tensor, *, exclude_diagonal: bool = False, causal: bool = False) -> AngleStats:
    """AngleStats of B sequences from their unit-row sums: the question's S_Q [B, d], q_Q [B]
    (sum of ||u_i||^2) and n_Q [B], the prefix's S_P [B, d] and n_P [B] (README, "The math"):
    intra = within_block_mean of the question, inter = <S_Q, S_P> / (n_Q n_P); NaN where a
    mean has no pairs."""
    intra = within_block_mean(sum_q.square().sum(1), sq_q, n_q, exclude_diagonal=exclude_diagonal, causal=causal)
    pairs = (n_q * n_p).to(torch.float64)
    inter = (sum_q * sum_p).sum(1).to(torch.float64) / pairs.clamp_min(1)
    inter = torch.where(pairs > 0, inter, torch.nan).to(torch.float32)
    return AngleStats(intra=intra, inter=inter)


def block_cosine(hidden: torch.Tensor, cu_seqlens: torch.Tensor, block_size: int, *,
                 exclude_diagonal: bool = False, causal: bool = False, backend: str = "auto") -> BlockCosine:
    """Exact block-mean cosine matrix of each sequence, without any T x T matrix.

    Sequence b is cut into blocks of ``block_size`` tokens (the last may be
    shorter); cosine[b, a, c] = mean over i in block a, j in block c of cos(h_i, h_j).
    exclude_diagonal: the diagonal blocks leave the pairs i = j out.
    causal: only pairs j <= i count; blocks c > a are then not valid and the
        diagonal blocks average their lower triangle.
    Cost: one pass over ``hidden`` plus a [NB, d] x [d, NB] product per sequence.
    """
    hidden = check_hidden(hidden)
    cu = check_cu_seqlens(cu_seqlens, hidden.shape[0], hidden.device)
    block_size = check_block_size(block_size)
    name = resolve_backend(backend, hidden.device)
    device = hidden.device
    num_seqs = cu.numel() - 1

    # blocks as pieces of block_size rows, padded to a count set by the shapes (split_ranges)
    pieces, blocks = split_ranges(cu.to(device), hidden.shape[0], block_size)
    sums, sqsums = unit_sums(hidden, pieces, name)
    blocks_per_seq = blocks[:num_seqs]
    nb = block_positions(blocks_per_seq).shape[0]
    lens = pieces.diff()
    piece = torch.arange(lens.shape[0], device=device)
    ends = torch.cumsum(blocks_per_seq, 0)
    seq_of = torch.searchsorted(ends, piece, right=True)  # num_seqs for the padding pieces
    padding = seq_of >= num_seqs
    first = torch.cat([ends.new_zeros(1), ends])[seq_of]
    block_of = torch.where(padding, nb, piece - first)
    # [B + 1, NB + 1] slots: padding pieces land in the extra row and column, then dropped
    def scatter(values: torch.Tensor) -> torch.Tensor:
        out = values.new_zeros(num_seqs + 1, nb + 1, *values.shape[1:])
        return out.index_put((seq_of, block_of), values)[:num_seqs, :nb]

    block_lens = scatter(lens)
    means = scatter(sums / lens.clamp_min(1)[:, None])
    within = scatter(within_block_mean(sums.square().sum(1), sqsums, lens, exclude_diagonal=exclude_diagonal,
                                       causal=causal))
    cosine = torch.diagonal_scatter(torch.bmm(means, means.transpose(1, 2)), within, dim1=1, dim2=2)

    exists = block_lens > 0
    valid = exists[:, :, None] & exists[:, None, :]
    if causal:
        valid = valid & torch.ones(nb, nb, dtype=torch.bool, device=device).tril()
    if exclude_diagonal:
        valid = torch.diagonal_scatter(valid, exists & (block_lens >= 2), dim1=1, dim2=2)
    cosine = torch.where(valid, cosine, torch.nan)
    return BlockCosine(cosine=cosine, valid=valid, block_lens=block_lens)
