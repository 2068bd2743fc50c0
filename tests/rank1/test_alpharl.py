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


@pytest.mark.parametrize("scale", [False, True])
def test_pls_fit_and_inversion_match_scikit_learn(scale):
    from sklearn.cross_decomposition import PLSRegression

    rng = np.random.default_rng(1)
    features = np.outer(np.arange(1, 6), rng.normal(size=12)) + 0.3 * rng.normal(size=(5, 12))
    acc = np.array([0.21, 0.30, 0.33, 0.41, 0.52])
    fit = fit_pls(features, acc, scale=scale)
    reference = PLSRegression(n_components=1, scale=scale).fit(features, acc)
    predicted = reference.predict(features).ravel()
    assert fit.r2 == pytest.approx(1 - ((acc - predicted) ** 2).sum() / ((acc - acc.mean()) ** 2).sum())
    x_star = fit.invert(0.9)
    # x* lies on scikit-learn's reconstruction line and scikit-learn predicts the target there
    assert np.allclose(reference.inverse_transform(reference.transform(x_star[None]))[0], x_star, atol=1e-9)
    assert reference.predict(x_star[None]).ravel()[0] == pytest.approx(0.9, abs=1e-9)


def test_released_and_ours_differ_beyond_two_checkpoints_only():
    rng = np.random.default_rng(2)
    features = np.outer(np.arange(1, 5), rng.normal(size=10)) + rng.normal(size=(4, 10)) * rng.uniform(0.1, 2, 10)
    acc = np.array([0.2, 0.35, 0.33, 0.5])
    two = [fit_pls(features[:2], acc[:2], scale=s).invert(0.8) for s in (True, False)]
    assert np.allclose(two[0], two[1])
    four = [fit_pls(features, acc, scale=s).invert(0.8) for s in (True, False)]
    assert np.linalg.norm(four[0] - four[1]) / np.linalg.norm(four[1]) > 1e-2


def test_alpharl_update_uses_the_released_scaling_under_the_released_name():
    from rlsignals.rank1.alpharl import PLS_SCALE, aligned_features, alpharl_update

    rng = torch.Generator().manual_seed(3)
    sigma = torch.tensor([1.0, 2.1, 2.9, 4.2])
    u = torch.nn.functional.normalize(torch.randn(1, 6, generator=rng) + 0.3 * torch.randn(4, 6, generator=rng), dim=1)
    v = torch.nn.functional.normalize(torch.randn(4, 5, generator=rng), dim=1)
    acc = [0.2, 0.31, 0.36, 0.5]
    features, aligned_v, _ = aligned_features(sigma, u, v)
    for update in ("released", "replace"):
        delta, fit, _ = alpharl_update(sigma, u, v, acc, 0.7, update)
        x_star = fit_pls(features, acc, scale=PLS_SCALE[update]).invert(0.7)
        increment = x_star if update == "released" else x_star - features[-1]
        assert torch.allclose(delta, torch.outer(torch.as_tensor(increment, dtype=torch.float32), aligned_v[-1]),
                              atol=1e-6)
    assert PLS_SCALE == {"released": True, "replace": False}
