"""GAIN-RL prompt selection inside TRL's GRPOTrainer and RLOOTrainer.

    from rlsignals.integrations.trl import attach_gain_rl

    trainer = GRPOTrainer(model=..., reward_funcs=[...], args=config, train_dataset=dataset)
    sampler = attach_gain_rl(trainer, scores)   # one angle score per row of train_dataset
    trainer.train()                             # or trainer.train(resume_from_checkpoint=True)

What ``attach_gain_rl`` changes, on that trainer instance only:

- ``_get_train_sampler`` returns a :class:`GainRLRepeatSampler`: TRL's
  RepeatSampler layout with the unique prompts of each chunk drawn by
  :class:`~rlsignals.signals.samplers.GainRLSampler`.
- ``train_dataset`` gains a column ``rlsignals_row`` (the row's index), which
  reward functions also receive as a keyword argument (TRL passes every column).
- ``_calculate_rewards`` is wrapped: in training, after TRL has computed and
  gathered the rewards of a generation batch over all ranks, the batch's row
  indices are gathered the same way and queued. Wrapping this one method
  (rather than each reward function) sees every kind of reward function
  (plain, async, reward models), the None -> NaN handling and the reward
  weights exactly as TRL applies them, and needs no second reward gather.
- a :class:`GainRLCallback` applies one ``sampler.update`` per generation
  batch at the end of the optimizer step that generated it, adds
  ``gain_rl/mu``, ``gain_rl/acc`` and ``gain_rl/ang`` to the trainer's logs
  (averaged over the logging window, like TRL's own metrics), writes the
  sampler state to ``gain_rl_sampler.json`` in every checkpoint folder and
  reads it back when training resumes from a checkpoint.
- ``train`` is wrapped only to remember which checkpoint it resumes from.

Accuracy (the ``acc`` of the update rule). ``accuracy="sum"`` (default): the
weighted sum of all reward functions, i.e. the reward GRPO trains on, averaged
over every completion of the generation batch. The released GAIN-RL update
reads ``acc / 2 - beta`` (``acc_scale=0.5``), i.e. it expects a reward in
[0, 2]: an accuracy reward plus a format reward, each 0 or 1. Pass
``accuracy=<index or name of one reward function>`` to use that function alone;
with a single 0/1 reward also pass ``acc_scale=1.0``, or the accuracy term of
the update never turns positive. ``ang`` is the mean score of the batch's
unique prompts.

Guarantees.

- Layout: exactly RepeatSampler's. Chunk c of epoch e holds ``batch_size =
  generation_batch_size // num_generations`` distinct rows = draw
  ``e * chunks_per_epoch + c`` of the GainRLSampler; the chunk is repeated
  ``num_iterations * steps_per_generation`` times and every index in it
  ``num_generations`` times; ``len()`` is RepeatSampler's, so the trainer's
  step and epoch arithmetic is unchanged.
- Determinism: a draw is a pure function of (seed, draw index, mu used) and
  every rank applies the same updates (from the same gathered rewards, in the
  same order), so every rank yields the same order. The seed defaults to
  ``args.seed``. Each generation batch is checked against the draw it should
  be (a RuntimeError says so when the trainer fed prompts the sampler did not
  draw).
- Resume: the checkpoint's JSON records the mu of every draw made, so the
  trainer's skipping of already-trained batches replays the same chunks, and
  when checkpoints fall on generation boundaries (always, with TRL's default
  ``steps_per_generation == gradient_accumulation_steps`` and
  ``num_iterations == 1``) the run continues exactly as if never interrupted.
  A resume inside a chunk is handled but not exact, because of TRL itself: it
  regenerates completions for the current chunk (its generation buffer and
  step counter are not checkpointed), and that chunk does not update mu a
  second time. A fresh ``train()`` (global step 0) resets the sampler to its
  state at ``attach_gain_rl``.
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
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterator, Sequence

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from rlsignals.signals.samplers import GainRLSampler

ROW_COLUMN = "rlsignals_row"
STATE_FILE = "gain_rl_sampler.json"
_STATE_FORMAT = "rlsignals.gain_rl.trl/1"


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

    def draw_index(self, epoch: int, chunk: int) -> int:
        return epoch * self.chunks_per_epoch + chunk

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch = epoch + 1  # a pass without set_epoch takes the next epoch
        for chunk in range(self.chunks_per_epoch):
            k = self.draw_index(epoch, chunk)
            made = len(self.sampler.draw_mus)
            if k > made:
                raise RuntimeError(f"epoch {epoch} needs draw {k}, but the sampler has made only {made} draws: "
                                   f"restore its state (a checkpoint's {STATE_FILE}) before resuming")
            indices = self.sampler.draw(k)
            for _ in range(self.repeat_count):
                for index in indices:
                    for _ in range(self.mini_repeat_count):
                        yield index


def _ordered_unique(values: Sequence[int]) -> list[int]:
    return list(dict.fromkeys(values))


def _write_json_atomic(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class GainRLCallback(TrainerCallback):
    """Updates, logs, saves and restores a GainRLSampler inside a TRL trainer.

    Made by :func:`attach_gain_rl`; it relies on the wrapped
    ``_calculate_rewards`` to queue each generation batch's gathered row
    indices and rewards (``pending``).
    """

    def __init__(self, trainer: Any, sampler: GainRLSampler, accuracy: int | str = "sum"):
        self.trainer = trainer
        self.sampler = sampler
        self.accuracy = accuracy
        self.pending: list[tuple[list[int], torch.Tensor]] = []
        self.next_chunk = 0          # draw index of the next chunk whose rewards update mu
        self.resume_from: str | None = None
        self.initial_state = sampler.state_dict()

    # -- rewards -> update -------------------------------------------------
    def batch_accuracy(self, rewards: torch.Tensor) -> float:
        """Mean over completions of the chosen accuracy (NaN rows excluded)."""
        rewards = rewards.detach().float().cpu()
        if self.accuracy == "sum":
            weights = torch.as_tensor(self.trainer.reward_weights, dtype=torch.float32).cpu()
            values = (rewards * weights).nansum(dim=1)
            values[torch.isnan(rewards).all(dim=1)] = torch.nan
        else:
            values = rewards[:, self.accuracy_column()]
        return float(torch.nanmean(values))

    def accuracy_column(self) -> int:
        names = list(getattr(self.trainer, "reward_func_names", []))
        if isinstance(self.accuracy, str):
            if self.accuracy not in names:
                raise ValueError(f"accuracy={self.accuracy!r} names no reward function; they are {names} "
                                 "(or pass 'sum', or an index)")
            return names.index(self.accuracy)
        count = len(self.trainer.reward_weights)
        if not -count <= self.accuracy < count:
            raise ValueError(f"accuracy={self.accuracy} is out of range for {count} reward functions")
        return self.accuracy

    def apply_pending(self) -> None:
        for gathered, rewards in self.pending:
            rows = _ordered_unique(gathered)
            k = self.next_chunk
            if k < len(self.sampler.draw_mus) and rows == self.sampler.draw(k):
                acc = self.batch_accuracy(rewards)
                if math.isnan(acc):  # every completion unscorable: nothing to learn from
                    self.next_chunk += 1
                    continue
                ang = float(self.sampler.scores[torch.as_tensor(rows)].mean())
                mu = self.sampler.update(acc, ang)
                self.next_chunk += 1
                metrics = getattr(self.trainer, "_metrics", None)
                if metrics is not None:
                    for key, value in (("mu", mu), ("acc", acc), ("ang", ang)):
                        metrics["train"][f"gain_rl/{key}"].append(value)
            elif k > 0 and rows == self.sampler.draw(k - 1):
                continue  # completions regenerated for a chunk already counted (resume inside a chunk)
            else:
                raise RuntimeError(f"the trainer scored prompts {rows[:8]}{'...' if len(rows) > 8 else ''}, which "
                                   f"are not the sampler's draw {k}; was the train dataloader built before "
                                   "attach_gain_rl, or its sampler replaced?")
        self.pending.clear()

    # -- trainer events ----------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        self.apply_pending()

    def on_train_begin(self, args, state, control, **kwargs):
        self.pending.clear()
        if state.global_step == 0:  # a fresh start (or a retry of one): the sampler as it was attached
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
            raise ValueError(f"{path}: not a GAIN-RL sampler state (format {payload.get('format')!r})")
        self.sampler.load_state_dict(payload["sampler"])
        self.next_chunk = int(payload["next_chunk"])

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(folder):
            _write_json_atomic(os.path.join(folder, STATE_FILE), {
                "format": _STATE_FORMAT, "global_step": state.global_step, "next_chunk": self.next_chunk,
                "accuracy": self.accuracy, "sampler": self.sampler.state_dict()})


def _scores_from(trainer: Any, scores: Any) -> Any:
    if isinstance(scores, str):
        dataset = trainer.train_dataset
        columns = getattr(dataset, "column_names", None) or []
        if scores not in columns:
            raise ValueError(f"scores={scores!r} names no column of the train dataset (columns: {columns})")
        return dataset[scores]
    return scores


def _add_row_column(trainer: Any) -> None:
    dataset = trainer.train_dataset
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise TypeError("GAIN-RL picks rows by index: the train dataset must be map-style "
                        f"(got {type(dataset).__name__})")
    rows = list(range(len(dataset)))
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        trainer.train_dataset = _RowIndexed(dataset)
    elif ROW_COLUMN in columns:
        if list(dataset[ROW_COLUMN]) != rows:
            raise ValueError(f"the train dataset has a column {ROW_COLUMN!r} that is not its row index")
    else:
        trainer.train_dataset = dataset.add_column(ROW_COLUMN, rows)
    # keep the column when remove_unused_columns=True
    trainer._set_signature_columns_if_needed()
    if ROW_COLUMN not in trainer._signature_columns:
        trainer._signature_columns = list(trainer._signature_columns) + [ROW_COLUMN]


class _RowIndexed(torch.utils.data.Dataset):
    """A map-style dataset of dict rows, with each row's index added."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], ROW_COLUMN: index}


