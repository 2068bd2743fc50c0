"""TRL's RepeatSampler layout over GAIN-RL draws, and the row-index column it needs.

GRPOTrainer and RLOOTrainer read a generation batch as ``batch_size`` distinct
prompts, each repeated ``num_generations`` times, the whole chunk repeated
``num_iterations * steps_per_generation`` times (TRL's RepeatSampler).
:class:`GainRLRepeatSampler` keeps that layout and ``len()`` and takes the
distinct prompts of chunk c of epoch e from draw ``e * chunks_per_epoch + c``
of a :class:`~rlsignals.signals.samplers.GainRLSampler`. Reward functions learn
which dataset row each completion came from through the column
``rlsignals_row`` (:func:`with_row_column`): TRL passes every dataset column to
reward functions as a keyword argument.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from rlsignals.signals.samplers import GainRLSampler

ROW_COLUMN = "rlsignals_row"


class GainRLRepeatSampler(torch.utils.data.Sampler[int]):
    """TRL's RepeatSampler layout over chunks drawn by a GainRLSampler.

    Yields, for each chunk c of an epoch, draw ``epoch * chunks_per_epoch + c``
    (``sampler.batch_size`` distinct rows), the chunk ``repeat_count`` times,
    each index ``mini_repeat_count`` times. ``chunks_per_epoch = num_rows //
    batch_size``, so ``len()`` equals RepeatSampler's for the same arguments.
    The epoch is the one given to ``set_epoch`` (the Trainer and accelerate
    call it before each pass); without it, each pass takes the next epoch.
    Past draws are replayed with the mu they used, so re-iterating an epoch
    (as a resumed Trainer does when it skips trained batches) yields the same
    indices; a pass may only start where the sampler's draws reach.
    """

    def __init__(self, sampler: GainRLSampler, mini_repeat_count: int, repeat_count: int = 1,
                 num_rows: int | None = None):
        num_rows = sampler.num_rows if num_rows is None else num_rows
        if num_rows != sampler.num_rows:
            raise ValueError(f"the dataset has {num_rows} rows but the sampler holds {sampler.num_rows} scores "
                             "(one score per dataset row is needed)")
        if mini_repeat_count < 1 or repeat_count < 1:
            raise ValueError(f"mini_repeat_count and repeat_count must be >= 1, got {mini_repeat_count} "
                             f"and {repeat_count}")
        self.sampler = sampler
        self.batch_size = sampler.batch_size
        self.mini_repeat_count = mini_repeat_count
        self.repeat_count = repeat_count
        self.chunks_per_epoch = num_rows // self.batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.chunks_per_epoch * self.batch_size * self.mini_repeat_count * self.repeat_count

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch = epoch + 1  # a pass without set_epoch takes the next epoch
        for chunk in range(self.chunks_per_epoch):
            k = epoch * self.chunks_per_epoch + chunk
            made = len(self.sampler.draw_mus)
            if k > made:
                raise RuntimeError(f"epoch {epoch} needs draw {k}, but the sampler has made only {made} draws: "
                                   "restore its state (a checkpoint's GAIN-RL state file) before resuming")
            indices = self.sampler.draw(k)
            for _ in range(self.repeat_count):
                for index in indices:
                    for _ in range(self.mini_repeat_count):
                        yield index


def with_row_column(dataset: Any) -> Any:
    """``dataset`` (an HF ``datasets.Dataset``, what TRL's trainers take) with a column
    ``rlsignals_row`` = the row's index. A dataset that already has the column keeps it
    when it is the row index."""
    columns = getattr(dataset, "column_names", None)
    if columns is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "add_column"):
        raise TypeError("GAIN-RL picks rows by index: train_dataset must be a map-style datasets.Dataset, "
                        f"got {type(dataset).__name__}")
    rows = list(range(len(dataset)))
    if ROW_COLUMN in columns:
        if list(dataset[ROW_COLUMN]) != rows:
            raise ValueError(f"train_dataset has a column {ROW_COLUMN!r} that is not its row index")
        return dataset
    return dataset.add_column(ROW_COLUMN, rows)
