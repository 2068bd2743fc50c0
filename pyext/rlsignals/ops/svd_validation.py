"""Input checks of delta_svd (same rules as ops/validation.py: a bad input raises a
ValueError or TypeError naming the argument, what it got and what was expected,
before any kernel runs)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from rlsignals.ops.validation import FLOAT_DTYPES, _require_tensor


class DeltaSVDArgs(NamedTuple):
    after: torch.Tensor            # [B, m, n], rows contiguous
    before: torch.Tensor | None    # same, or None
    init: torch.Tensor | None      # [B, n, c] or None
    max_iters: int | None
    unbatched: bool


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _check_int(name: str, value: object, low: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_matrix(name: str, value: object) -> torch.Tensor:
    t = _require_tensor(name, value)
    if t.dim() not in (2, 3):
        raise ValueError(f"{name} must be [m, n] or [B, m, n], got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    return t


def _check_init(init: object, after: torch.Tensor, unbatched: bool) -> torch.Tensor | None:
    if init is None:
        return None
    t = _require_tensor("init", init)
    num, _, n = after.shape
    expected = f"[n, c] with n = {n}" if unbatched else f"[B, n, c] with B = {num}, n = {n}"
    want = (n,) if unbatched else (num, n)
    if t.dim() != len(want) + 1 or tuple(t.shape[:-1]) != want or t.shape[-1] < 1:
        raise ValueError(f"init must be {expected} and c >= 1, got shape {tuple(t.shape)}")
    t = t[None] if unbatched else t
    if not t.is_floating_point():
        raise TypeError(f"init must be a floating-point tensor, got {t.dtype}")
    if t.device != after.device:
        raise ValueError(f"init is on {t.device} but after is on {after.device}; put them on one device")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("init must be finite (it contains NaN or inf)")
    return t


def _check_group(group: object) -> None:
    if group is None:
        return
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group was given but torch.distributed is not initialized; "
                         "call torch.distributed.init_process_group first (or pass process_group=None)")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"process_group must be a torch.distributed.ProcessGroup or None, got {type(group).__name__}")


def check_delta_svd_args(after: object, before: object, k: object, tol: object, max_iters: object,
                         oversample: object, seed: object, init: object,
                         process_group: object = None, vector_tol: object = None) -> DeltaSVDArgs:
    """Validate delta_svd's arguments; returns batched, row-contiguous views."""
    after = _check_matrix("after", after)
    if before is not None:
        before = _check_matrix("before", before)
        if before.shape != after.shape:
            raise ValueError(f"before must have after's shape {tuple(after.shape)}, got {tuple(before.shape)}")
        if before.dtype != after.dtype:
            raise TypeError(f"before must have after's dtype {after.dtype}, got {before.dtype}")
        if before.device != after.device:
            raise ValueError(f"before is on {before.device} but after is on {after.device}; put them on one device")
    m, n = after.shape[-2:]
    _check_int("k", k, 1)
    _check_group(process_group)
    if process_group is not None and k > n:  # m is split over the ranks: only n is known here
        raise ValueError(f"k must be <= n = {n} for matrices with {n} columns, got {k}")
    if process_group is None and k > min(m, n):
        raise ValueError(f"k must be <= min(m, n) = {min(m, n)} for matrices of shape [{m}, {n}], got {k}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    if vector_tol is not None and (isinstance(vector_tol, bool) or not isinstance(vector_tol, (int, float))
                                   or not vector_tol > 0):
        raise ValueError(f"vector_tol must be a number > 0 (math.inf: values only) or None, got {vector_tol!r}")
    _check_int("max_iters", max_iters, 1, optional=True)
    _check_int("oversample", oversample, 0, optional=True)
    _check_int("seed", seed, 0)
    unbatched = after.dim() == 2
    after = _rows_contiguous(after[None] if unbatched else after)
    if before is not None:
        before = _rows_contiguous(before[None] if unbatched else before)
    return DeltaSVDArgs(after, before, _check_init(init, after, unbatched), max_iters, unbatched)
