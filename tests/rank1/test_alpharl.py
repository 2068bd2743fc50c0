"""AlphaRL math: backward sign alignment, PLS fit and inversion, LOO, linear-in-step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlsignals.rank1.alpharl import align_signs, fit_pls, linear_in_step


def test_sign_alignment_only_looks_backwards():
    base = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    u = torch.stack([base[0], -base[0] * 0.9 + 0.1 * base[1], base[0]])
    v = torch.randn(3, 4)
    aligned_u, aligned_v, flips = align_signs(u, v)
    assert flips.tolist() == [False, True, False]
    assert torch.equal(aligned_u[1], -u[1]) and torch.equal(aligned_v[1], -v[1])
    assert torch.equal(aligned_u[0], u[0])
    # a prefix of the checkpoints is aligned the same way whatever comes later
    prefix_u, _, _ = align_signs(u[:2], v[:2])
    assert torch.equal(prefix_u, aligned_u[:2])


def test_pls_recovers_a_planted_linear_trajectory_at_a_held_out_step():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=32)
    steps = np.arange(1, 11)
    acc = 0.2 + 0.05 * steps
    features = np.outer(steps, direction) + 1e-3 * rng.normal(size=(10, 32))
    fit = fit_pls(features[:6], acc[:6])  # fit on the first 6 checkpoints
    assert fit.r2 > 0.999 and fit.r2_loo > 0.99
    predicted = fit.invert(acc[9])  # the accuracy of step 10, never seen
    assert np.linalg.norm(predicted - features[9]) / np.linalg.norm(features[9]) < 1e-2


def test_pls_errors():
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        fit_pls(np.ones((1, 3)), np.ones(1))
    with pytest.raises(ValueError, match="same at every fitted checkpoint"):
        fit_pls(np.random.rand(3, 3), np.ones(3))


def test_linear_in_step():
    direction = np.arange(5.0)
    features = np.outer([2, 4, 6], direction) + 1.0
    predicted, r2 = linear_in_step(features, [2, 4, 6], 10)
    assert np.allclose(predicted, 10 * direction + 1.0) and r2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two or more distinct steps"):
        linear_in_step(features, [3, 3, 3], 10)
