"""Input checks shared by the public ops: every bad input raises a ValueError
or TypeError that names the argument, what it got and what was expected,
before any kernel runs.

Under torch.compile, checks of types, shapes and devices run while tracing as
usual; checks of tensor values (cu_seqlens ordered, prefix_lens in range),
which a traced graph cannot branch on, become runtime asserts in the graph
(``torch._assert_async``): a bad value then raises a RuntimeError with the same
text, without the offending index."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def require_values(ok: torch.Tensor, message: str) -> bool:
    """Under torch.compile, assert the boolean tensor ``ok`` at run time (message as the
    error) and return True; eagerly, return bool(ok) so the caller raises its own,
    more specific ValueError."""
    if torch.compiler.is_compiling():
        torch._assert_async(ok, message)
        return True
    return bool(ok)


def _require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_hidden(hidden: object, name: str = "hidden") -> torch.Tensor:
    """A [T, d] float tensor with d >= 1; returned with contiguous rows."""
    hidden = _require_tensor(name, hidden)
    if hidden.dim() != 2:
        raise ValueError(f"{name} must be 2-D [T, d] (packed tokens), got shape {tuple(hidden.shape)}")
    if hidden.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {hidden.dtype}")
    if hidden.shape[1] == 0:
        raise ValueError(f"{name} must have a hidden size d >= 1, got shape {tuple(hidden.shape)}")
    rows_contiguous = hidden.stride(1) == 1 or hidden.shape[1] == 1
    return hidden if rows_contiguous else hidden.contiguous()


def _index_vector(name: str, value: object, device: torch.device) -> torch.Tensor:
    value = _require_tensor(name, value)
    if value.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(value.shape)}")
    if value.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but hidden is on {device}; put them on one device")
    return value.to("cpu", torch.int64)


def check_cu_seqlens(cu_seqlens: object, num_tokens: int, device: torch.device) -> torch.Tensor:
    """[B + 1] cumulative sequence lengths: 0 first, non-decreasing, T last.

    Equal neighbours (an empty sequence) are allowed. Returns int64 on the CPU.
    """
    cu = _index_vector("cu_seqlens", cu_seqlens, device)
    if cu.numel() == 0:
        raise ValueError("cu_seqlens must have B + 1 >= 1 entries, got an empty tensor")
    steps = cu.diff()
    ok = (cu[0] == 0) & (steps >= 0).all() & (cu[-1] == num_tokens)
    if require_values(ok, f"cu_seqlens must start at 0, be non-decreasing and end at T = {num_tokens}"):
        return cu
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {int(cu[0])}")
    if bool((steps < 0).any()):
        at = int(torch.nonzero(steps < 0)[0])
        raise ValueError(f"cu_seqlens must be non-decreasing, but cu_seqlens[{at + 1}] = {int(cu[at + 1])} "
                         f"< cu_seqlens[{at}] = {int(cu[at])}")
    raise ValueError(f"cu_seqlens must end at the number of tokens T = {num_tokens}, got {int(cu[-1])}")


def check_prefix_lens(prefix_lens: object, seq_lens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[B] shared-prefix lengths, 0 <= prefix_lens[b] <= seq_lens[b]. Returns int64 on the CPU."""
    prefix = _index_vector("prefix_lens", prefix_lens, device)
    if prefix.numel() != seq_lens.numel():
        raise ValueError(f"prefix_lens must have one entry per sequence (B = {seq_lens.numel()}), "
                         f"got {prefix.numel()}")
    bad = (prefix < 0) | (prefix > seq_lens)
    if not require_values(~bad.any(), "prefix_lens[b] must lie in [0, length of sequence b]"):
        b = int(torch.nonzero(bad)[0])
        raise ValueError(f"prefix_lens[{b}] = {int(prefix[b])} must lie in [0, {int(seq_lens[b])}] "
                         f"(the length of sequence {b})")
    return prefix


def check_block_size(block_size: object) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return block_size
