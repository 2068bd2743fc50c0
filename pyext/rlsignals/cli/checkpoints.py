"""The checkpoint commands: rank1, rank1-model, extrapolate, diff-report.

Every folder and header a command reads is checked before its first SVD, and its output
follows ``rlsignals.io.outputs``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from rlsignals.io import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from rlsignals.io.errors import UsageError
from rlsignals.ops import BACKEND_CHOICES
from rlsignals.settings import device, finite_number, fraction, option, positive_number, regex, whole_number

_BACKEND = "kernel backend of the SVD passes"


@dataclasses.dataclass(kw_only=True)
class Rank1Settings:
    base: str = option(help="the checkpoint RL started from (HF folder)")
    ckpt: list[str] = option(help="checkpoints in training order")
    out: str = option(help="trajectory store folder (reruns skip finished checkpoints)")
    steps: list[int] | None = option(None, "training step of each checkpoint (default: from trainer_state.json or "
                                           "the folder name)", parse=whole_number(0))
    include: str = option(DEFAULT_INCLUDE, "regex of tensor names to track", parse=regex)
    exclude: str = option(DEFAULT_EXCLUDE, "regex of tensor names to leave out", parse=regex)
    device: str = option("cpu", "device of the SVDs", parse=device)
    tol: float = option(1e-4, "relative error of sigma_1 to reach", parse=positive_number)
    max_iters: int | None = option(None, "passes per SVD at most (default 64)", parse=whole_number(1))
    backend: str = option("auto", _BACKEND, choices=BACKEND_CHOICES)
    overwrite: bool = option(False, "start over in a store written by an earlier `rlsignals rank1` (default: "
                                    "resume it)")

    def validate(self) -> None:
        if self.steps is not None and len(self.steps) != len(self.ckpt):
            raise UsageError(f"--steps: got {len(self.steps)} steps for {len(self.ckpt)} checkpoints (--ckpt); give "
                             "one step per checkpoint")
        if len({str(Path(c).resolve()) for c in self.ckpt}) != len(self.ckpt):
            raise UsageError("--ckpt: a checkpoint is listed twice")


def rank1(s: Rank1Settings) -> int:
    from rlsignals.io.checkpoints import Checkpoint
    from rlsignals.io.models import check_device
    from rlsignals.io.outputs import incremental_output
    from rlsignals.rank1.track import track_rank1

    check_device(s.device)
    for path in (s.base, *s.ckpt):  # every folder and header readable before the first SVD
        Checkpoint(path)
    with incremental_output(s.out, "rank1", s.overwrite, resume=True):
        traj = track_rank1(s.base, s.ckpt, s.out, steps=s.steps, include=s.include, exclude=s.exclude,
                           device=s.device, tol=s.tol, max_iters=s.max_iters, backend=s.backend)
    if int(os.environ.get("RANK", "0")) == 0:
        print("\n".join(traj.summary_lines()))
    return 0


def _trajectory_and_base(traj_path: str, base: str):
    """The trajectory store (checked whole) and the base checkpoint (checked against its shapes)."""
    from rlsignals.io.checkpoints import Checkpoint, check_shapes
    from rlsignals.rank1.extrapolate import open_trajectory
    from rlsignals.rank1.trajectory import INDEX

    traj = open_trajectory(traj_path)
    check_shapes(Checkpoint(base), traj.shapes, f"the trajectory {Path(traj_path) / INDEX}")
    return traj


@dataclasses.dataclass(kw_only=True)
class TrajectoryInputs:
    """What rank1-model and extrapolate read: the base checkpoint and a trajectory store."""

    base: str = option(help="the checkpoint RL started from (HF folder)")
    traj: str = option(help="trajectory store of `rlsignals rank1`")


@dataclasses.dataclass(kw_only=True)
class Rank1ModelSettings(TrajectoryInputs):
    out: str = option(help="folder for the rank-1 model")
    checkpoint: int = option(-1, "which trajectory entry (default: the last)")
    alpha: float = option(1.0, "multiplier of the rank-1 term", parse=finite_number)
    scale: str = option("frob", "frob: ||dW||_F (the paper's), sigma: sigma_1", choices=("frob", "sigma"))
    overwrite: bool = option(False, "replace an earlier output of rank1-model")


def rank1_model(s: Rank1ModelSettings) -> int:
    from rlsignals.io.outputs import folder_output
    from rlsignals.rank1.track import rank1_model as write_rank1_model

    folder_output(s.out, "rank1-model", s.overwrite)
    traj = _trajectory_and_base(s.traj, s.base)
    count = len(traj.records)
    if not -count <= s.checkpoint < count:
        raise UsageError(f"--checkpoint {s.checkpoint}: the trajectory {s.traj} holds {count} checkpoints; "
                         f"expected an entry from {-count} to {count - 1}")
    out = write_rank1_model(s.base, traj, s.out, checkpoint=s.checkpoint, alpha=s.alpha, scale=s.scale)
    print(f"rank-1 model -> {out}")
    return 0


@dataclasses.dataclass(kw_only=True)
class ExtrapolateSettings(TrajectoryInputs):
    out: str = option(help="folder for the extrapolated checkpoint")
    method: str = option("alpharl", "extrapolation method", choices=("alpharl", "linear_step", "two_point"))
    accuracy: str | None = option(None, ".jsonl/.csv with the accuracy per step (alpharl)")
    step_field: str = option("step", "the accuracy file's step column")
    acc_field: str = option("accuracy", "the accuracy file's accuracy column")
    fit_steps: list[int] | None = option(None, "steps to fit (default: all)", parse=whole_number(0))
    target_accuracy: float | None = option(None, "alpharl: the accuracy to extrapolate to", parse=finite_number)
    target_step: int | None = option(None, "linear_step / two_point: the step to extrapolate to",
                                     parse=whole_number(1))
    factor: float | None = option(None, "two_point: W0 + factor * (WT - W0)", parse=finite_number)
    update: str = option("released", "alpharl: add x* v^T (released) or replace the rank-1 part",
                         choices=("released", "replace"))
    undetermined: str = option("keep", "alpharl / linear_step: modules whose u_1 is undetermined at a fitted "
                                       "checkpoint (top not separated) stay at the latest fitted weights (keep), or "
                                       "are extrapolated all the same (use)", choices=("keep", "use"))
    overwrite: bool = option(False, "replace an earlier output of extrapolate")

    def validate(self) -> None:
        needs = {"alpharl": ("accuracy", "target_accuracy"), "linear_step": ("target_step",)}
        for key in needs.get(self.method, ()):
            if getattr(self, key) is None:
                raise UsageError(f"--method {self.method} needs --{key.replace('_', '-')}")
        if self.method == "two_point" and self.target_step is None and self.factor is None:
            raise UsageError("--method two_point needs --target-step or --factor")


def extrapolate(s: ExtrapolateSettings) -> int:
    from rlsignals.io.outputs import folder_output
    from rlsignals.rank1.extrapolate import extrapolate as write_extrapolation
    from rlsignals.rank1.extrapolate import read_accuracy
    from rlsignals.rank1.extrapolate import summary_lines as extrapolation_summary

    folder_output(s.out, "extrapolate", s.overwrite)
    traj = _trajectory_and_base(s.traj, s.base)
    accuracy = read_accuracy(s.accuracy, s.step_field, s.acc_field) if s.accuracy else None
    out = write_extrapolation(s.base, traj, s.out, method=s.method, accuracy=accuracy,
                              accuracy_path=s.accuracy or "<none>", fit_steps=s.fit_steps,
                              target_accuracy=s.target_accuracy, target_step=s.target_step, factor=s.factor,
                              update=s.update, undetermined=s.undetermined)
    print("\n".join(extrapolation_summary(out)))
    return 0


@dataclasses.dataclass(kw_only=True)
class DiffReportSettings:
    before: str = option(help="the checkpoint before the update (HF folder)")
    after: str = option(help="the checkpoint after it")
    out: str = option(help="report folder (report.json, PNGs, index.html)")
    k: int = option(64, "rank of the principal subspaces", parse=whole_number(1))
    alpha: float = option(0.5, "fraction of weights counted as principal", parse=fraction)
    include: str = option(DEFAULT_INCLUDE, "regex of tensor names to compare", parse=regex)
    exclude: str = option(DEFAULT_EXCLUDE, "regex of tensor names to leave out", parse=regex)
    device: str = option("cpu", "device of the SVDs", parse=device)
    max_iters: int | None = option(None, "passes per SVD at most (default 64)", parse=whole_number(1))
    backend: str = option("auto", _BACKEND, choices=BACKEND_CHOICES)
    overwrite: bool = option(False, "replace an earlier output of diff-report")


def diff_report(s: DiffReportSettings) -> int:
    from rlsignals.geometry.report import diff_report as write_report
    from rlsignals.io.models import check_device
    from rlsignals.io.outputs import folder_output

    check_device(s.device)
    folder_output(s.out, "diff-report", s.overwrite)
    report = write_report(s.before, s.after, s.out, k=s.k, alpha=s.alpha, include=s.include, exclude=s.exclude,
                          device=s.device, max_iters=s.max_iters, backend=s.backend)
    print(f"{len(report['modules'])} modules; bf16 sparsity {report['overall_unchanged_frac']:.4f}; "
          f"report -> {s.out}/index.html")
    return 0
