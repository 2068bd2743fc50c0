"""In-loop AlphaRL tracker: the rank-1 trajectory of training as it runs, and
on request a jump to the extrapolated weights.

Every ``every`` steps, for each tracked parameter (default: the 2-D weights of
the decoder layers), the top-k singular triplets of its update W_t - W_0 are
taken on the parameter's device by the code path of ``rlsignals rank1``
(``rlsignals.rank1.track.top_triplets``: batches of same-shaped matrices,
warm-started from the previous tracked step) and appended to a trajectory store
(``rlsignals.rank1.trajectory``: safetensors, k (m + n) floats per module and
step, with sigma, ||dW||_F, err_bound, err_estimate, certified and iters). The
accuracy recorded with a step is the mean training reward since the previous
tracked step. The tracker's own state in a checkpoint is a few numbers (records
in the store, rewards since the last record, jumps): it does not grow with the
tracked steps.

Sharded weights: under FSDP2 (``fully_shard``) every tracked parameter is a
DTensor sharded on dim 0 over a 1-D mesh, and each rank holds a row slab. The
update's product Z = dW^T (dW X) is a sum over row slabs, so delta_svd runs on
the local slabs with the mesh's process group (one all-reduce of an [n, p]
block per pass): no rank gathers a weight. Only u (k m numbers per module) is
gathered. Rank 0 writes the store; the store folder must be visible to every
rank (one node, or a shared file system) for ``jump`` and resume.

``jump(target_accuracy)`` fits, per module, AlphaRL's 1-component PLS between
the aligned features sigma_t u_t and those accuracies (``rlsignals.rank1.alpharl``),
inverts it at the target and adds x* v_T^T to the current weights (the
released rule; ``update="replace"`` swaps the rank-1 part instead).
``jump(steps_ahead=k)`` instead fits each feature coordinate linearly in the step and
evaluates the line k steps past the latest tracked step (``linear_in_step``), swapping
the rank-1 part: W_T + (x* - x_T) v_T^T. The accuracy recorded with a tracked step is
the mean of ``record[accuracy_key]`` since the previous tracked step (the training
reward by default; ``"eval_accuracy"`` with an ``Evaluation`` hook run before the
tracker). As a hook, the tracker jumps once at ``jump_at`` and, given an
``Evaluation``, logs the held-out accuracy just before and just after the jump.

W_0 (the tracked parameters when the tracker is made: make it before training)
is kept on the parameters' device and saved once to ``base_file`` (one file per
rank when sharded: ``<stem>.rank<r>-of-<w>.safetensors``); a tracker made while
that file exists loads W_0 from it, so a resumed run tracks against the same
start. Resume: ``load_state_dict`` drops the store's records after the
checkpoint's and restarts from the saved warm-start basis, so a run resumed from
a checkpoint taken at a tracked step equals an uninterrupted one (from another
step, the next SVD starts cold and agrees to ``tol``). Works as a hook of
``RLTrainer`` (``hooks=[tracker]``) and, via ``Rank1TrackerCallback``, in any
transformers Trainer (TRL included).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rlsignals.io.atomic import atomic_path
from rlsignals.io.checkpoints import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, shape_batches
from rlsignals.io.distributed import barrier, rank_and_world
from rlsignals.io.errors import UserError
from rlsignals.rank1.alpharl import UPDATES, aligned_features, alpharl_update, linear_in_step
from rlsignals.rank1.track import check_settings, top_triplets
from rlsignals.rank1.trajectory import INDEX, Trajectory

STATE_FORMAT = 2


def _dtensor_types():
    """(DTensor, Shard) when torch.distributed is built, else (None, None)."""
    if not torch.distributed.is_available():
        return None, None
    from torch.distributed.tensor import DTensor, Shard

    return DTensor, Shard


def _local(p: torch.Tensor) -> torch.Tensor:
    """The rows this rank holds: a DTensor's local shard, else the tensor."""
    dtensor, _ = _dtensor_types()
    return p.to_local() if dtensor is not None and isinstance(p, dtensor) else p


