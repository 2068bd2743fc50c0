"""Test-session setup and shared fixtures (helper functions live in tests/helpers).

Without a GPU, Triton kernels run in Triton's CPU interpreter; the variable
must be set before triton is first imported, so it is set here.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from rlsignals.ops.backends import BACKENDS, available_backends  # noqa: E402


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Every backend. cuda is skipped without a GPU; the others must be live
    here (a failed C++ build or a missing triton fails the test, never skips it)."""
    name = request.param
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("cuda backend needs a CUDA device")
    live, reason = available_backends()[name]
    assert live, f"backend {name} is not live: {reason}"
    return name
