"""The released GAIN-RL update rule, replayed over what a sampler recorded."""

import math

import pytest


def check_released_updates(history: list[dict], seen: list[list[int]], targets, scores, *, batch: int, n: float,
                           adj_max: float, rows: int) -> list[float]:
    """Assert that each recorded update took the batch means of ``targets`` (accuracy) and
    ``scores`` (angle) over the rows drawn, and moved mu by the released rule
    mu <- clip(mu + clip(n tanh(2 (acc - 1/2)) + n tanh(2 ang), 0, adj_max), 0, rows - 1).
    Returns mu before the first update and after each one."""
    mu, mus = 0.0, [0.0]
    for k, update in enumerate(history):
        acc = sum(targets[r] for r in seen[k]) / batch
        ang = sum(scores[r] for r in seen[k]) / batch
        assert update["acc"] == pytest.approx(acc) and update["ang"] == pytest.approx(ang)
        step = n * math.tanh(2 * (acc - 0.5)) + n * math.tanh(2 * ang)
        mu = min(max(mu + min(max(step, 0), adj_max), 0), rows - 1)
        assert update["mu"] == pytest.approx(mu)
        mus.append(mu)
    return mus
