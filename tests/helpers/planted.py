"""Weight pairs with planted delta spectra, and fp64 oracles for delta_svd tests."""

from __future__ import annotations

import math

import torch


def orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, dtype=torch.float64, generator=gen)).Q


def planted_delta(m: int, n: int, sigmas: list[float], *, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """fp64 [m, n]: sum_i sigmas[i] u_i v_i^T (random orthonormal u, v) plus Gaussian noise
    whose spectral norm is about ``noise`` (entries of std noise / (sqrt(m) + sqrt(n)))."""
    gen = torch.Generator().manual_seed(seed)
    r = len(sigmas)
    delta = (orthonormal(m, r, gen) * torch.tensor(sigmas, dtype=torch.float64)) @ orthonormal(n, r, gen).T
    scale = noise / (math.sqrt(m) + math.sqrt(n))
    return delta + scale * torch.randn(m, n, dtype=torch.float64, generator=gen)


def gap_spectrum(ratio: float, length: int = 12, decay: float = 0.6) -> list[float]:
    """sigma_1 = 1, sigma_2 = ratio, then a geometric tail: the gap sigma_2 / sigma_1 = ratio."""
    return [1.0] + [ratio * decay ** i for i in range(length - 1)]


def weight_pair(delta: torch.Tensor, dtype: torch.dtype, *, scale: float = 0.02, seed: int = 1):
    """(after, before) in ``dtype`` with after - before close to ``delta`` (exactly the
    difference of the rounded tensors is what the oracle uses)."""
    gen = torch.Generator().manual_seed(seed)
    before = scale * torch.randn(delta.shape, dtype=torch.float64, generator=gen)
    return (before + delta).to(dtype), before.to(dtype)


def exact_delta(after: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor:
    return after.double() - (0 if before is None else before.double())


def true_errors(out, after, before, k: int) -> torch.Tensor:
    """max_i |S_i - sigma_i| / sigma_1 of each member, against fp64 svdvals of the rounded inputs."""
    exact = torch.linalg.svdvals(exact_delta(after, before))[..., :k]
    return (out.S.double() - exact).abs().amax(-1) / exact[..., 0]


def sin_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sine of the angle between unit vectors a and b along dim -1, sign-blind."""
    cos = (a.double() * b.double()).sum(-1).abs().clamp(max=1)
    return torch.sqrt(1 - cos.square())


def spiked_bulk(m: int, n: int, ratio: float, *, seed: int = 0) -> torch.Tensor:
    """fp64 [m, n]: a rank-1 spike over a Gaussian (Marchenko-Pastur) bulk, the spike set so that
    sigma_1 / sigma_2 is about ``ratio`` (BBP: with noise entries of variance 1/n and aspect
    c = m/n, a spike t > c^(1/4) gives the outlier sqrt((1 + t^2)(c + t^2)) / t over the edge
    1 + sqrt(c)). The top direction holds well under 5% of ||dW||_F^2 at these sizes."""
    c = m / n
    want = ratio * (1 + math.sqrt(c))
    lo, hi = c ** 0.25, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.sqrt((1 + mid * mid) * (c + mid * mid)) / mid < want else (lo, mid)
    gen = torch.Generator().manual_seed(seed)
    spike = lo * torch.outer(orthonormal(m, 1, gen)[:, 0], orthonormal(n, 1, gen)[:, 0])
    return spike + torch.randn(m, n, dtype=torch.float64, generator=gen) / math.sqrt(n)
