"""Run the tests that need or exercise a GPU, and only those.

A collected test is kept when any of these holds:

  marked ``gpu``                       the suite's marker for tests that need a CUDA device
  parametrized with a GPU backend      a parameter whose name contains "backend" set to
                                       "cuda" or "triton" (the ``backend`` fixture of tests/ops)
  skipped without a CUDA device        a ``skipif`` whose reason names a CUDA device or a GPU
                                       (e.g. tests/ops/test_unit_sums.py)

Everything else is deselected (pytest reports the count). Without a device the kept
tests skip, or run Triton in its CPU interpreter, as the suite decides.

Usage: python bench/gpu_tests.py [pytest arguments, e.g. tests -q]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

GPU_BACKENDS = frozenset({"cuda", "triton"})
DEVICE_REASON = re.compile(r"CUDA device|\bGPU\b", re.IGNORECASE)


def gpu_reason(item: pytest.Item) -> str | None:
    """Why ``item`` is a GPU test (one of the rules above), or None."""
    if item.get_closest_marker("gpu") is not None:
        return "marked gpu"
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for name, value in callspec.params.items():
            if "backend" in name and isinstance(value, str) and value in GPU_BACKENDS:
                return f"{name}={value}"
    for mark in item.iter_markers("skipif"):
        reason = str(mark.kwargs.get("reason", ""))
        if DEVICE_REASON.search(reason):
            return f"skipif: {reason}"
    return None


class GpuSelection:
    """pytest plugin: deselect every test for which ``gpu_reason`` is None."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        kept = [item for item in items if gpu_reason(item) is not None]
        dropped = [item for item in items if gpu_reason(item) is None]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def main(args: list[str]) -> int:
    # The script's folder (bench/) is first on sys.path; its modules must not shadow the suite's imports.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if not p or str(Path(p).resolve()) != here]
    return int(pytest.main(args, plugins=[GpuSelection()]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
