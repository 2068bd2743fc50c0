"""Backend dispatch, the fallback when no extension is built, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import rlsignals
from rlsignals.ops.backends import BACKENDS, resolve_backend


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, check=False)


def test_available_backends_lists_every_backend_with_a_reason():
    status = rlsignals.available_backends()
    assert tuple(status) == BACKENDS
    for live, reason in status.values():
        assert isinstance(live, bool) and isinstance(reason, str) and reason
    assert status["torch"][0] and status["cpp"][0]


def test_auto_picks_cpp_for_cpu_tensors():
    assert resolve_backend("auto", torch.device("cpu")) == "cpp"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a CUDA device triton is live without the interpreter")
def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend 'triton' is not available for unit_sums: no CUDA device"):
        resolve_backend("triton", torch.device("cpu"))


FALLBACK = """
import warnings, torch, rlsignals
from rlsignals.ops.reference import angle_stats_reference
h = torch.randn(12, 5); cu = torch.tensor([0, 5, 12]); p = torch.tensor([2, 3])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    a = rlsignals.angle_stats(h, cu, p)
    b = rlsignals.block_cosine(h, cu, 4)
ref = angle_stats_reference(h, cu, p)
assert torch.allclose(a.intra, ref.intra, atol=1e-6) and torch.allclose(a.inter, ref.inter, atol=1e-6)
print(len(caught), caught[0].category.__name__, caught[0].message)
try:
    rlsignals.angle_stats(h, cu, p, backend="cpp")
except RuntimeError as e:
    print("explicit:", e)
"""


def test_without_extension_auto_falls_back_to_torch_with_one_warning():
    result = run_python(FALLBACK, RLSIGNALS_NO_EXTENSION="1")
    assert result.returncode == 0, result.stderr
    first, explicit = result.stdout.strip().splitlines()
    assert first.startswith("1 RuntimeWarning") and "using the torch backend" in first
    assert "backend 'cpp' is not available for unit_sums: disabled by RLSIGNALS_NO_EXTENSION=1" in explicit


def test_doctor_reports_backends():
    result = subprocess.run([sys.executable, "-m", "rlsignals", "doctor"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "cpp      yes   built" in result.stdout
    assert "torch    yes" in result.stdout


def test_showcase_writes_its_numbers_and_plot(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rlsignals", "showcase", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "showcase.json").read_text())
    assert (tmp_path / "block_cosine.png").stat().st_size > 1000
    assert len(summary["prompts"]) == 12
    assert summary["backend_max_abs_diff_vs_reference"]["cpp"] < 1e-5
    scores = [p["score"] for p in summary["prompts"]]
    assert scores == sorted(scores, reverse=True)


def copy_sources(dest):
    import shutil

    from rlsignals.ops.extension import source_dir

    shutil.copytree(source_dir(), dest, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return dest


def test_build_cache_is_keyed_by_the_sources(tmp_path, monkeypatch):
    """Two checkouts: equal sources share a build, any changed source or header (or
    build flag) gets its own folder, with or without RLSIGNALS_BUILD_DIR."""
    from rlsignals.ops import extension

    monkeypatch.delenv("RLSIGNALS_BUILD_DIR", raising=False)
    first, second = copy_sources(tmp_path / "a"), copy_sources(tmp_path / "b")
    assert extension.build_dir(first) == extension.build_dir(second) == extension.build_dir()
    assert extension.build_dir(first).parent == extension.Path.home() / ".cache" / "rlsignals" / "build"
    assert extension.build_dir(first).name.endswith("-src" + extension.source_hash(first))

    header = second / "cuda" / "unit_sums.cuh"
    header.write_text(header.read_text() + "\n// another version\n")
    assert extension.build_dir(first) != extension.build_dir(second)

    monkeypatch.setenv("RLSIGNALS_BUILD_DIR", str(tmp_path / "cache"))
    assert extension.build_dir(first).parent == tmp_path / "cache"
    assert extension.build_dir(first) != extension.build_dir(second)
    key = extension.source_hash(first)
    monkeypatch.setattr(extension, "CFLAGS", extension.CFLAGS + ("-DNDEBUG",))
    assert extension.source_hash(first) != key


def test_registered_kernels_come_from_the_library():
    from rlsignals.ops.backends import op_status
    from rlsignals.ops.registration import compiled_ops

    assert {"unit_sums:CPU", "delta_products:CPU"} <= compiled_ops().kernels
    assert set(torch.ops.rlsignals.registered_kernels()) == set(compiled_ops().kernels)
    assert op_status("delta_products", "cpp") == (True, "built")
    with pytest.raises(ValueError, match="op must be one of"):
        op_status("svd", "cpp")


def test_constant_result_marks_as_the_public_decorator_does():
    """resolve_backend is marked for torch.compile without importing dynamo at import time;
    this fails if torch's decorator ever does more than set that one attribute."""
    from rlsignals.ops.backends import constant_result

    def public():
        return 0

    def ours():
        return 0

    torch.compiler.assume_constant_result(public)
    constant_result(ours)
    assert public.__dict__ == ours.__dict__ == {"_dynamo_marked_constant": True}


IMPORTS = """
import sys, rlsignals
heavy = sorted(m for m in ("torch", "torch._dynamo", "triton", "transformers") if m in sys.modules)
rlsignals.angle_stats
loaded = sorted(m for m in ("torch._dynamo", "triton") if m in sys.modules)
print(heavy, loaded)
"""


def test_import_loads_neither_torch_nor_dynamo_nor_triton():
    result = run_python(IMPORTS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "[]"]
