"""GAIN-RL prompt selection in TRL's GRPOTrainer and RLOOTrainer, through TRL's public extension points.

    from rlsignals.integrations.trl import GainRLGRPOTrainer   # or GainRLRLOOTrainer

    trainer = GainRLGRPOTrainer(model=..., reward_funcs=[...], args=config, train_dataset=dataset,
                                gain_rl_scores=scores)      # one angle score per row of train_dataset
    trainer.train()                                         # or trainer.train(resume_from_checkpoint=True)

``GainRLMixin`` (put it before any GRPOTrainer/RLOOTrainer subclass:
``class MyTrainer(GainRLMixin, GRPOTrainer)``) takes three keyword arguments
beside the trainer's own: ``gain_rl_scores`` (a sequence or tensor of one score
per row, the name of a column of the train dataset, or a ready
:class:`~rlsignals.signals.samplers.GainRLSampler` whose batch_size is
``generation_batch_size // num_generations``), ``gain_rl_accuracy`` (below) and
``gain_rl_options`` (a dict for GainRLSampler: sigma, sigma_fraction, mu, n,
beta, alpha, acc_scale, adj_min, adj_max, two_way, seed; the seed defaults to
``args.seed``). What it uses, all public:

- the sampler hook: ``_get_train_sampler`` (transformers' Trainer hook for a
  custom sampler, overridden in the subclass) returns a
  :class:`~rlsignals.integrations.trl_sampler.GainRLRepeatSampler`: TRL's
  RepeatSampler layout with the unique prompts of each chunk drawn by GAIN-RL;
- the dataset: ``train_dataset`` gains a column ``rlsignals_row`` (the row's
  index), which TRL passes to reward functions with every other column
  (``remove_unused_columns`` must stay False, TRL's default);
- reward functions: each callable of ``reward_funcs`` whose value counts for the
  accuracy is wrapped (sync stays sync, async stays async, names and weights
  unchanged, the values returned untouched) to record, on each rank, the row
  and reward of every training completion;
- callbacks: a :class:`GainRLCallback` gathers the recorded rows and rewards over
  ranks (``accelerator.gather``) and applies one ``sampler.update`` per generation
  batch at the end of the optimizer step that generated it, writes the sampler
  state to ``gain_rl_sampler.json`` in every checkpoint folder and reads it back
  when training resumes from a checkpoint;
- ``log`` adds ``gain_rl/mu``, ``gain_rl/acc`` and ``gain_rl/ang`` to the
  training logs (averaged over the logging window, like TRL's own metrics);
- ``train`` remembers which checkpoint it resumes from.

Accuracy (the ``acc`` of the update rule). ``gain_rl_accuracy="sum"`` (default):
the weighted sum of all reward functions (``reward_weights``, None -> NaN as TRL
does), i.e. the reward GRPO trains on, averaged over every completion of the
generation batch; every reward function must then be a callable (a reward
model's scores are not seen by a wrapper: name a callable instead). The released
GAIN-RL update reads ``acc / 2 - beta`` (``acc_scale=0.5``), i.e. it expects a
reward in [0, 2]: an accuracy reward plus a format reward, each 0 or 1. Pass
``gain_rl_accuracy=<index or name of one reward function>`` to use that function
alone; with a single 0/1 reward also pass ``acc_scale=1.0`` in
``gain_rl_options``, or the accuracy term of the update never turns positive.
``ang`` is the mean score of the batch's unique prompts.

Guarantees.

- Layout: exactly RepeatSampler's. Chunk c of epoch e holds ``batch_size =
  generation_batch_size // num_generations`` distinct rows = draw
  ``e * chunks_per_epoch + c`` of the GainRLSampler; the chunk is repeated
  ``num_iterations * steps_per_generation`` times and every index in it
  ``num_generations`` times; ``len()`` is RepeatSampler's, so the trainer's
  step and epoch arithmetic is unchanged.
- Determinism: a draw is a pure function of (seed, draw index, mu used) and
  every rank applies the same updates (from the same gathered rewards, in the
  same order), so every rank yields the same order. Each generation batch is
  checked against the draw it should be (a RuntimeError says so when the
  trainer fed prompts the sampler did not draw).
- Resume: the checkpoint's JSON records the mu of every draw made, so the
  trainer's skipping of already-trained batches replays the same chunks, and
  when checkpoints fall on generation boundaries (always, with TRL's default
  ``steps_per_generation == gradient_accumulation_steps`` and
  ``num_iterations == 1``) the run continues exactly as if never interrupted.
  A resume inside a chunk is handled but not exact, because of TRL itself: it
  regenerates completions for the current chunk (its generation buffer and
  step counter are not checkpointed), and that chunk does not update mu a
  second time. A fresh ``train()`` (global step 0) resets the sampler to its
  state when the trainer was made.
- Lag: a chunk is drawn when the DataLoader first takes one of its indices,
  which is earlier than the step that trains on it. The Trainer fetches the
  ``gradient_accumulation_steps`` batches of an optimizer step before running
  them, and accelerate's DataLoaderShard reads one batch ahead. With TRL's
  defaults (``steps_per_generation == gradient_accumulation_steps``,
  ``num_iterations == 1``, ``dataloader_num_workers == 0``) chunk k+1 is drawn
  before chunk k's rewards exist: draw k uses mu after the updates of chunks
  0..k-2 (one generation of lag; draws 0 and 1 both use the initial mu).
  DataLoader workers add ``prefetch_factor * num_workers`` batches of lag.
  Chunk k's update itself always lands, at the end of its optimizer step.

Tested on the CPU with trl 1.0.0, 1.10.0 and 1.16.0 (transformers 5.19,
accelerate 1.15), one process and two (gloo; 1.0.0 and 1.16.0).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOTrainer, RLOOTrainer

from rlsignals.integrations.trl_sampler import ROW_COLUMN, GainRLRepeatSampler, with_row_column
from rlsignals.integrations.trl_tracker import Rank1TrackerCallback
from rlsignals.io.atomic import write_json_atomic
from rlsignals.signals.samplers import GainRLSampler

__all__ = ["GainRLCallback", "GainRLGRPOTrainer", "GainRLMixin", "GainRLRLOOTrainer", "GainRLRepeatSampler",
           "Rank1TrackerCallback", "ROW_COLUMN", "STATE_FILE", "accuracy_columns", "batch_accuracy"]

STATE_FILE = "gain_rl_sampler.json"
_STATE_FORMAT = "rlsignals.gain_rl.trl/1"


def batch_accuracy(rewards: torch.Tensor, weights: Sequence[float] | torch.Tensor) -> float:
    """Mean over completions of sum_f weights[f] * rewards[:, f].

    rewards: [completions, functions], NaN where a function returned None (a
    completion with every value NaN is left out, as TRL leaves it out of the
    reward it trains on); weights: [functions]. NaN when no completion counts.
    """
    rewards = rewards.detach().double().cpu()
    weights = torch.as_tensor(weights, dtype=torch.float64).cpu()
    if rewards.dim() != 2 or rewards.shape[1] != weights.numel():
        raise ValueError(f"rewards must be [completions, {weights.numel()}] (one column per weight), "
                         f"got {list(rewards.shape)}")
    values = (rewards * weights).nansum(dim=1)
    values[torch.isnan(rewards).all(dim=1)] = torch.nan
    return float(torch.nanmean(values))


def accuracy_columns(accuracy: int | str, names: Sequence[str]) -> list[int]:
    """The reward functions whose values make the accuracy: all for ``"sum"``, else the one named or indexed."""
    if accuracy == "sum":
        return list(range(len(names)))
    if isinstance(accuracy, str):
        if accuracy not in names:
            raise ValueError(f"gain_rl_accuracy={accuracy!r} names no reward function; they are {list(names)} "
                             "(or pass 'sum', or an index)")
        return [list(names).index(accuracy)]
    if isinstance(accuracy, bool) or not isinstance(accuracy, int) or not -len(names) <= accuracy < len(names):
        raise ValueError(f"gain_rl_accuracy={accuracy!r} is out of range for {len(names)} reward functions "
                         "(expected 'sum', a name or an index)")
    return [accuracy % len(names)]


def _is_async(func: Callable) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


class GainRLCallback(TrainerCallback):
    """Updates, saves and restores a GainRLSampler inside a TRL trainer (made by :class:`GainRLMixin`).

    ``observe`` wraps the reward functions that make the accuracy; their values
    on training completions are kept per rank until ``on_step_end`` gathers them
    over ranks and applies one update per generation batch.
    """

    def __init__(self, trainer: Any, sampler: GainRLSampler, accuracy: int | str = "sum"):
        self.trainer = trainer
        self.sampler = sampler
        self.accuracy = accuracy
        self.columns = accuracy_columns(accuracy, list(trainer.reward_func_names))
        weights = torch.as_tensor(trainer.reward_weights, dtype=torch.float64).cpu()
        self.weights = weights[self.columns] if accuracy == "sum" else torch.ones(1, dtype=torch.float64)
        self.recorded: dict[int, list[tuple[list[int], list[float]]]] = {c: [] for c in self.columns}
        self.next_chunk = 0          # draw index of the next chunk whose rewards update mu
        self.resume_from: str | None = None
        self.initial_state = sampler.state_dict()
        self.window: dict[str, list[float]] = defaultdict(list)

    # -- reward functions -> records ----------------------------------------
    def observe(self, reward_funcs: Sequence[Any]) -> list[Any]:
        """``reward_funcs`` with each function of the accuracy wrapped to record its training values."""
        names = list(self.trainer.reward_func_names)
        observed = list(reward_funcs)
        for c in self.columns:
            func = observed[c]
            if isinstance(func, torch.nn.Module) or not callable(func):
                callables = [n for n, f in zip(names, observed) if not isinstance(f, torch.nn.Module)]
                raise ValueError(f"reward function {names[c]!r} is a reward model: GAIN-RL sees the values of "
                                 "callable reward functions only; pass gain_rl_accuracy=<name or index of a callable "
                                 f"reward> (the callables are {callables})")
            observed[c] = self._wrap(func, c)
        return observed

    def _wrap(self, func: Callable, column: int) -> Callable:
        if _is_async(func):
            async def observed(*args, **kwargs):
                values = await func(*args, **kwargs)
                self.record(column, kwargs, values)
                return values
        else:
            def observed(*args, **kwargs):
                values = func(*args, **kwargs)
                self.record(column, kwargs, values)
                return values
        return functools.wraps(func)(observed)

    def record(self, column: int, kwargs: dict, values: Sequence[float | None]) -> None:
        """Keep the rows and values of one reward function on one training generation batch."""
        if not self.trainer.model.training or ROW_COLUMN not in kwargs:
            return  # evaluation: its prompts are not the sampler's
        rows = [int(row) for row in kwargs[ROW_COLUMN]]
        self.recorded[column].append((rows, [math.nan if v is None else float(v) for v in values]))

    def gathered(self) -> list[tuple[list[int], torch.Tensor]]:
        """The recorded generation batches, gathered over ranks: (rows, rewards [completions, columns])."""
        counts = {c: len(batches) for c, batches in self.recorded.items()}
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"the accuracy's reward functions were called a different number of times {counts}")
        batches = []
        for b in range(next(iter(counts.values()))):
            rows = self.recorded[self.columns[0]][b][0]
            local = torch.tensor([rows] + [self.recorded[c][b][1] for c in self.columns], dtype=torch.float64).T
            every = self.trainer.accelerator.gather(local.to(self.trainer.accelerator.device)).cpu()
            batches.append(([int(r) for r in every[:, 0].tolist()], every[:, 1:]))
        for c in self.columns:
            self.recorded[c].clear()
        return batches

    # -- records -> update -------------------------------------------------
    def apply(self, batches: list[tuple[list[int], torch.Tensor]]) -> None:
        """One update per generation batch, in order; each batch must be the next draw."""
        for gathered_rows, rewards in batches:
            rows = list(dict.fromkeys(gathered_rows))
            k = self.next_chunk
            if k < len(self.sampler.draw_mus) and rows == self.sampler.draw(k):
                self.next_chunk += 1
                acc = batch_accuracy(rewards, self.weights)
                if math.isnan(acc):  # every completion unscorable: nothing to learn from
                    continue
                ang = float(self.sampler.scores[torch.as_tensor(rows)].mean())
                mu = self.sampler.update(acc, ang)
                for key, value in (("mu", mu), ("acc", acc), ("ang", ang)):
                    self.window[f"gain_rl/{key}"].append(value)
            elif k > 0 and rows == self.sampler.draw(k - 1):
                continue  # completions regenerated for a chunk already counted (resume inside a chunk)
            else:
                raise RuntimeError(f"the trainer scored prompts {rows[:8]}{'...' if len(rows) > 8 else ''}, which "
                                   f"are not the sampler's draw {k}; was the train sampler or dataset replaced?")

    def pop_metrics(self) -> dict[str, float]:
        """The means of gain_rl/mu, acc, ang since the last call."""
        metrics = {key: sum(values) / len(values) for key, values in self.window.items() if values}
        self.window.clear()
        return metrics

    # -- trainer events ----------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        self.apply(self.gathered())

    def on_train_begin(self, args, state, control, **kwargs):
        for batches in self.recorded.values():
            batches.clear()
        self.window.clear()
        if state.global_step == 0:  # a fresh start (or a retry of one): the sampler as it was made
            self.sampler.load_state_dict(self.initial_state)
            self.next_chunk = 0
            return
        folder = self.resume_from or os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"resuming at step {state.global_step} from {folder}, which holds no {STATE_FILE}: "
                                    "without it the GAIN-RL draws already trained on cannot be replayed")
        with open(path) as f:
            payload = json.load(f)
        if payload.get("format") != _STATE_FORMAT:
            raise ValueError(f"{path}: not a GAIN-RL sampler state (format {payload.get('format')!r}, "
                             f"expected {_STATE_FORMAT!r})")
        self.sampler.load_state_dict(payload["sampler"])
        self.next_chunk = int(payload["next_chunk"])

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            write_json_atomic(os.path.join(folder, STATE_FILE), {
                "format": _STATE_FORMAT, "global_step": state.global_step, "next_chunk": self.next_chunk,
                "accuracy": self.accuracy, "sampler": self.sampler.state_dict()}, indent=None)


def _make_sampler(scores: Any, dataset: Any, batch_size: int, options: dict, seed: int) -> GainRLSampler:
    if isinstance(scores, GainRLSampler):
        if options:
            raise TypeError(f"gain_rl_options {sorted(options)} given with a ready GainRLSampler")
        if scores.batch_size != batch_size:
            raise ValueError(f"gain_rl_scores: the sampler draws {scores.batch_size} prompts, but each generation "
                             f"batch holds {batch_size} (generation_batch_size // num_generations)")
        return scores
    if isinstance(scores, str):
        columns = getattr(dataset, "column_names", None) or []
        if scores not in columns:
            raise ValueError(f"gain_rl_scores={scores!r} names no column of the train dataset (columns: {columns})")
        scores = dataset[scores]
    return GainRLSampler(scores, batch_size, **{"seed": seed, **options})


class GainRLMixin:
    """GAIN-RL prompt order for a GRPOTrainer or RLOOTrainer subclass (see the module docstring)."""

    def __init__(self, *args: Any, gain_rl_scores: Sequence[float] | torch.Tensor | str | GainRLSampler,
                 gain_rl_accuracy: int | str = "sum", gain_rl_options: dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            raise ValueError("GAIN-RL needs the column rlsignals_row in every batch: set remove_unused_columns=False "
                             "in the trainer's config (TRL's default), got True")
        batch_size = self.args.generation_batch_size // self.num_generations
        sampler = _make_sampler(gain_rl_scores, self.train_dataset, batch_size, dict(gain_rl_options or {}),
                                self.args.seed)
        self.train_dataset = with_row_column(self.train_dataset)
        if len(self.train_dataset) != sampler.num_rows:
            raise ValueError(f"gain_rl_scores: {sampler.num_rows} scores for a train dataset of "
                             f"{len(self.train_dataset)} rows (one per row is needed)")
        self.gain_rl_sampler = sampler
        self.gain_rl_callback = GainRLCallback(self, sampler, gain_rl_accuracy)
        self.reward_funcs = self.gain_rl_callback.observe(self.reward_funcs)
        self.add_callback(self.gain_rl_callback)

    def _get_train_sampler(self, dataset: Any = None) -> GainRLRepeatSampler:
        dataset = self.train_dataset if dataset is None else dataset
        return GainRLRepeatSampler(self.gain_rl_sampler, mini_repeat_count=self.num_generations,
                                   repeat_count=self.num_iterations * self.args.steps_per_generation,
                                   num_rows=len(dataset))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:  # TRL's rule for training (not evaluation) logs
            logs.update(self.gain_rl_callback.pop_metrics())
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True:
            out = self.args.output_dir
            self.gain_rl_callback.resume_from = get_last_checkpoint(out) if os.path.isdir(out) else None
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self.gain_rl_callback.resume_from = os.fspath(resume_from_checkpoint)
        else:
            self.gain_rl_callback.resume_from = None
        return super().train(resume_from_checkpoint, *args, **kwargs)


class GainRLGRPOTrainer(GainRLMixin, GRPOTrainer):
    """TRL's GRPOTrainer with GAIN-RL prompt order (``gain_rl_scores=`` etc.; see the module docstring)."""


class GainRLRLOOTrainer(GainRLMixin, RLOOTrainer):
    """TRL's RLOOTrainer with GAIN-RL prompt order (``gain_rl_scores=`` etc.; see the module docstring)."""
