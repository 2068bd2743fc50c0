"""Prompt samplers the trainer can drive: GAIN-RL (rlsignals.sampler) or uniform.

Both draw a batch of distinct dataset indices per step, take ``update`` after
it, and save/restore their state; a draw is a pure function of (seed, draw
index[, mu]), so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rlsignals.sampler import draw_generator


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
