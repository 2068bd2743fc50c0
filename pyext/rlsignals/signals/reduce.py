"""The one reduce behind every angle signal: sums of unit rows over token spans,
then the closed-form intra/inter of GAIN-RL from those sums.

With u_i = h_i / max(||h_i||, eps) and a block A of n_A tokens,
S_A = sum_{i in A} u_i and q_A = sum_{i in A} ||u_i||^2:

    intra = ||S_Q||^2 / n_Q^2                (diagonal excluded: (||S_Q||^2 - q_Q) / (n_Q (n_Q - 1)))
    inter = <S_Q, S_P> / (n_Q n_P)

A block may be read in parts, from different tensors: the shared prefix's
rows computed once (a cached prefix, or the head of a shared-prefix training
forward) and the rest from a padded batch. Sums of parts add (``add_sums``), so
the scorer (full forward or cached prefix) and the trainer's live signal all
end in ``angle_stats_from_sums``; the ops' ``unit_sums`` is the only pass over
hidden states.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rlsignals.ops.angle import AngleStats, stats_from_sums
from rlsignals.ops.backends import resolve_backend
from rlsignals.ops.unit_sums import unit_sums
from rlsignals.ops.validation import check_hidden


class SpanSums(NamedTuple):
    """Unit-row sums of K token spans: sums fp32 [K, d], sqsums fp32 [K] (sum of ||u_i||^2),
    counts int64 [K] (tokens in the span); all on the hidden states' device."""

    sums: torch.Tensor
    sqsums: torch.Tensor
    counts: torch.Tensor


def span_unit_sums(hidden: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                   backend: str = "auto") -> SpanSums:
    """SpanSums of rows [starts[k], ends[k]) of ``hidden`` [T, d] (any float dtype).

    Spans may overlap and come in any order: ``unit_sums`` runs once over the
    partition of [0, T) cut at every span bound, and each span's sums add its
    pieces in fp64 (exact to fp32 rounding). starts, ends: int [K], 0 <= starts <= ends <= T.
    """
    hidden = check_hidden(hidden)
    starts, ends = torch.as_tensor(starts, dtype=torch.int64).cpu(), torch.as_tensor(ends, dtype=torch.int64).cpu()
    if starts.shape != ends.shape or starts.dim() != 1:
        raise ValueError(f"starts and ends must be 1-D of one length, got {tuple(starts.shape)} and "
                         f"{tuple(ends.shape)}")
    num_rows = hidden.shape[0]
    if starts.numel() and not (bool((starts >= 0).all()) and bool((starts <= ends).all())
                               and bool((ends <= num_rows).all())):
        raise ValueError(f"spans must satisfy 0 <= start <= end <= {num_rows} (rows of hidden)")
    bounds = torch.unique(torch.cat([starts, ends, torch.tensor([0, num_rows])]))  # sorted
    sums, sqsums = unit_sums(hidden, bounds, resolve_backend(backend, hidden.device))
    device = hidden.device
    cum_sums = torch.cat([sums.new_zeros(1, sums.shape[1], dtype=torch.float64), sums.double().cumsum(0)])
    cum_sq = torch.cat([sqsums.new_zeros(1, dtype=torch.float64), sqsums.double().cumsum(0)])
    first = torch.searchsorted(bounds, starts).to(device)
    last = torch.searchsorted(bounds, ends).to(device)
    return SpanSums(sums=(cum_sums[last] - cum_sums[first]).float(), sqsums=(cum_sq[last] - cum_sq[first]).float(),
                    counts=(ends - starts).to(device))


def prefix_question_sums(hidden: torch.Tensor, starts: torch.Tensor, splits: torch.Tensor, ends: torch.Tensor,
                         backend: str = "auto") -> tuple[SpanSums, SpanSums]:
    """(prefix, question) SpanSums of K sequences laid out in ``hidden`` [..., d] (leading
    dims flattened into rows): prefix rows [starts, splits), question rows [splits, ends)."""
    starts, splits, ends = (torch.as_tensor(t, dtype=torch.int64).cpu() for t in (starts, splits, ends))
    parts = span_unit_sums(hidden.reshape(-1, hidden.shape[-1]), torch.cat([starts, splits]),
                           torch.cat([splits, ends]), backend)
    count = starts.shape[0]
    return SpanSums(*(t[:count] for t in parts)), SpanSums(*(t[count:] for t in parts))


def add_sums(a: SpanSums, b: SpanSums) -> SpanSums:
    """The sums of two disjoint parts of the same blocks (broadcast: either may have K = 1)."""
    return SpanSums(a.sums + b.sums, a.sqsums + b.sqsums, a.counts + b.counts)


def angle_stats_from_sums(prefix: SpanSums, question: SpanSums, *, exclude_diagonal: bool = False) -> AngleStats:
    """AngleStats (intra, inter fp32 [K]) of K sequences from their prefix and question
    sums (see the module docstring); NaN where a mean has no pairs (empty question,
    empty prefix for inter, one question token with the diagonal excluded)."""
    return stats_from_sums(question.sums, question.sqsums, question.counts, prefix.sums, prefix.counts,
                           exclude_diagonal=exclude_diagonal)
