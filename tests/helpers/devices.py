"""Where each backend's tensors live."""

import torch


def backend_device(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "cuda" else "cpu")
