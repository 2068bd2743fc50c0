"""Bad input to the angle ops raises a clear error before any kernel runs."""

from __future__ import annotations

import pytest
import torch

import rlsignals

H = torch.randn(10, 4)
CU = torch.tensor([0, 4, 10])
P = torch.tensor([1, 2])


@pytest.mark.parametrize("hidden, cu, prefix, error, match", [
    (H.numpy(), CU, P, TypeError, "hidden must be a torch.Tensor"),
    (H[None], CU, P, ValueError, r"hidden must be 2-D \[T, d\].*\(1, 10, 4\)"),
    (H.double(), CU, P, TypeError, "float32, float16 or bfloat16, got torch.float64"),
    (H.int(), CU, P, TypeError, "got torch.int32"),
    (torch.zeros(10, 0), CU, P, ValueError, "d >= 1"),
    (H, CU.float(), P, TypeError, "cu_seqlens must be int32 or int64"),
    (H, CU[None], P, ValueError, "cu_seqlens must be 1-D"),
    (H, torch.tensor([], dtype=torch.int64), P[:0], ValueError, "B \\+ 1 >= 1"),
    (H, torch.tensor([1, 4, 10]), P, ValueError, "must start at 0, got 1"),
    (H, torch.tensor([0, 6, 4, 10]), torch.tensor([0, 0, 0]), ValueError, r"non-decreasing.*cu_seqlens\[2\] = 4"),
    (H, torch.tensor([0, 4, 9]), P, ValueError, "end at the number of tokens T = 10, got 9"),
    (H, CU, torch.tensor([1]), ValueError, "one entry per sequence \\(B = 2\\), got 1"),
    (H, CU, torch.tensor([5, 2]), ValueError, r"prefix_lens\[0\] = 5 must lie in \[0, 4\]"),
    (H, CU, torch.tensor([1, -1]), ValueError, r"prefix_lens\[1\] = -1"),
    (H, CU, P.bool(), TypeError, "prefix_lens must be int32 or int64"),
])
def test_angle_stats_rejects(hidden, cu, prefix, error, match):
    with pytest.raises(error, match=match):
        rlsignals.angle_stats(hidden, cu, prefix)


@pytest.mark.parametrize("block_size, error, match", [
    (0, ValueError, "block_size must be >= 1, got 0"),
    (2.0, TypeError, "block_size must be an int, got float"),
    (True, TypeError, "block_size must be an int, got bool"),
])
def test_block_cosine_rejects_block_size(block_size, error, match):
    with pytest.raises(error, match=match):
        rlsignals.block_cosine(H, CU, block_size)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        rlsignals.angle_stats(H, CU, P, backend="metal")


def test_explicit_backend_that_cannot_run_raises():
    cuda_live = rlsignals.available_backends()["cuda"][0]
    error, match = (ValueError, "backend 'cuda' runs on CUDA tensors") if cuda_live else (RuntimeError, "not available")
    with pytest.raises(error, match=match):
        rlsignals.angle_stats(H, CU, P, backend="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to put tensors on two devices")
def test_tensors_on_different_devices():
    with pytest.raises(ValueError, match="cu_seqlens is on cpu but hidden is on cuda"):
        rlsignals.angle_stats(H.cuda(), CU, P.cuda())


def test_tensors_on_different_devices_meta():
    """Device mismatch is caught on any pair of devices, here cpu and meta."""
    with pytest.raises(ValueError, match="prefix_lens is on meta but hidden is on cpu"):
        rlsignals.angle_stats(H, CU, P.to("meta"))
