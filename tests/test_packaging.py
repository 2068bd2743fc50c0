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
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["rlsignals.csrc"]
    sources = {p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cpp", ".cu", ".cuh")}
    # setuptools globs each pattern from the package folder ("*.h" does not reach bindings/)
    shipped = {p for pattern in patterns for p in (ROOT / "csrc").glob(pattern)}
    missing = sorted(str(p.relative_to(ROOT / "csrc")) for p in sources - shipped)
    assert not missing, f"not shipped as package data: {missing}"
