"""Where each backend's tensors live."""

import torch


def backend_device(backend: str) -> torch.device:
    """CUDA for the cuda backend, and for triton when a device is present (Triton runs CPU
    tensors only in its interpreter, which is not set on a GPU machine); the CPU otherwise."""
    on_gpu = backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
    return torch.device("cuda" if on_gpu else "cpu")
