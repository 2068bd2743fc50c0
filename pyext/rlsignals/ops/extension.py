"""Build (once, cached) and load the compiled kernels as ``torch.ops.rlsignals``.

The C++ CPU kernels and, where torch has CUDA and nvcc is found, the CUDA
kernels are compiled with ninja through ``torch.utils.cpp_extension`` on first
use and cached under ``$RLSIGNALS_BUILD_DIR`` (default
``~/.cache/rlsignals/build/<torch>-<cuda>-<cpu flags hash>``; the CPU code is
built with ``-march=native``, so the cache is keyed by the CPU's features).
A failed build never breaks ``import rlsignals``: the ops fall back to torch
and ``rlsignals doctor`` prints the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import os
import platform
import sys
from pathlib import Path

import torch

EXTENSION_NAME = "rlsignals_C"
CPU_SOURCES = ("unit_sums.cpp", "bindings/ops.cpp", "delta_products.cpp", "bindings/svd_ops.cpp")
CUDA_SOURCES = ("cuda/unit_sums.cu", "cuda/delta_products.cu", "bindings/cuda_ops.cpp")


@dataclasses.dataclass(frozen=True)
class ExtensionStatus:
    """What the last build produced: which kernels are registered, and why not."""

    cpu: bool
    cuda: bool
    cpu_reason: str
    cuda_reason: str


def source_dir() -> Path:
    """Folder of the C++/CUDA sources (``csrc/``), installed as ``rlsignals.csrc``."""
    return Path(str(importlib.resources.files("rlsignals.csrc")))


def _cpu_fingerprint() -> str:
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags += line
                break
    except OSError:
        pass
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


def build_dir() -> Path:
    """Where the compiled extension is cached."""
    if os.environ.get("RLSIGNALS_BUILD_DIR"):
        return Path(os.environ["RLSIGNALS_BUILD_DIR"])
    cuda = f"cu{torch.version.cuda}" if torch.version.cuda else "cpu"
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}-{cuda}-{_cpu_fingerprint()}"
    return Path.home() / ".cache" / "rlsignals" / "build" / tag.replace("+", "_")


def _cuda_unavailable_reason() -> str:
    if torch.version.cuda is None:
        return "this torch build has no CUDA"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return "nvcc / CUDA_HOME not found"
    if os.environ.get("RLSIGNALS_NO_CUDA") == "1":
        return "disabled by RLSIGNALS_NO_CUDA=1"
    return ""


def _compile(with_cuda: bool) -> None:
    from torch.utils.cpp_extension import load

    src = source_dir()
    sources = [str(src / s) for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]
    out = build_dir() / ("cuda" if with_cuda else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    if not any(out.glob(f"{EXTENSION_NAME}*.so")):
        print(f"rlsignals: compiling the {'C++/CUDA' if with_cuda else 'C++'} kernels "
              f"(first use; cached in {out}) ...", file=sys.stderr, flush=True)
    load(
        name=EXTENSION_NAME,
        sources=sources,
        extra_cflags=["-O3", "-march=native", "-fopenmp", "-std=c++17"],
        extra_ldflags=["-fopenmp"],
        extra_cuda_cflags=["-O3", "-std=c++17"] if with_cuda else None,
        extra_include_paths=[str(src)],
        build_directory=str(out),
        is_python_module=False,
        verbose=os.environ.get("RLSIGNALS_VERBOSE_BUILD") == "1",
    )


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"rlsignals::{op}", key)


@functools.cache
def load_extension() -> ExtensionStatus:
    """Compile if needed and load the kernels; never raises."""
    if os.environ.get("RLSIGNALS_NO_EXTENSION") == "1":
        reason = "disabled by RLSIGNALS_NO_EXTENSION=1"
        return ExtensionStatus(False, False, reason, reason)
    cuda_reason = _cuda_unavailable_reason()
    errors = []
    for with_cuda in ([True, False] if not cuda_reason else [False]):
        try:
            _compile(with_cuda)
            break
        except Exception as exc:  # noqa: BLE001 - any build failure means "fall back"
            errors.append(f"{'CUDA' if with_cuda else 'C++'} build failed: {exc}".strip())
            if with_cuda:
                cuda_reason = errors[-1]
    cpu = _has_kernel("unit_sums", "CPU")
    cuda = _has_kernel("unit_sums", "CUDA")
    return ExtensionStatus(
        cpu=cpu,
        cuda=cuda,
        cpu_reason="built" if cpu else "; ".join(errors) or "not registered",
        cuda_reason="built" if cuda else cuda_reason or "; ".join(errors) or "not registered",
    )
