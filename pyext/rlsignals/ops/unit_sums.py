"""unit_sums: the one primitive behind every angle statistic.

For hidden states h_i (rows of ``hidden`` [T, d]) and u_i = h_i / max(||h_i||, eps),
and a partition of the rows into contiguous ranges r = [offsets[r], offsets[r+1]):

    sums[r]   = sum_{i in r} u_i          fp32 [R, d]
    sqsums[r] = sum_{i in r} ||u_i||^2     fp32 [R]   (= count of non-zero rows)

Mean cosines follow in closed form (see ``ops/angle.py``), so this is the only
pass over the hidden states. Rows are normalised without overflow for every
finite input (``ops/unit_rows.py``). The compiled backends cut long ranges into
fixed-size pieces for parallelism, sum each piece in row order, and add the
piece partials of a range in order: results do not depend on thread count.
The pieces are laid out with static shapes (a padded piece count that depends
on T and R only), so the whole call traces under torch.compile(fullgraph=True).
Gradients: ``ops/registration.py`` (the same on every backend).
"""

from __future__ import annotations

import torch

from rlsignals.ops.backends import kernel
from rlsignals.ops.unit_rows import unit_rows

EPS = 1e-12

# Rows per piece of each compiled backend: a function of the backend and d
# only (not of the thread or SM count), so a backend's result for a given shape
# is the same on every machine. GPU pieces shrink for large d so that long
# sequences still give enough thread blocks.
_TRITON_INTERPRETER_CHUNK = 1 << 30  # the interpreter runs programs one by one


def chunk_rows(backend: str, d: int, device: torch.device) -> int:
    if backend == "cpp":
        return 256
    if backend == "triton" and device.type == "cpu":
        return _TRITON_INTERPRETER_CHUNK
    return min(64, max(8, (1 << 18) // d))


def segment_sum(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sums of consecutive row groups, in row order: out[r] = sum of the next lengths[r] rows."""
    if values.shape[0] == 0:  # segment_reduce rejects empty input
        return values.new_zeros(lengths.shape[0], *values.shape[1:])
    # unsafe=True: lengths come from split_ranges and are valid; skips two device syncs on CUDA
    return torch.segment_reduce(values, "sum", lengths=lengths, axis=0, unsafe=True)


def unit_sums_torch(hidden: torch.Tensor, offsets: torch.Tensor,
                    eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch O(T*d) version: normalise in fp32, then add rows into their range.
    Differentiable by torch's autograd (the gradient of ops/registration.py).
    (index_add_ rather than segment_reduce, which is much slower on the CPU.)"""
    rows = unit_rows(hidden.float(), eps)
    num_ranges = offsets.shape[0] - 1
    owner = torch.searchsorted(offsets.to(hidden.device), torch.arange(hidden.shape[0], device=hidden.device),
                               right=True) - 1
    inside = (owner >= 0) & (owner < num_ranges)
    owner = torch.where(inside, owner, num_ranges)  # rows outside every range go to a dropped extra slot
    sums = rows.u.new_zeros(num_ranges + 1, hidden.shape[1]).index_add(0, owner, rows.u)
    sqsums = rows.sq.new_zeros(num_ranges + 1).index_add(0, owner, rows.sq)
    return sums[:num_ranges], sqsums[:num_ranges]


def split_ranges(offsets: torch.Tensor, num_rows: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each range of a partition into pieces of ``chunk`` rows (the last may be shorter).

    offsets [R + 1] int64 (any device), num_rows = T >= offsets[R]. Range r = [o, e)
    yields [o, o+chunk), [o+chunk, o+2*chunk), ...; an empty range yields none. The
    pieces are padded with empty ones at offsets[R] to P = ceil(T / chunk) + R (an upper
    bound of the count that depends on the shapes only). Returns (piece_offsets [P + 1],
    lengths [R + 1]): pieces per range, then the number of padding pieces.
    """
    num_ranges = offsets.shape[0] - 1
    num_pieces = -(-num_rows // chunk) + num_ranges
    if num_ranges == 0:
        return offsets.repeat(num_pieces + 1), torch.full((1,), num_pieces, device=offsets.device)
    counts = (offsets.diff() + chunk - 1) // chunk
    ends = torch.cumsum(counts, 0)
    piece = torch.arange(num_pieces, device=offsets.device)
    owner = torch.searchsorted(ends, piece, right=True).clamp_max(max(num_ranges - 1, 0))
    starts = offsets[owner] + (piece - (ends - counts)[owner]) * chunk
    starts = torch.where(piece >= ends[-1], offsets[-1], starts)
    lengths = torch.cat([counts, (num_pieces - counts.sum()).reshape(1)])
    return torch.cat([starts, offsets[-1:]]), lengths


def unit_sums(hidden: torch.Tensor, offsets: torch.Tensor, backend: str,
              eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Run unit_sums on an already validated input with a resolved backend.

    hidden [T, d] float32/float16/bfloat16 with contiguous rows; offsets [R + 1]
    int64 (any device), non-decreasing, inside [0, T]; rows outside [offsets[0],
    offsets[R]) are ignored.
    """
    if backend == "torch":
        return unit_sums_torch(hidden, offsets, eps)
    pieces, lengths = split_ranges(offsets.to(hidden.device), hidden.shape[0],
                                   chunk_rows(backend, hidden.shape[1], hidden.device))
    partial_sums, partial_sq = kernel("unit_sums", backend)(hidden, pieces, eps)
    num_ranges = offsets.shape[0] - 1
    return segment_sum(partial_sums, lengths)[:num_ranges], segment_sum(partial_sq, lengths)[:num_ranges]
