"""GainRLSampler: the released update rule, distinct draws, determinism, state."""

from __future__ import annotations

import math

import pytest
import torch

from rlsignals.signals.samplers import GainRLSampler


def test_draws_are_distinct_and_centred_on_mu():
    scores = torch.linspace(1, 0, 5000)  # already sorted: rank == index
    sampler = GainRLSampler(scores, 64, sigma=50, mu=2000, seed=1)
    for _ in range(20):
        batch = sampler.draw()
        assert len(set(batch)) == 64
        assert all(abs(i - 2000) < 6 * 50 for i in batch)
    all_draws = torch.tensor([sampler.draw(k) for k in range(20)], dtype=torch.float64)
    assert abs(all_draws.mean().item() - 2000) < 10
    assert abs(all_draws.std().item() - 50) < 5


def test_ranks_follow_score_order():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7])
    sampler = GainRLSampler(scores, 1, sigma=1e-3)  # only rank mu can be drawn
    assert sampler.draw() == [1]  # highest score first
    sampler.mu = 3.0
    assert sampler.draw() == [0]


def test_update_rule_matches_the_released_formula():
    sampler = GainRLSampler(torch.rand(10_000), 8)
    acc, ang = 1.6, 0.3
    expected = 500 * math.tanh(2 * (acc / 2 - 0.5)) + 500 * math.tanh(2 * ang)
    assert sampler.update(acc, ang) == pytest.approx(expected)
    # the accuracy term alone is negative for low accuracy; the default clamp keeps mu from moving back
    before = sampler.mu
    assert sampler.update(0.0, -1.0) == before
    assert sampler.history[-1]["adj"] == 0.0


def test_two_way_moves_back_and_mu_stays_in_range():
    sampler = GainRLSampler(torch.rand(100), 4, two_way=True, mu=50)
    sampler.update(0.0, -1.0)
    assert sampler.mu < 50
    for _ in range(5):
        sampler.update(2.0, 1.0)
    assert sampler.mu == 99.0
    for _ in range(5):
        sampler.update(0.0, -1.0)
    assert sampler.mu == 0.0


def test_update_from_batch_indices_uses_their_mean_score():
    scores = torch.tensor([0.2, 0.4, 0.6, 0.8])
    a, b = GainRLSampler(scores, 2), GainRLSampler(scores, 2)
    assert a.update(1.0, indices=[0, 3]) == b.update(1.0, ang=0.5)


def test_same_seed_same_sequence_and_state_round_trip():
    scores = torch.rand(3000, generator=torch.Generator().manual_seed(0))

    def run(sampler, steps, start=0):
        out = []
        for step in range(start, start + steps):
            out.append(sampler.draw())
            sampler.update(acc=0.5 + 0.05 * step, indices=out[-1])
        return out

    first = run(GainRLSampler(scores, 16, seed=7), 10)
    assert first == run(GainRLSampler(scores, 16, seed=7), 10)
    assert first != run(GainRLSampler(scores, 16, seed=8), 10)

    # interrupt after 4 steps, restore into a fresh sampler, continue
    part = GainRLSampler(scores, 16, seed=7)
    head = run(part, 4)
    resumed = GainRLSampler(scores, 16, seed=7)
    resumed.load_state_dict(part.state_dict())
    assert [resumed.draw(k) for k in range(4)] == head  # past draws replay exactly
    assert head + run(resumed, 6, start=4) == first


@pytest.mark.parametrize("kwargs, match", [
    (dict(scores=[], batch_size=1), "one score per dataset row"),
    (dict(scores=[0.1, float("nan")], batch_size=1), r"scores\[1\] = nan"),
    (dict(scores=[0.1, 0.2], batch_size=3), r"batch_size must be in \[1, 2\]"),
    (dict(scores=[0.1, 0.2], batch_size=1, sigma=0), "sigma must be > 0"),
    (dict(scores=[0.1, 0.2], batch_size=1, sigma_fraction=-1), "sigma_fraction must be > 0"),
    (dict(scores=[0.1, 0.2], batch_size=1, adj_min=5, adj_max=1), "adj_min"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GainRLSampler(**kwargs)


def test_state_from_another_sampler_is_refused():
    with pytest.raises(ValueError, match="num_rows=5"):
        GainRLSampler(torch.rand(4), 2).load_state_dict(GainRLSampler(torch.rand(5), 2).state_dict())
    scores = torch.rand(6)
    with pytest.raises(ValueError, match="sigma=3.0"):
        GainRLSampler(scores, 2, sigma=4).load_state_dict(GainRLSampler(scores, 2, sigma=3).state_dict())
    with pytest.raises(ValueError, match="scores_digest"):
        GainRLSampler(scores, 2).load_state_dict(GainRLSampler(scores + 1, 2).state_dict())


def test_sigma_fraction():
    assert GainRLSampler(torch.rand(2000), 4, sigma_fraction=0.1).sigma == 200
