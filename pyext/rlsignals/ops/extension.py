"""Build (once, cached) and load the compiled kernels as ``torch.ops.rlsignals``.

The C++ CPU kernels and, where torch has CUDA and nvcc is found, the CUDA
kernels are compiled with ninja through ``torch.utils.cpp_extension`` on first
use and cached under ``<root>/<key>/{cpu,cuda}``: root is ``$RLSIGNALS_BUILD_DIR``
(default ``~/.cache/rlsignals/build``) and the key names the Python, torch,
CUDA and CPU (the CPU code is built with ``-march=native``) and ends with a
hash of every C++/CUDA source and header in ``csrc/`` and of the build flags.
Two checkouts of different sources thus never share a build, and a process
never loads a library built from other sources. A failed build never breaks
``import rlsignals``: the ops fall back to torch and ``rlsignals doctor`` prints
the reason.

Which kernels a build registered is read from the library itself
(``torch.ops.rlsignals.registered_kernels()``, filled by csrc/bindings/registry.h).
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
CPU_SOURCES = ("unit_sums.cpp", "delta_products.cpp", "bindings/schema.cpp", "bindings/unit_sums_cpu.cpp",
               "bindings/delta_products_cpu.cpp")
CUDA_SOURCES = ("cuda/unit_sums.cu", "cuda/delta_products.cu", "bindings/unit_sums_cuda.cpp",
                "bindings/delta_products_cuda.cpp")
SOURCE_SUFFIXES = (".h", ".cpp", ".cu", ".cuh")
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17")
LDFLAGS = ("-fopenmp",)
CUDA_CFLAGS = ("-O3", "-std=c++17")


@dataclasses.dataclass(frozen=True)
class ExtensionStatus:
    """What the last build produced: which kernels are registered ("op:KEY"), and why not."""

    cpu: bool
    cuda: bool
    cpu_reason: str
    cuda_reason: str
    kernels: frozenset[str] = frozenset()


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


def source_hash(src: Path | None = None) -> str:
    """sha256 (16 hex digits) of every source and header under ``src`` (default
    ``source_dir()``), by relative path and content, and of the build flags."""
    src = source_dir() if src is None else src
    digest = hashlib.sha256(repr((CFLAGS, LDFLAGS, CUDA_CFLAGS)).encode())
    for path in sorted(p for p in src.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()):
        digest.update(path.relative_to(src).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_dir(src: Path | None = None) -> Path:
    """Where the extension compiled from ``src`` (default ``source_dir()``) is cached."""
    root = os.environ.get("RLSIGNALS_BUILD_DIR") or Path.home() / ".cache" / "rlsignals" / "build"
    cuda = f"cu{torch.version.cuda}" if torch.version.cuda else "cpu"
    tag = (f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}-{cuda}-"
           f"{_cpu_fingerprint()}-src{source_hash(src)}")
    return Path(root) / tag.replace("+", "_")


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
    out = build_dir(src) / ("cuda" if with_cuda else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    if not any(out.glob(f"{EXTENSION_NAME}*.so")):
        print(f"rlsignals: compiling the {'C++/CUDA' if with_cuda else 'C++'} kernels "
              f"(first use; cached in {out}) ...", file=sys.stderr, flush=True)
    load(
        name=EXTENSION_NAME,
        sources=sources,
        extra_cflags=list(CFLAGS),
        extra_ldflags=list(LDFLAGS),
        extra_cuda_cflags=list(CUDA_CFLAGS) if with_cuda else None,
        extra_include_paths=[str(src)],
        build_directory=str(out),
        is_python_module=False,
        verbose=os.environ.get("RLSIGNALS_VERBOSE_BUILD") == "1",
    )


def _registered_kernels() -> frozenset[str]:
    """The "op:KEY" pairs the loaded library registered (empty when none is loaded)."""
    if not hasattr(torch.ops.rlsignals, "registered_kernels"):
        return frozenset()
    return frozenset(torch.ops.rlsignals.registered_kernels())


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
    kernels = _registered_kernels()
    cpu = "unit_sums:CPU" in kernels
    cuda = "unit_sums:CUDA" in kernels
    return ExtensionStatus(
        cpu=cpu,
        cuda=cuda,
        cpu_reason="built" if cpu else "; ".join(errors) or "not registered",
        cuda_reason="built" if cuda else cuda_reason or "; ".join(errors) or "not registered",
        kernels=kernels,
    )
