"""The backend table: which implementation of each op runs, chosen once per call.

Backends: "torch" (readable torch code in the op's module, always live), "cpp"
(the extension's CPU kernels), "cuda" (its CUDA kernels), "triton" (Triton
kernels; on a GPU, or on the CPU under TRITON_INTERPRET=1). The compiled
kernels are the ops of ``ops/registration.py``:

    op               cpp / cuda                       triton
    unit_sums        torch.ops.rlsignals.unit_sums    torch.ops.rlsignals_triton.unit_sums
    delta_products   torch.ops.rlsignals.delta_products  torch.ops.rlsignals_triton.delta_products

"cpp" and "cuda" are the CPU and CUDA kernels of one torch op: the table only
lets "cpp" run on CPU tensors and "cuda" on CUDA tensors, so the dispatcher's
choice by device is always the one made here. Whether a kernel exists is read
from the extension's own list of what it registered (``ExtensionStatus.kernels``,
e.g. "unit_sums:CUDA"), not from dispatcher internals.

``auto`` takes the CUDA kernels, then Triton, for CUDA tensors and the C++
kernels for CPU tensors, falling back to torch with one warning when none of
them has a kernel for the op. An explicit choice that
cannot run raises.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import torch

from rlsignals.ops import BACKENDS
from rlsignals.ops.registration import compiled_ops, triton_ops

OPS = ("unit_sums", "delta_products")
_DISPATCH_KEY = {"cpp": "CPU", "cuda": "CUDA"}
_NAMESPACE = {"cpp": "rlsignals", "cuda": "rlsignals", "triton": "rlsignals_triton"}
_warned: set[str] = set()


def triton_interpreter() -> bool:
    """True when Triton runs in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _triton_import_error() -> str:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install is "not live"
        return f"triton not importable: {exc}"
    return ""


def _triton_status() -> tuple[bool, str]:
    if _triton_import_error():
        return False, _triton_import_error()
    if torch.cuda.is_available():
        return True, "CUDA device present"
    if triton_interpreter():
        return True, "CPU interpreter (TRITON_INTERPRET=1); for tests, not speed"
    return False, "no CUDA device (set TRITON_INTERPRET=1 before import to use the interpreter)"


def available_backends() -> dict[str, tuple[bool, str]]:
    """Map backend name -> (live, reason). Builds the extension if needed."""
    ext = compiled_ops()
    cuda_live = ext.cuda and torch.cuda.is_available()
    cuda_reason = ext.cuda_reason if not ext.cuda else ("built" if cuda_live else "built, but no CUDA device")
    return {
        "torch": (True, "always available"),
        "cpp": (ext.cpu, ext.cpu_reason),
        "triton": _triton_status(),
        "cuda": (cuda_live, cuda_reason),
    }


def op_status(op: str, backend: str) -> tuple[bool, str]:
    """Whether ``backend`` can run ``op`` here (the backend is live and has a kernel for it)."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    live, reason = available_backends()[backend]
    if live and backend in _DISPATCH_KEY:
        key = _DISPATCH_KEY[backend]
        if f"{op}:{key}" not in compiled_ops().kernels:
            return False, f"the built extension has no {key} kernel for {op}"
    return live, reason


def kernel(op: str, backend: str) -> Callable:
    """The torch op that runs ``op`` on a compiled ``backend`` ("cpp", "cuda" or "triton").

    Registers the ops on first use; under torch.compile that has already happened in
    resolve_backend (run eagerly while tracing), so only the op lookup is traced.
    """
    if backend not in _NAMESPACE:
        raise ValueError(f"backend must be 'cpp', 'cuda' or 'triton' for a compiled kernel, got {backend!r}")
    if not torch.compiler.is_compiling():
        _registered(backend)
    return getattr(getattr(torch.ops, _NAMESPACE[backend]), op)


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=5)


def _check_device(backend: str, device: torch.device) -> None:
    on_cuda = device.type == "cuda"
    if backend == "cpp" and on_cuda:
        raise ValueError("backend 'cpp' runs on CPU tensors; got tensors on " + str(device))
    if backend == "cuda" and not on_cuda:
        raise ValueError("backend 'cuda' runs on CUDA tensors; got tensors on " + str(device))
    if backend == "triton" and not on_cuda and not triton_interpreter():
        raise ValueError("backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")


def _registered(backend: str) -> str:
    """``backend``, after registering its ops (ops/registration.py)."""
    if backend == "triton":
        triton_ops()
    elif backend in _DISPATCH_KEY:
        compiled_ops()
    return backend


def constant_result(fn: Callable) -> Callable:
    """Mark ``fn`` as ``torch.compiler.assume_constant_result`` does, without importing dynamo
    at import time (that decorator imports it, seconds of start-up): it sets this one attribute,
    which dynamo reads when it meets the function (tests/ops/test_backends.py checks that the
    public decorator still does exactly this)."""
    fn._dynamo_marked_constant = True
    return fn


@constant_result
def resolve_backend(backend: str, device: torch.device, op: str = "unit_sums") -> str:
    """The backend that runs ``op`` on ``device`` for the requested ``backend``.

    A constant for torch.compile: the choice is made once, while tracing, and
    the graph calls that backend's op.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        live, reason = op_status(op, backend)
        if not live:
            raise RuntimeError(f"backend {backend!r} is not available for {op}: {reason}")
        _check_device(backend, device)
        return _registered(backend)
    tried = []
    for name in (("cuda", "triton") if device.type == "cuda" else ("cpp",)):
        live, reason = op_status(op, name)
        if live:
            return _registered(name)
        tried.append((name, reason))
    warn_once(f"fallback-{op}-{device.type}",
              f"rlsignals: no compiled {'/'.join(n for n, _ in tried)} backend for {device.type} tensors "
              f"({tried[0][1]}); using the torch backend. Run `rlsignals doctor` for details.")
    return "torch"