def attach_gain_rl(trainer: Any, scores: Sequence[float] | torch.Tensor | str | GainRLSampler, *,
                   accuracy: int | str = "sum", **sampler_kwargs: Any) -> GainRLSampler:
    """Make a GRPOTrainer or RLOOTrainer draw its prompts with GAIN-RL.

    Call before ``trainer.train()``. ``scores``: one angle score per row of
    ``trainer.train_dataset`` (a sequence or tensor, the name of a column of the
    dataset, or a ready GainRLSampler whose batch_size is
    ``generation_batch_size // num_generations``). ``accuracy``: ``"sum"`` (the
    weighted sum of all reward functions, default) or the index or name of the
    reward function that measures accuracy. Other keyword arguments go to
    :class:`~rlsignals.signals.samplers.GainRLSampler` (sigma, sigma_fraction, mu, n,
    beta, alpha, acc_scale, adj_min, adj_max, two_way, seed; the seed defaults
    to ``args.seed``). Returns the sampler; its ``history`` holds every update.
    See the module docstring for what is changed and what is guaranteed.
    """
    for name in ("_get_train_sampler", "_calculate_rewards", "num_generations", "reward_weights"):
        if not hasattr(trainer, name):
            raise TypeError(f"{type(trainer).__name__} has no {name}: attach_gain_rl works with TRL's GRPOTrainer "
                            "and RLOOTrainer")
    if getattr(trainer, "_rlsignals_gain_rl", None) is not None:
        raise RuntimeError("GAIN-RL is already attached to this trainer")
    args = trainer.args
    batch_size = args.generation_batch_size // trainer.num_generations
    if isinstance(scores, GainRLSampler):
        if sampler_kwargs:
            raise TypeError(f"sampler options {sorted(sampler_kwargs)} given with a ready GainRLSampler")
        sampler = scores
        if sampler.batch_size != batch_size:
            raise ValueError(f"the sampler draws {sampler.batch_size} prompts, but each generation batch holds "
                             f"{batch_size} (generation_batch_size {args.generation_batch_size} // num_generations "
                             f"{trainer.num_generations})")
    else:
        sampler_kwargs.setdefault("seed", args.seed)
        sampler = GainRLSampler(_scores_from(trainer, scores), batch_size, **sampler_kwargs)
    _add_row_column(trainer)
    if len(trainer.train_dataset) != sampler.num_rows:
        raise ValueError(f"the train dataset has {len(trainer.train_dataset)} rows but {sampler.num_rows} scores "
                         "were given (one per row is needed)")
    callback = GainRLCallback(trainer, sampler, accuracy)
    if accuracy != "sum":
        callback.accuracy_column()  # fail now on a bad name or index

    def _get_train_sampler(dataset=None):
        dataset = trainer.train_dataset if dataset is None else dataset
        return GainRLRepeatSampler(sampler, mini_repeat_count=trainer.num_generations,
                                   repeat_count=trainer.num_iterations * args.steps_per_generation,
                                   num_rows=len(dataset))

    calculate_rewards = trainer._calculate_rewards

    def _calculate_rewards(inputs, *rest, **kwargs):
        rewards = calculate_rewards(inputs, *rest, **kwargs)  # [all ranks' completions, reward functions]
        if trainer.model.training:
            try:
                local = [int(example[ROW_COLUMN]) for example in inputs]
            except KeyError:
                raise RuntimeError(f"the generation batch has no {ROW_COLUMN!r} column; did something replace "
                                   "train_dataset after attach_gain_rl?") from None
            device = trainer.accelerator.device
            gathered = trainer.accelerator.gather(torch.tensor(local, dtype=torch.long, device=device))
            callback.pending.append((gathered.tolist(), rewards.detach().cpu()))
        return rewards

    train = trainer.train

    def _train(resume_from_checkpoint=None, *rest, **kwargs):
        if resume_from_checkpoint is True:
            callback.resume_from = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            callback.resume_from = os.fspath(resume_from_checkpoint)
        else:
            callback.resume_from = None
        return train(resume_from_checkpoint, *rest, **kwargs)

    trainer._get_train_sampler = _get_train_sampler
    trainer._calculate_rewards = _calculate_rewards
    trainer.train = _train
    trainer.add_callback(callback)
    trainer._rlsignals_gain_rl = callback
    return sampler


