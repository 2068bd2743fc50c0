"""The in-loop rank-1 tracker as a transformers TrainerCallback (TRL's trainers included)."""

from __future__ import annotations

import json
import math
import os
import warnings

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rlsignals.io.atomic import write_json_atomic


class Rank1TrackerCallback(TrainerCallback):
    """Runs a :class:`~rlsignals.trainer.tracker.Rank1Tracker` inside any transformers
    Trainer (TRL's included): every ``tracker.every`` optimizer steps it records the
    rank-1 triplet of each tracked update, with the mean of the ``reward`` values the
    trainer logged since the previous tracked step as its accuracy (set
    ``logging_steps`` <= ``every``; NaN when none was logged); at ``tracker.jump_at``
    it jumps. The tracker's state (``tracker.state_dict()``) is saved as
    ``rank1_tracker.json`` in each checkpoint folder and restored by ``on_train_begin``
    from the checkpoint the trainer resumes from: transformers loads that checkpoint's
    trainer state before ``on_train_begin``, so its ``global_step`` names the folder
    ``output_dir/checkpoint-<global_step>`` (whatever newer checkpoints exist)."""

    STATE = "rank1_tracker.json"

    def __init__(self, tracker):
        self.tracker = tracker
        self._seen_logs = 0

    def _accuracy(self, state) -> float:
        rewards = [entry["reward"] for entry in state.log_history[self._seen_logs:] if "reward" in entry]
        self._seen_logs = len(state.log_history)
        return sum(rewards) / len(rewards) if rewards else math.nan

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step:  # resuming: the state is that of the checkpoint resumed from
            checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            saved = os.path.join(checkpoint, self.STATE)
            if os.path.exists(saved):
                with open(saved) as f:
                    self.tracker.load_state_dict(json.load(f))
            else:
                warnings.warn(f"resuming at step {state.global_step}: {saved} does not exist (a checkpoint saved "
                              "without the tracker, or outside output_dir); the rank-1 tracker starts afresh",
                              RuntimeWarning, stacklevel=2)
        self._seen_logs = len(state.log_history)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.tracker.every == 0:
            self.tracker.track(step, self._accuracy(state))
        self.tracker.scheduled_jump(step)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            write_json_atomic(os.path.join(folder, self.STATE), self.tracker.state_dict(), indent=None)
