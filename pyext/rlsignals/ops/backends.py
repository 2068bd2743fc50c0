"""Backend choice: which implementation of an op runs for a given device.

``auto`` takes the CUDA kernels, then Triton, for CUDA tensors and the C++
kernels for CPU tensors, falling back to torch with one warning when an
extension is not available. An explicit choice that cannot run raises.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from rlsignals.ops.extension import load_extension

BACKENDS = ("torch", "cpp", "triton", "cuda")
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
    ext = load_extension()
    cuda_live = ext.cuda and torch.cuda.is_available()
    cuda_reason = ext.cuda_reason if not ext.cuda else ("built" if cuda_live else "built, but no CUDA device")
    return {
        "torch": (True, "always available"),
        "cpp": (ext.cpu, ext.cpu_reason),
        "triton": _triton_status(),
        "cuda": (cuda_live, cuda_reason),
    }


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that will run on ``device`` for the requested ``backend``."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    status = available_backends()
    on_cuda = device.type == "cuda"
    if backend == "auto":
        for name in (("cuda", "triton") if on_cuda else ("cpp",)):
            if status[name][0]:
                return name
        tried = "cuda/triton" if on_cuda else "cpp"
        _warn_once(f"fallback-{device.type}",
                   f"rlsignals: no compiled {tried} backend for {device.type} tensors "
                   f"({status['cuda' if on_cuda else 'cpp'][1]}); using the torch backend. "
                   "Run `rlsignals doctor` for details.")
        return "torch"
    live, reason = status[backend]
    if not live:
        raise RuntimeError(f"backend {backend!r} is not available: {reason}")
    if backend == "cpp" and on_cuda:
        raise ValueError("backend 'cpp' runs on CPU tensors; got tensors on " + str(device))
    if backend == "cuda" and not on_cuda:
        raise ValueError("backend 'cuda' runs on CUDA tensors; got tensors on " + str(device))
    if backend == "triton" and not on_cuda and not triton_interpreter():
        raise ValueError("backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    return backend