class Rank1TrackerCallback(TrainerCallback):
    """Runs a :class:`~rlsignals.trainer.tracker.Rank1Tracker` inside any transformers
    Trainer (TRL's included): every ``tracker.every`` optimizer steps it records the
    rank-1 triplet of each tracked update, with the mean of the ``reward`` values the
    trainer logged since the previous tracked step as its accuracy (set
    ``logging_steps`` <= ``every``; NaN when none was logged); at ``tracker.jump_at``
    it jumps. The tracker's state is saved as ``rank1_tracker.json`` in each
    checkpoint folder and restored by ``on_train_begin`` when resuming."""

    STATE = "rank1_tracker.json"

    def __init__(self, tracker):
        self.tracker = tracker
        self._seen_logs = 0

    def _accuracy(self, state) -> float:
        rewards = [entry["reward"] for entry in state.log_history[self._seen_logs:] if "reward" in entry]
        self._seen_logs = len(state.log_history)
        return sum(rewards) / len(rewards) if rewards else math.nan

    def on_train_begin(self, args, state, control, **kwargs):
        checkpoint = get_last_checkpoint(args.output_dir) if state.global_step else None
        if checkpoint and os.path.exists(os.path.join(checkpoint, self.STATE)):
            with open(os.path.join(checkpoint, self.STATE)) as f:
                self.tracker.load_state_dict(json.load(f))
        self._seen_logs = len(state.log_history)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.tracker.every == 0:
            self.tracker.track(step, self._accuracy(state))
        if self.tracker.jump_at is not None and step == self.tracker.jump_at:
            self.tracker.jump(self.tracker.jump_target, self.tracker.jump_update)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{self.STATE}.tmp")
            with open(tmp, "w") as f:
                json.dump(self.tracker.state_dict(), f)
            os.replace(tmp, os.path.join(folder, self.STATE))