class Rank1Tracker:
    """See the module docstring.

    model: the policy (plain, or with FSDP2 DTensor parameters sharded on dim 0).
    every: track every ``every`` steps (the RLTrainer hook and the TRL callback).
    base_file: where W_0 is saved (and loaded from on resume).
    store: the trajectory store's folder (default: ``rank1_trajectory`` beside base_file).
    k, tol, max_iters, backend, max_batch_bytes: as ``rlsignals.rank1.track.track_rank1``.
    jump_at, jump_target | jump_ahead, jump_update: jump once at step ``jump_at`` (hook and
        callback) to the AlphaRL prediction at accuracy ``jump_target``, or ``jump_ahead``
        steps ahead linearly in the step.
    accuracy_key: the record entry averaged into each tracked step's accuracy.
    evaluation: an ``Evaluation`` (trainer/evaluate.py) for the accuracy before and after the jump.
    """

    def __init__(self, model: torch.nn.Module, every: int, base_file: str | Path, *, store: str | Path | None = None,
                 include: str = DEFAULT_INCLUDE, exclude: str | None = DEFAULT_EXCLUDE, k: int = 1,
                 tol: float = 1e-4, max_iters: int | None = None, backend: str = "auto",
                 max_batch_bytes: int = 1 << 30, jump_at: int | None = None, jump_target: float | None = None,
                 jump_ahead: int | None = None, jump_update: str = "released", accuracy_key: str = "reward",
                 evaluation=None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if (jump_at is None) != (jump_target is None and jump_ahead is None) or \
                (jump_target is not None and jump_ahead is not None):
            raise ValueError(f"jump_at goes with one of jump_target (AlphaRL) and jump_ahead (linear in the step), "
                             f"got jump_at={jump_at!r}, jump_target={jump_target!r}, jump_ahead={jump_ahead!r}")
        if jump_update not in UPDATES:
            raise ValueError(f"jump_update must be one of {UPDATES}, got {jump_update!r}")
        keep, drop = re.compile(include), re.compile(exclude) if exclude else None
        self.params = {n: p for n, p in model.named_parameters()
                       if p.dim() == 2 and keep.search(n) and not (drop and drop.search(n))}
        if not self.params:
            raise ValueError(f"no 2-D parameter matches include={include!r} / exclude={exclude!r}")
        kinds = sorted({f"{_local(p).dtype} on {_local(p).device}" for p in self.params.values()})
        if len(kinds) > 1:
            raise ValueError(f"tracked parameters mix {kinds}; expected one dtype and device (narrow include=)")
        check_settings(k, tol, max_iters)
        self.group = self._process_group()
        self.rows = self._row_ranges()
        self.every, self.k, self.tol, self.max_iters, self.backend = every, k, tol, max_iters, backend
        self.jump_at, self.jump_update = jump_at, jump_update
        self.jump_target, self.jump_ahead = jump_target, jump_ahead
        self.accuracy_key, self.evaluation = accuracy_key, evaluation
        self.base_file = Path(base_file)
        self.base = self._load_or_save_base()
        shapes = {n: tuple(p.shape) for n, p in self.params.items()}
        self.batches = shape_batches(shapes, max_batch_bytes)
        root = Path(store) if store is not None else self.base_file.parent / "rank1_trajectory"
        self._writer = rank_and_world()[0] == 0
        self._store = Trajectory.open_or_create(root, str(self.base_file), shapes, k=k, tol=tol)
        self._tracked = 0                       # records of this run in the store
        self._basis: dict[str, torch.Tensor] = {}
        self._rewards: list[float] = []
        self.jumps: list[dict[str, Any]] = []

    # ---- sharding -------------------------------------------------------------------------------
    def _process_group(self):
        """The process group the tracked weights are row-sharded over, or None."""
        dtensor, shard = _dtensor_types()
        if dtensor is None or not any(isinstance(p, dtensor) for p in self.params.values()):
            return None
        groups = set()
        for n, p in self.params.items():
            if not isinstance(p, dtensor) or p.device_mesh.ndim != 1 or tuple(p.placements) != (shard(0),):
                how = f"placements {tuple(p.placements)} on a {p.device_mesh.ndim}-D mesh" \
                    if isinstance(p, dtensor) else "a plain tensor"
                raise ValueError(f"parameter {n!r} is {how}; the tracker needs every tracked parameter "
                                 f"sharded on dim 0 over one 1-D mesh (FSDP2 fully_shard), or none sharded")
            groups.add(p.device_mesh.get_group())
        if len(groups) != 1:
            raise ValueError(f"tracked parameters are sharded over {len(groups)} process groups; expected one mesh")
        return groups.pop()

    def _row_ranges(self) -> dict[str, tuple[int, int]]:
        """name -> (first, end) global rows of this rank's slab."""
        local = {n: _local(p).shape[0] for n, p in self.params.items()}
        if self.group is None:
            return {n: (0, rows) for n, rows in local.items()}
        import torch.distributed as dist

        everyone: list = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(everyone, local, group=self.group)
        me = dist.get_rank(self.group)
        return {n: (sum(r[n] for r in everyone[:me]), sum(r[n] for r in everyone[:me + 1])) for n in local}

    def _base_path(self) -> Path:
        if self.group is None:
            return self.base_file
        import torch.distributed as dist

        rank, world = dist.get_rank(self.group), dist.get_world_size(self.group)
        return self.base_file.with_name(f"{self.base_file.stem}.rank{rank}-of-{world}{self.base_file.suffix}")

    def _load_or_save_base(self) -> dict[str, torch.Tensor]:
        """This rank's rows of W_0, from the base file if it exists (else saved to it)."""
        path = self._base_path()
        if path.exists():
            loaded = load_file(str(path))
            for n, p in self.params.items():
                if n not in loaded:
                    raise UserError(f"{path}: lacks tracked parameter {n!r} (a base file of another model?)")
                if loaded[n].shape != _local(p).shape:
                    raise UserError(f"{path}: {n!r} has shape {tuple(loaded[n].shape)}, the model's "
                                    f"{'slab' if self.group is not None else 'weight'} is {tuple(_local(p).shape)}")
            return {n: loaded[n].to(_local(p).device, _local(p).dtype) for n, p in self.params.items()}
        base = {n: _local(p).detach().clone() for n, p in self.params.items()}
        with atomic_path(path) as tmp:
            save_file({n: t.cpu().contiguous() for n, t in base.items()}, str(tmp))
        return base

    # ---- tracking -------------------------------------------------------------------------------
    @property
    def trajectory(self) -> Trajectory:
        """The store as written so far (read from disk on ranks other than 0)."""
        if self._writer or not (self._store.root / INDEX).exists():
            return self._store
        return Trajectory.open(self._store.root)

    @property
    def steps(self) -> list[int | None]:
        return self.trajectory.steps[:self._tracked]

    def _load(self, batch: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        after = torch.stack([_local(self.params[n]).detach() for n in batch])
        return after, torch.stack([self.base[n] for n in batch])

    @torch.no_grad()
    def track(self, step: int, accuracy: float) -> dict[str, dict[str, torch.Tensor]]:
        """Append the top-k triplets of every tracked update at ``step`` to the store;
        returns them (module -> S, U, V, frob, err_bound, err_estimate, certified, iters)."""
        results = top_triplets(self.batches, self._load, self._basis, k=self.k, tol=self.tol,
                               max_iters=self.max_iters, backend=self.backend, process_group=self.group,
                               where=f"step {step}")
        if self._writer:
            self._store.truncate(self._tracked)  # records of a run that was not resumed from them
            self._store.add(f"step {step}", step, results, self._basis, accuracy=float(accuracy))
        self._tracked += 1
        return results

    @torch.no_grad()
    def jump(self, target_accuracy: float | None = None, update: str = "released",
             steps_ahead: int | None = None) -> dict[str, Any]:
        """Move the tracked weights to the AlphaRL prediction at ``target_accuracy``, or to the
        linear-in-step prediction ``steps_ahead`` steps past the latest tracked step."""
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if (target_accuracy is None) == (steps_ahead is None):
            raise ValueError("a jump needs target_accuracy (AlphaRL) or steps_ahead (linear in the step), not both")
        if self._tracked < 2:
            raise ValueError(f"a jump needs at least 2 tracked steps, have {self._tracked}")
        barrier()  # rank 0's latest record is on disk
        traj = self.trajectory
        accuracy, steps = traj.accuracy[:self._tracked], traj.steps[:self._tracked]
        report: dict[str, Any] = {"step": steps[-1], "r2": {}}
        if steps_ahead is None:
            report |= {"method": "alpharl", "target_accuracy": target_accuracy, "update": update}
        else:
            report |= {"method": "linear_step", "steps_ahead": steps_ahead, "target_step": steps[-1] + steps_ahead}
        for n, p in self.params.items():
            u, v = traj.vectors(n)
            sigma = traj.scalar("sigma", n)[:self._tracked]
            if steps_ahead is None:
                delta, fit, _ = alpharl_update(sigma, u[:self._tracked], v[:self._tracked], accuracy,
                                               target_accuracy, update)
                report["r2"][n] = fit.r2
            else:
                features, aligned_v, _ = aligned_features(sigma, u[:self._tracked], v[:self._tracked])
                x_star, report["r2"][n] = linear_in_step(features, steps, steps[-1] + steps_ahead)
                delta = torch.outer(torch.as_tensor(x_star - features[-1], dtype=torch.float32),
                                    aligned_v[-1].float())
            first, end = self.rows[n]
            local = _local(p)
            local.add_(delta[first:end].to(local.device, local.dtype))
        self.jumps.append(report)
        return report

    def scheduled_jump(self, step: int) -> dict[str, Any] | None:
        """The jump set for ``step`` (``jump_at``), done; None at any other step."""
        if self.jump_at is None or step != self.jump_at:
            return None
        return self.jump(self.jump_target, self.jump_update, self.jump_ahead)

    def __call__(self, trainer, record: dict) -> None:
        """RLTrainer hook: track every ``every`` steps; jump once at ``jump_at`` (with the held-out
        accuracy just before and after it when an ``evaluation`` is given)."""
        if self.accuracy_key in record:
            self._rewards.append(record[self.accuracy_key])
        if trainer.step % self.every == 0:
            accuracy = sum(self._rewards) / len(self._rewards) if self._rewards else math.nan
            results = self.track(trainer.step, accuracy)
            self._rewards = []
            record["rank1_sigma_mean"] = sum(float(r["S"][0]) for r in results.values()) / len(results)
            record["rank1_certified"] = sum(bool(r["certified"]) for r in results.values())
        if self.jump_at is not None and trainer.step == self.jump_at:
            evaluation = self.evaluation
            before = record.get(evaluation.key) if evaluation is not None else None
            if evaluation is not None and before is None:
                before = evaluation.evaluate(trainer, trainer.step)
            try:
                record["jump"] = self.scheduled_jump(trainer.step)
            except ValueError as exc:  # e.g. an accuracy that never moved: nothing to fit; the run goes on
                warnings.warn(f"step {trainer.step}: no jump ({exc}); training goes on", RuntimeWarning,
                              stacklevel=2)
                record["jump"] = {"step": trainer.step, "skipped": str(exc)}
                return
            if evaluation is not None:
                record["jump"] |= {"accuracy_before": before,
                                   "accuracy_after": evaluation.evaluate(trainer, trainer.step)}

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A few numbers (the store holds the trajectory): constant in the tracked steps."""
        return {"format": STATE_FORMAT, "tracked": self._tracked, "rewards": list(self._rewards),
                "jumps": list(self.jumps)}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the store keeps the checkpoint's records, and the next step starts
        from their warm-start basis when the store kept it (see the module docstring)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError("the checkpoint's rank-1 tracker state is of an older rlsignals (u and v as JSON "
                            f"lists, format {state.get('format', 1) if isinstance(state, dict) else '?'}); "
                            "it cannot be resumed by this version: start the run in a new output folder")
        tracked = int(state["tracked"])
        if self._writer:
            have = len(self._store.records)
            if have < tracked:
                raise UserError(f"{self._store.root}: the trajectory store holds {have} records, the checkpoint "
                                f"expects {tracked} (the store of another run?)")
            self._store.truncate(tracked)
        barrier()
        self._tracked = tracked
        self._rewards, self.jumps = list(state["rewards"]), list(state["jumps"])
        self._basis = self.trajectory.latest_basis() if tracked else {}
