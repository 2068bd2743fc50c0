"""unit_sums: the one primitive behind every angle statistic.

For hidden states h_i (rows of ``hidden`` [T, d]) and u_i = h_i / max(||h_i||, eps),
and a partition of the rows into contiguous ranges r = [offsets[r], offsets[r+1]):

    sums[r]   = sum_{i in r} u_i          fp32 [R, d]
    sqsums[r] = sum_{i in r} ||u_i||^2     fp32 [R]   (= count of non-zero rows)

Mean cosines follow in closed form (see ``ops/angle.py``), so this is the only
pass over the hidden states. The compiled backends split long ranges into
fixed-size chunks for parallelism, sum each chunk in row order, and add the
chunk partials of a range in order: results do not depend on thread count.
"""

from __future__ import annotations

import torch

from rlsignals.ops.extension import load_extension

EPS = 1e-12

# Rows per work item of each compiled backend: a function of the backend and d
# only (not of the thread or SM count), so a backend's result for a given shape
# is the same on every machine. GPU chunks shrink for large d so that long
# sequences still give enough thread blocks.
_TRITON_INTERPRETER_CHUNK = 1 << 30  # the interpreter runs programs one by one


def chunk_rows(backend: str, d: int, device: torch.device) -> int:
    if backend == "cpp":
        return 256
    if backend == "triton" and device.type == "cpu":
        return _TRITON_INTERPRETER_CHUNK
    return min(64, max(8, (1 << 18) // d))


def segment_sum(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sums of consecutive row groups: out[r] = sum of the next lengths[r] rows of ``values``."""
    if values.shape[0] == 0:  # segment_reduce rejects empty input
        return values.new_zeros(lengths.numel(), *values.shape[1:])
    # unsafe=True: lengths come from split_ranges and are valid; skips two device syncs on CUDA
    return torch.segment_reduce(values, "sum", lengths=lengths, axis=0, unsafe=True)


def unit_sums_torch(hidden: torch.Tensor, offsets: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch O(T*d) version: normalise in fp32, then add rows into their range.

    (index_add_ rather than segment_reduce: about 30x faster on the CPU.)
    """
    x = hidden.float()
    inv = 1.0 / torch.linalg.vector_norm(x, dim=1).clamp_min(eps)
    lengths = offsets.diff().to(hidden.device)
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=hidden.device), lengths)
    sums = x.new_zeros(lengths.numel(), x.shape[1]).index_add_(0, owner, x * inv[:, None])
    sqsums = x.new_zeros(lengths.numel()).index_add_(0, owner, x.square().sum(1) * inv.square())
    return sums, sqsums


def split_ranges(offsets: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each range of a partition into pieces of ``chunk`` rows (the last may be shorter).

    offsets [R + 1] int64 on the CPU. Returns (piece_offsets [C + 1], pieces_per_range [R]);
    an empty range gets no piece. Range r = [o, e) yields [o, o+chunk), [o+chunk, o+2*chunk), ...
    """
    lengths = offsets.diff()
    counts = (lengths + chunk - 1) // chunk
    owner = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    first = torch.cumsum(counts, 0) - counts
    starts = offsets[:-1][owner] + (torch.arange(owner.numel()) - first[owner]) * chunk
    return torch.cat([starts, offsets[-1:]]), counts


def _compiled_kernel(backend: str):
    if backend == "triton":
        from rlsignals.triton_kernels.unit_sums import unit_sums as triton_unit_sums

        return triton_unit_sums
    load_extension()
    return torch.ops.rlsignals.unit_sums


def unit_sums(hidden: torch.Tensor, offsets: torch.Tensor, backend: str, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Run unit_sums on an already validated input with a resolved backend.

    hidden [T, d] float32/float16/bfloat16 with contiguous rows; offsets [R + 1]
    int64 on the CPU, offsets[0] = 0, non-decreasing, offsets[R] = T.
    """
    if backend == "torch":
        return unit_sums_torch(hidden, offsets, eps)
    chunk_offsets, counts = split_ranges(offsets, chunk_rows(backend, hidden.shape[1], hidden.device))
    partial_sums, partial_sq = _compiled_kernel(backend)(hidden, chunk_offsets.to(hidden.device), eps)
    if bool((counts == 1).all()):
        return partial_sums, partial_sq
    counts = counts.to(hidden.device)
    return segment_sum(partial_sums, counts), segment_sum(partial_sq, counts)
