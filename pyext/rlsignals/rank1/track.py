"""Rank-1 trajectories of RL weight updates over checkpoints, and the rank-1 model.

``track_rank1`` reads a base checkpoint W_0 and checkpoints W_1..W_C (streaming,
one batch of same-shaped matrices at a time), takes the top singular triplet of
every tracked module's update dW_t = W_t - W_0 with ``delta_svd`` (warm-started
from the same module's previous checkpoint), and appends it to a ``Trajectory``
store: resumable, one atomic write per checkpoint. Under torchrun the module
batches are split across ranks and rank 0 writes.

``rank1_model`` writes W_0 + alpha * scale * u_1 v_1^T for every module, with
scale = ||dW||_F (the paper's rescaling) or sigma_1.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from rlsignals.io.distributed import barrier, broadcast_object, merge_dicts, rank_and_world
from rlsignals.io.checkpoints import (DEFAULT_EXCLUDE, DEFAULT_INCLUDE, Checkpoint, check_compatible, group_by_shape,
                                   select_matrices, write_checkpoint)
from rlsignals.ops.svd import delta_svd
from rlsignals.rank1.trajectory import Trajectory


def checkpoint_step(path: str | Path) -> int | None:
    """The training step of a checkpoint folder: trainer_state.json's global_step,
    else the number in a name like 'checkpoint-500' or 'global_step500'."""
    path = Path(path)
    state = path / "trainer_state.json"
    if state.exists():
        step = json.loads(state.read_text()).get("global_step")
        if step is not None:
            return int(step)
    match = re.search(r"(\d+)$", path.name)
    return int(match.group(1)) if match else None


def track_rank1(base: str | Path, checkpoints: Sequence[str | Path], out: str | Path, *,
                steps: Sequence[int] | None = None, include: str = DEFAULT_INCLUDE,
                exclude: str | None = DEFAULT_EXCLUDE, device: str = "cpu", tol: float = 1e-4,
                max_iters: int | None = None, backend: str = "auto", max_batch_bytes: int = 1 << 30,
                progress: bool = True) -> Trajectory:
    """Append the rank-1 triplet of every tracked module for each checkpoint not yet in ``out``."""
    if steps is not None and len(steps) != len(checkpoints):
        raise ValueError(f"got {len(steps)} steps for {len(checkpoints)} checkpoints")
    rank, world = rank_and_world()
    base_ckpt = Checkpoint(base)
    names = select_matrices(base_ckpt, include, exclude)
    if not names:
        raise ValueError(f"{base}: no tensor matches include={include!r} / exclude={exclude!r}")
    shapes = {n: base_ckpt.shape(n) for n in names}
    traj = Trajectory.open_or_create(out, str(Path(base)), shapes) if rank == 0 else None
    done = broadcast_object({r.path for r in traj.records} if traj else set(), world)
    batches = group_by_shape(base_ckpt, names, max_batch_bytes)[rank::world]
    todo = [(i, c) for i, c in enumerate(checkpoints) if str(Path(c)) not in done]
    basis: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(todo) * len(batches), desc="rank-1 of updates", unit="batch", disable=not progress or rank)
    for i, path in todo:
        ckpt = Checkpoint(path)
        check_compatible(base_ckpt, ckpt, names)
        results: dict[str, tuple] = {}
        for batch in batches:
            after = torch.stack([ckpt.get(n) for n in batch]).to(device)
            before = torch.stack([base_ckpt.get(n) for n in batch]).to(device)
            init = torch.stack([basis[n] for n in batch]).to(device) if all(n in basis for n in batch) else None
            res = delta_svd(after, before, k=1, tol=tol, max_iters=max_iters, init=init, backend=backend)
            for j, n in enumerate(batch):
                basis[n] = res.basis[j].cpu()
                results[n] = (float(res.S[j, 0]), float(res.frob[j]), float(res.err_bound[j]), int(res.iters[j]),
                              res.U[j, :, 0].cpu(), res.V[j, :, 0].cpu())
                if bool(res.nonfinite[j]):
                    warnings.warn(f"{path}: the update of {n} holds NaN/inf; its trajectory entry is NaN",
                                  RuntimeWarning, stacklevel=2)
            bar.update(1)
        results = merge_dicts(results, world)
        if rank == 0:
            step = steps[i] if steps is not None else checkpoint_step(path)
            scalars = {key: {n: results[n][j] for n in names} for j, key in enumerate(("sigma", "frob", "err_bound",
                                                                                       "iters"))}
            traj.add(str(Path(path)), step, scalars, {n: results[n][4] for n in names},
                     {n: results[n][5] for n in names})
    bar.close()
    barrier(world)
    return traj if rank == 0 else Trajectory.open(out)


def rank1_model(base: str | Path, trajectory: Trajectory, out: str | Path, *, checkpoint: int = -1,
                alpha: float = 1.0, scale: str = "frob") -> Path:
    """Write W_0 + alpha * scale * u_1 v_1^T for every tracked module (the trajectory's
    entry ``checkpoint``); scale = "frob" (||dW||_F, the paper's) or "sigma" (sigma_1)."""
    if scale not in ("frob", "sigma"):
        raise ValueError(f"scale must be 'frob' or 'sigma', got {scale!r}")
    if not trajectory.records:
        raise ValueError("the trajectory holds no checkpoint")
    base_ckpt = Checkpoint(base)
    record = trajectory.records[checkpoint]
    replaced = {}
    for module in trajectory.modules:
        u, v = trajectory.vectors(module)
        u, v = u[checkpoint], v[checkpoint]
        size = record.scalars[scale][module]
        replaced[module] = base_ckpt.get(module).float() + alpha * size * torch.outer(u, v)
    return write_checkpoint(base_ckpt, out, replaced)
