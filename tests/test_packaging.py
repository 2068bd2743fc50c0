"""The wheel holds every subpackage and the kernel sources."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"rlsignals." + ".".join(p.parent.relative_to(ROOT / "pyext" / "rlsignals").parts)
             for p in (ROOT / "pyext" / "rlsignals").rglob("__init__.py")}
    found = {name.rstrip(".") for name in found}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert {"rlsignals.triton_kernels", "rlsignals.csrc"} <= listed


def test_kernel_sources_are_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rlsignals.csrc"]
    sources = [p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cpp", ".cu", ".cuh")]
    for source in sources:
        rel = source.relative_to(ROOT / "csrc")
        assert any(rel.match(pattern) for pattern in patterns), f"{rel} is not shipped"
