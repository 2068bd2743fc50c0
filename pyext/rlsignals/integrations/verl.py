"""GAIN-RL prompt selection in verl.

verl 0.5 to 0.7 loads a curriculum sampler from its data config (a subclass of
``verl.experimental.dataset.sampler.AbstractCurriculumSampler``) and calls
``update(batch)`` after every training step (tested with verl 0.7.1: its
RLHFDataset, StatefulDataLoader, DataProto and sampler loader)::

    data.sampler.class_path=pkg://rlsignals.integrations.verl   (or the path of this file)
    data.sampler.class_name=GainRLVerlSampler
    data.dataloader_num_workers=0                               (verl requires it for such samplers)
    +data.sampler.scores_file=scores.parquet                    (or a score column in the data, below)

Options, all under ``data.sampler`` (add them with ``+data.sampler.NAME=...``):

- ``scores_file``: a table written by ``rlsignals score`` (.parquet, .jsonl,
  .json or .csv; rows with ``index`` and ``score``), or a JSON list of numbers;
- ``score_column`` (default ``score``): the score's column in that file, or,
  without a file, in the training data itself (verl's RLHFDataset keeps its
  rows in ``.dataframe``);
- ``accuracy_key`` (default ``acc``): the per-response field of
  ``batch.non_tensor_batch`` that is the accuracy (verl's reward managers put
  the ``acc`` returned by scoring functions there); without it, the
  per-response sum of ``batch.batch["token_level_scores"]`` (the reward);
- ``seed`` (default ``data.seed``, else 0) and the update rule's options of
  :class:`~rlsignals.signals.samplers.GainRLSampler`: sigma, sigma_fraction, mu, n,
  beta, alpha, acc_scale, adj_min, adj_max, two_way.

The number of prompts per draw is verl's DataLoader batch size,
``data.gen_batch_size`` or else ``data.train_batch_size``.

Guarantees. Pass e of the DataLoader yields draws ``e * chunks_per_epoch`` ..
``(e + 1) * chunks_per_epoch - 1`` (``chunks_per_epoch = rows // batch_size``,
so ``len()`` is that many batches), each draw one DataLoader batch. No lag:
with no DataLoader workers, draw k+1 is made when verl fetches step k+1's
batch, after ``update`` has seen step k's, so draw k uses mu after k updates.
Each ``update`` uses the batch's mean accuracy and the mean score of the rows
of every draw made since the previous update (one draw, or several when a
step pulls several batches, as DAPO's dynamic sampling does).
``state_dict``/``load_state_dict`` record mu, the mu of every draw made and
the position in the current pass; torchdata's StatefulDataLoader (verl's
loader) saves them in its checkpoint state and, on resume, restores them and
iterates again, so the restored sampler continues the pass where it stopped
and the run goes on as if never interrupted. Re-iterating a past pass
(``set_epoch``) replays its draws with the mu they used.

verl 0.8 and newer removed this hook (up to 0.9.1 at least). There, write the dataset sorted by
score offline (``rlsignals score ... --ordered-data ordered.parquet``), train
on that file with ``data.shuffle=False``: verl then reads prompts from the
highest angle score down. That is GAIN-RL's ordering without its adaptive
Gaussian window (mu cannot react to accuracy there).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlsignals.io.tables import read_table
from rlsignals.signals.samplers import GainRLSampler

try:  # verl's base class when verl is installed: verl checks isinstance(sampler, AbstractSampler)
    from verl.experimental.dataset.sampler import AbstractCurriculumSampler as _SamplerBase
except ImportError:  # duck-typed to the same interface
    _SamplerBase = torch.utils.data.Sampler

_RULE_OPTIONS = ("sigma", "sigma_fraction", "mu", "n", "beta", "alpha", "acc_scale", "adj_min", "adj_max", "two_way")
_STATE_FORMAT = "rlsignals.gain_rl.verl/1"


def _option(config: Any, key: str, default: Any = None) -> Any:
    """config[key] for a dict, an omegaconf DictConfig or an attribute holder; default if absent or None."""
    if config is None:
        return default
    value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
    return default if value is None else value


def load_scores(path: str | Path, num_rows: int | None = None, column: str = "score") -> list[float]:
    """One score per dataset row from a score table (rows with ``index`` and
    ``column``, as ``rlsignals score`` writes them, in any order), a table
    without ``index`` (rows in dataset order), or a JSON list of numbers."""
    path = Path(path)
    rows = read_table(path, "scores")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty list of rows or numbers")
    if all(isinstance(row, (int, float)) for row in rows):
        scores = [float(row) for row in rows]
    else:
        if not all(isinstance(row, dict) and column in row for row in rows):
            bad = next(i for i, row in enumerate(rows) if not isinstance(row, dict) or column not in row)
            raise ValueError(f"{path}: row {bad} has no {column!r} field")
        if all("index" in row for row in rows):
            by_index = {int(row["index"]): float(row[column]) for row in rows}
            if sorted(by_index) != list(range(len(rows))):
                missing = sorted(set(range(len(rows))) - set(by_index))[:5]
                raise ValueError(f"{path}: the 'index' field must number the rows 0..{len(rows) - 1} once each "
                                 f"(missing e.g. {missing})")
            scores = [by_index[i] for i in range(len(rows))]
        else:
            scores = [float(row[column]) for row in rows]
    if num_rows is not None and len(scores) != num_rows:
        raise ValueError(f"{path}: {len(scores)} scores for a dataset of {num_rows} rows")
    return scores


def _column(data_source: Any, name: str) -> list:
    """A column of verl's RLHFDataset (its ``.dataframe``), an HF dataset or a pandas frame."""
    for table in (getattr(data_source, "dataframe", None), data_source):
        if table is None:
            continue
        columns = getattr(table, "column_names", None)
        if columns is None and hasattr(table, "columns"):
            columns = list(table.columns)
        if columns is not None and name in columns:
            return list(table[name])
    raise ValueError(f"the training data has no score column {name!r}: add one (rlsignals score --ordered-data "
                     "writes it), set data.sampler.score_column, or name a file in data.sampler.scores_file")


