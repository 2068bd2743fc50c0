"""Prompt samplers: GAIN-RL (Gaussian sampling over angle-score ranks with a moving
mean) and uniform. Both draw a batch of distinct dataset indices per step, take
``update`` after it, and save/restore their state.

GAIN-RL.

Prompts are ranked by score, descending (rank 0 = highest angle signal = learnt
soonest). Draw k draws ``batch_size`` distinct ranks with probability

    p(i) ∝ exp(-((i - mu) / sigma)^2 / 2),     i = 0 .. N-1,

and, after the batch is trained on, ``update(acc, ang)`` moves the mean by

    adj = n * tanh(alpha * (acc_scale * acc - beta)) + n * tanh(alpha * ang)
    mu <- clip(mu + clip(adj, adj_min, adj_max), 0, N - 1)

where acc and ang are the batch means of accuracy and angle score (tanh
saturates: with the released weighting intra + 8 * inter, scores reach ~9 and
the angle term is ~n at every step; scores of order 1, e.g. intra + inter,
keep it informative). Defaults are
the released code's (sigma = 1000 ranks, n = 500, beta = 0.5, alpha = 2,
acc_scale = 1/2, adj_min = 0, adj_max = 1000: mu never moves back);
``two_way=True`` sets adj_min = -adj_max. mu is kept inside [0, N-1] (the
released code lets it run past the data, where every weight underflows).

Determinism: draw k uses a generator seeded from (seed, k), so a draw is a
pure function of (seed, k, mu). The state records the mu of every draw made,
so a restored sampler replays past draws exactly (what a trainer does when it
skips the batches it already trained on after a resume) and every rank that
applies the same updates yields the same sequence.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

_SEED_STRIDE = 1_000_003  # mixes (seed, draw index) into one generator seed


def draw_generator(seed: int, draw_index: int) -> torch.Generator:
    """The generator of draw ``draw_index`` of a sampler seeded with ``seed``."""
    return torch.Generator().manual_seed(seed * _SEED_STRIDE + draw_index)


class GainRLSampler:
    """Draws batches of dataset indices centred on a moving rank ``mu``.

    scores: one angle score per dataset row (higher = learnt sooner).
    batch_size: distinct indices per draw (<= number of rows).
    sigma: width in ranks; sigma_fraction: width as a fraction of the dataset
        (overrides sigma when given).
    """

    def __init__(self, scores: Sequence[float] | torch.Tensor, batch_size: int, *, sigma: float = 1000.0,
                 sigma_fraction: float | None = None, mu: float = 0.0, n: float = 500.0, beta: float = 0.5,
                 alpha: float = 2.0, acc_scale: float = 0.5, adj_min: float = 0.0, adj_max: float = 1000.0,
                 two_way: bool = False, seed: int = 0):
        scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
        if scores.numel() == 0:
            raise ValueError("scores must hold one score per dataset row, got none")
        if not bool(torch.isfinite(scores).all()):
            bad = int(torch.nonzero(~torch.isfinite(scores))[0])
            raise ValueError(f"scores must be finite; scores[{bad}] = {float(scores[bad])} "
                             "(drop or re-score such rows first)")
        if not 1 <= batch_size <= scores.numel():
            raise ValueError(f"batch_size must be in [1, {scores.numel()}] (the number of rows), got {batch_size}")
        if sigma_fraction is not None:
            if not 0 < sigma_fraction:
                raise ValueError(f"sigma_fraction must be > 0, got {sigma_fraction}")
            sigma = sigma_fraction * scores.numel()
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0 ranks, got {sigma}")
        if adj_min > adj_max:
            raise ValueError(f"adj_min ({adj_min}) must not exceed adj_max ({adj_max})")
        self.scores = scores
        # rank -> dataset index; stable, so ties keep dataset order
        self.order = torch.argsort(scores, descending=True, stable=True)
        self.batch_size = batch_size
        self.sigma = float(sigma)
        self.n, self.beta, self.alpha, self.acc_scale = n, beta, alpha, acc_scale
        self.adj_min = -adj_max if two_way else adj_min
        self.adj_max = adj_max
        self.seed = seed
        self.mu = self._clip_mu(mu)
        self.draw_mus: list[float] = []  # mu used by each draw made so far
        self.history: list[dict] = []    # one entry per update

    @property
    def num_rows(self) -> int:
        return self.scores.numel()

    def _clip_mu(self, mu: float) -> float:
        return min(max(float(mu), 0.0), float(self.num_rows - 1))

    def rank_weights(self, mu: float) -> torch.Tensor:
        ranks = torch.arange(self.num_rows, dtype=torch.float64)
        return torch.exp(-0.5 * ((ranks - mu) / self.sigma) ** 2)

    def draw(self, draw_index: int | None = None) -> list[int]:
        """Dataset indices of draw ``draw_index`` (default: the next new draw).

        A past draw is replayed with the mu it used; a new draw uses the current mu.
        """
        if draw_index is None:
            draw_index = len(self.draw_mus)
        if draw_index > len(self.draw_mus):
            raise ValueError(f"draw {draw_index} requested, but only {len(self.draw_mus)} draws were made")
        if draw_index == len(self.draw_mus):
            self.draw_mus.append(self.mu)
        mu = self.draw_mus[draw_index]
        gen = draw_generator(self.seed, draw_index)
        ranks = torch.multinomial(self.rank_weights(mu), self.batch_size, replacement=False, generator=gen)
        return self.order[ranks].tolist()

    def adjustment(self, acc: float, ang: float) -> float:
        adj = self.n * math.tanh(self.alpha * (self.acc_scale * acc - self.beta)) + self.n * math.tanh(self.alpha * ang)
        return min(max(adj, self.adj_min), self.adj_max)

    def update(self, acc: float, ang: float | None = None, indices: Sequence[int] | None = None) -> float:
        """Move mu after a batch: acc = its mean accuracy; ang = its mean angle
        score, or computed from ``indices`` (the batch's dataset indices). Returns the new mu."""
        if ang is None:
            if indices is None or len(indices) == 0:
                raise ValueError("update needs ang or the batch's dataset indices")
            ang = float(self.scores[torch.as_tensor(list(indices))].mean())
        if not (math.isfinite(acc) and math.isfinite(ang)):
            raise ValueError(f"update got a non-finite accuracy or angle score (acc={acc}, ang={ang})")
        adj = self.adjustment(acc, ang)
        self.mu = self._clip_mu(self.mu + adj)
        self.history.append({"draws": len(self.draw_mus), "acc": float(acc), "ang": float(ang), "adj": adj,
                             "mu": self.mu})
        return self.mu

    @property
    def scores_digest(self) -> str:
        return hashlib.sha1(self.scores.numpy().tobytes()).hexdigest()[:16]

    def state_dict(self) -> dict:
        return {"mu": self.mu, "draw_mus": list(self.draw_mus), "history": [dict(h) for h in self.history],
                "seed": self.seed, "num_rows": self.num_rows, "batch_size": self.batch_size, "sigma": self.sigma,
                "scores_digest": self.scores_digest}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state saved by a sampler over the same scores and settings
        (anything else would replay different draws, so it is refused)."""
        for key in ("num_rows", "batch_size", "seed", "sigma", "scores_digest"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]}, this sampler has {getattr(self, key)}")
        self.mu = float(state["mu"])
        self.draw_mus = [float(m) for m in state["draw_mus"]]
        self.history = [dict(h) for h in state["history"]]


class UniformSampler:
    """Distinct indices drawn uniformly at random, independently per step."""

    def __init__(self, num_rows: int, batch_size: int, seed: int = 0):
        if not 1 <= batch_size <= num_rows:
            raise ValueError(f"batch_size must be in [1, {num_rows}], got {batch_size}")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.draws = 0

    def draw(self) -> list[int]:
        gen = draw_generator(self.seed, self.draws)
        self.draws += 1
        return torch.randperm(self.num_rows, generator=gen)[: self.batch_size].tolist()

    def update(self, acc: float, ang: float | None = None, indices: Sequence[int] | None = None) -> None:
        """Uniform sampling ignores feedback."""

    def state_dict(self) -> dict:
        return {"draws": self.draws, "seed": self.seed, "num_rows": self.num_rows, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_rows", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]}, this sampler has {getattr(self, key)}")
        self.draws = state["draws"]