class GainRLVerlSampler(_SamplerBase):
    """verl (<= 0.7) curriculum sampler: GAIN-RL draws, one per DataLoader batch.

    ``GainRLVerlSampler(data_source, data_config)`` as verl builds it; see the
    module docstring for the options and what is guaranteed.
    """

    def __init__(self, data_source: Any, data_config: Any):
        options = _option(data_config, "sampler", {})
        num_rows = len(data_source)
        scores_file = _option(options, "scores_file")
        column = _option(options, "score_column", "score")
        scores = load_scores(scores_file, num_rows, column) if scores_file else _column(data_source, column)
        if len(scores) != num_rows:
            raise ValueError(f"{len(scores)} scores for a dataset of {num_rows} rows")
        batch_size = int(_option(data_config, "gen_batch_size", _option(data_config, "train_batch_size", 0)))
        rule = {key: _option(options, key) for key in _RULE_OPTIONS if _option(options, key) is not None}
        seed = int(_option(options, "seed", _option(data_config, "seed", 0)))
        self.gain = GainRLSampler(scores, batch_size, seed=seed, **rule)
        self.accuracy_key = _option(options, "accuracy_key", "acc")
        self.chunks_per_epoch = num_rows // batch_size
        self.metrics: dict[str, float] = {}
        self._pending: list[int] = []          # draws made since the last update
        self._next_epoch = 0
        self._epoch, self._yielded = 0, 0      # the current (or last) pass and how far it got
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.chunks_per_epoch * self.gain.batch_size

    def set_epoch(self, epoch: int) -> None:
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None
        self._next_epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self._resume if self._resume is not None else (self._next_epoch, 0)
        self._resume = None
        self._next_epoch = epoch + 1
        self._epoch, self._yielded = epoch, skip
        batch = self.gain.batch_size
        for chunk in range(skip // batch, self.chunks_per_epoch):
            k = epoch * self.chunks_per_epoch + chunk
            made = len(self.gain.draw_mus)
            if k > made:
                raise RuntimeError(f"pass {epoch} needs draw {k}, but the sampler has made only {made} draws: "
                                   "load its state_dict before resuming")
            if k == made:
                self._pending.append(k)
            indices = self.gain.draw(k)
            for index in indices[skip % batch if chunk == skip // batch else 0:]:
                self._yielded += 1
                yield index

    def batch_accuracy(self, batch: Any) -> float:
        extra = getattr(batch, "non_tensor_batch", None) or {}
        if self.accuracy_key in extra:
            return float(np.nanmean(np.asarray(extra[self.accuracy_key], dtype=np.float64)))
        tensors = getattr(batch, "batch", None)
        if tensors is not None and "token_level_scores" in tensors.keys():
            return float(tensors["token_level_scores"].double().sum(dim=-1).mean())
        raise KeyError(f"the batch has neither non_tensor_batch[{self.accuracy_key!r}] nor "
                       "batch['token_level_scores']; set data.sampler.accuracy_key")

    def update(self, batch: Any) -> None:
        """Move mu after a training step (verl calls this with the step's DataProto)."""
        if not self._pending:
            raise RuntimeError("update() called, but no batch was drawn since the last update")
        acc = self.batch_accuracy(batch)
        rows = [i for k in self._pending for i in self.gain.draw(k)]
        self._pending = []
        if math.isnan(acc):
            return
        ang = float(self.gain.scores[torch.as_tensor(rows)].mean())
        mu = self.gain.update(acc, ang)
        self.metrics = {"gain_rl/mu": mu, "gain_rl/acc": acc, "gain_rl/ang": ang}

    def state_dict(self) -> dict:
        return {"format": _STATE_FORMAT, "sampler": self.gain.state_dict(), "epoch": self._epoch,
                "yielded": self._yielded, "pending": list(self._pending)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a GainRLVerlSampler state (format {state.get('format')!r})")
        self.gain.load_state_dict(state["sampler"])
        self._pending = [int(k) for k in state["pending"]]
        epoch, yielded = int(state["epoch"]), int(state["yielded"])
        self._resume = (epoch + 1, 0) if yielded >= len(self) else (epoch, yielded)
        self._next_epoch = self._resume[0]
        self._epoch, self._yielded = epoch, yielded
