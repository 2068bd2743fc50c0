"""Rank-1 trajectories of RL weight updates, offline and in-loop, on one code path.

``top_triplets`` is that path: for batches of same-shaped modules it loads the
updates' operands, warm-starts each module from its previous block, calls
``delta_svd`` (row-sharded with a process group when the weights are) and returns
store-ready results. ``track_rank1`` (``rlsignals rank1``) drives it over
checkpoint folders; the in-loop tracker (``rlsignals.trainer.tracker``) over a
model's parameters.

``track_rank1`` reads a base checkpoint W_0 and checkpoints W_1..W_C, takes the
top-k singular triplets of every tracked module's update dW_t = W_t - W_0 and
appends them to a ``Trajectory`` store. Every checkpoint's header (tensor names,
shapes, dtypes) is checked before the first SVD. The modules of one kind go to
``delta_svd`` as one batch, a view of the memory-mapped files (``layout_batches``,
``Checkpoint.stack``: no copy of the weights), and the kernel is asked to read the
next checkpoint into the page cache while the current one is solved. It resumes:
checkpoints already in the store are skipped and the next one starts from the
saved warm-start basis, so a resumed run equals an uninterrupted one. Under
torchrun the module batches are split across ranks and rank 0 writes.

``rank1_model`` writes W_0 + alpha * scale * u_1 v_1^T for every module, with
scale = ||dW||_F (the paper's rescaling) or sigma_1.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlsignals.io.checkpoints import (
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    Checkpoint,
    CheckpointError,
    check_compatible,
    check_shapes,
    layout_batches,
    select_matrices,
    write_checkpoint,
)
from rlsignals.io.distributed import barrier, broadcast_object, merge_dicts, rank_and_world
from rlsignals.ops.svd import delta_svd
from rlsignals.rank1.trajectory import Trajectory

Loader = Callable[[Sequence[str]], "tuple[torch.Tensor, torch.Tensor]"]
SUPPORTED_DTYPES = ("F32", "F16", "BF16")
# what top_triplets returns per module (and the trajectory stores)
RESULT_FIELDS = ("S", "U", "V", "frob", "err_bound", "err_estimate", "certified", "iters", "vector_estimate",
                 "vectors_undetermined")


def _gather_rows(local: torch.Tensor, group) -> torch.Tensor:
    """[B, m_r, k] row slabs of every rank of ``group`` -> [B, m, k], in rank order."""
    import torch.distributed as dist

    slabs: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(slabs, local.cpu(), group=group)
    return torch.cat(slabs, 1)


def top_triplets(batches: Sequence[Sequence[str]], load: Loader, basis: dict[str, torch.Tensor], *, k: int = 1,
                 tol: float = 1e-4, max_iters: int | None = None, backend: str = "auto", process_group=None,
                 where: str = "", on_batch: Callable[[], None] | None = None,
                 timings: dict[str, float] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """The top-k singular triplets of every module's update, batch by batch.

    batches: lists of names of same-shaped modules (``layout_batches`` or ``shape_batches``).
    load(batch): (after, before), each [B, m, n] (or this rank's row slab [B, m_r, n]
        with ``process_group``) on the device to compute on, one dtype.
    basis: module -> warm-start block [n, p] from its previous result; a batch starts
        warm when every member has one. Updated in place with the new blocks (CPU).
    process_group: the weights are row-sharded over this group: delta_svd all-reduces
        its products, every rank gets the same S, V and basis, and U is gathered from
        the ranks' slabs (k (m + n) numbers per module, never the weights).
    timings: when given, seconds spent in ``load`` ("read") and in delta_svd ("solve", the
        first touch of memory-mapped pages included) are added to it.
    Returns module -> {"S" [k], "U" [m, k], "V" [n, k], "frob", "err_bound", "err_estimate",
    "certified", "iters", "vector_estimate", "vectors_undetermined" (0-d)}, on the CPU
    (RESULT_FIELDS; delta_svd's fields of the same names). A module whose update holds
    NaN/inf gets NaN results and a RuntimeWarning naming ``where`` and the module.
    """
    results: dict[str, dict[str, torch.Tensor]] = {}
    clock = timings if timings is not None else {}
    for batch in batches:
        start = time.perf_counter()
        after, before = load(batch)
        init = torch.stack([basis[n] for n in batch]).to(after.device) if all(n in basis for n in batch) else None
        loaded = time.perf_counter()
        res = delta_svd(after, before, k=k, tol=tol, max_iters=max_iters, init=init, backend=backend,
                        process_group=process_group)
        del after, before
        host = {key: getattr(res, key).cpu() for key in ("S", "V", "frob", "err_bound", "err_estimate", "certified",
                                                         "iters", "nonfinite", "basis", "vector_estimate",
                                                         "vectors_undetermined")}
        host["U"] = res.U.cpu() if process_group is None else _gather_rows(res.U, process_group)
        for j, name in enumerate(batch):  # clones: a pickled view (torchrun's gathers) would carry the whole batch
            basis[name] = host["basis"][j].clone()
            results[name] = {key: host[key][j].clone() for key in RESULT_FIELDS}
            if bool(host["nonfinite"][j]):
                warnings.warn(f"{where}: the update of {name} holds NaN/inf; its trajectory entry is NaN",
                              RuntimeWarning, stacklevel=2)
        clock["read"] = clock.get("read", 0.0) + loaded - start
        clock["solve"] = clock.get("solve", 0.0) + time.perf_counter() - loaded
        if on_batch is not None:
            on_batch()
    return results


def checkpoint_step(path: str | Path) -> int | None:
    """The training step of a checkpoint folder: trainer_state.json's global_step,
    else the number in a name like 'checkpoint-500' or 'global_step500'."""
    path = Path(path)
    state = path / "trainer_state.json"
    if state.exists():
        try:
            step = json.loads(state.read_text()).get("global_step")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise CheckpointError(f"{state}: not a trainer state (truncated or not JSON: {exc})") from None
        if step is not None:
            return int(step)
    match = re.search(r"(\d+)$", path.name)
    return int(match.group(1)) if match else None


def check_settings(k: object, tol: object, max_iters: object) -> None:
    """k an int >= 1, tol a finite number > 0, max_iters None or an int >= 1 (checked before any work)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1):
        raise ValueError(f"max_iters must be an int >= 1 or None, got {max_iters!r}")


def _check_header(base: Checkpoint, ckpt: Checkpoint, names: Sequence[str], k: int) -> None:
    """Names, shapes (and model_type) as the base's; dtypes delta_svd reads; k fits."""
    check_compatible(base, ckpt, names)
    for name in names:
        dtype = ckpt.dtype(name)
        if dtype not in SUPPORTED_DTYPES:
            raise CheckpointError(f"{ckpt.path}: tensor {name!r} has dtype {dtype}, expected one of "
                                  f"{', '.join(SUPPORTED_DTYPES)}")
        if k > min(ckpt.shape(name)):
            raise ValueError(f"k={k} exceeds min(m, n) of {name!r}, shape {ckpt.shape(name)}")


def _loader(after: Checkpoint, before: Checkpoint, device: str) -> Loader:
    def load(batch: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = after.stack(batch), before.stack(batch)
        if a.dtype != b.dtype:  # e.g. a bf16 checkpoint against an fp32 base: compare in fp32
            a, b = a.float(), b.float()
        return a.to(device), b.to(device)
    return load


def _will_need(ckpt: Checkpoint) -> None:
    """Have the kernel read ``ckpt``'s files into the page cache, in a background thread."""
    threading.Thread(target=ckpt.will_need, daemon=True).start()


def track_rank1(base: str | Path, checkpoints: Sequence[str | Path], out: str | Path, *,
                steps: Sequence[int] | None = None, include: str = DEFAULT_INCLUDE,
                exclude: str | None = DEFAULT_EXCLUDE, k: int = 1, device: str = "cpu", tol: float = 1e-4,
                max_iters: int | None = None, backend: str = "auto", max_batch_bytes: int = 1 << 30,
                progress: bool = True, timings: dict[str, float] | None = None) -> Trajectory:
    """Append the top-k triplets of every tracked module for each checkpoint not yet in
    ``out`` (a ``Trajectory`` store; see the module docstring). Returns the store;
    ``Trajectory.summary_lines()`` says how many modules were certified and how many have
    undetermined vectors. ``timings``: when given, seconds of reading, solving and writing
    the store ("read", "solve", "write") are added to it (this rank's)."""
    check_settings(k, tol, max_iters)
    if not checkpoints:
        raise ValueError("checkpoints is empty: give at least one checkpoint folder")
    if steps is not None and len(steps) != len(checkpoints):
        raise ValueError(f"got {len(steps)} steps for {len(checkpoints)} checkpoints")
    rank, world = rank_and_world()
    clock = timings if timings is not None else {}
    base_ckpt = Checkpoint(base)
    names = select_matrices(base_ckpt, include, exclude)
    if not names:
        raise ValueError(f"{base}: no tensor matches include={include!r} / exclude={exclude!r}")
    shapes = {n: base_ckpt.shape(n) for n in names}
    ckpts = [Checkpoint(path) for path in checkpoints]  # every header before the first SVD
    for ckpt in [base_ckpt, *ckpts]:
        _check_header(base_ckpt, ckpt, names, k)
    labels = [str(Path(path)) for path in checkpoints]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"checkpoint {twice[0]} is given twice; list each checkpoint once")
    record_steps = list(steps) if steps is not None else [checkpoint_step(path) for path in checkpoints]
    traj = Trajectory.open_or_create(out, str(Path(base)), shapes, k=k, tol=tol) if rank == 0 else None
    done = broadcast_object({r.path for r in traj.records} if traj else set(), world)
    batches = layout_batches(base_ckpt, names, max_batch_bytes)[rank::world]
    mine = [n for batch in batches for n in batch]
    basis = Trajectory.open(out).latest_basis(mine) if done else {}
    todo = [i for i, label in enumerate(labels) if label not in done]
    bar = tqdm(total=len(todo) * len(batches), desc="rank-1 of updates", unit="batch", disable=not progress or rank)
    if todo:
        _will_need(base_ckpt)
        _will_need(ckpts[todo[0]])
    for at, i in enumerate(todo):
        if at + 1 < len(todo):
            _will_need(ckpts[todo[at + 1]])  # read ahead while this one is solved
        results = top_triplets(batches, _loader(ckpts[i], base_ckpt, device), basis, k=k, tol=tol,
                               max_iters=max_iters, backend=backend, where=labels[i], on_batch=lambda: bar.update(1),
                               timings=clock)
        results = merge_dicts(results, world)
        kept = merge_dicts({n: basis[n] for n in mine}, world)
        if rank == 0:
            start = time.perf_counter()
            traj.add(labels[i], record_steps[i], results, kept)
            clock["write"] = clock.get("write", 0.0) + time.perf_counter() - start
    bar.close()
    barrier(world)
    return traj if rank == 0 else Trajectory.open(out)


def rank1_model(base: str | Path, trajectory: Trajectory, out: str | Path, *, checkpoint: int = -1,
                alpha: float = 1.0, scale: str = "frob") -> Path:
    """Write W_0 + alpha * scale * u_1 v_1^T for every tracked module (the trajectory's
    record ``checkpoint``); scale = "frob" (||dW||_F, the paper's) or "sigma" (sigma_1)."""
    if scale not in ("frob", "sigma"):
        raise ValueError(f"scale must be 'frob' or 'sigma', got {scale!r}")
    count = len(trajectory.records)
    if not count:
        raise ValueError(f"the trajectory at {trajectory.root} holds no checkpoint")
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or not -count <= checkpoint < count:
        raise ValueError(f"checkpoint must be an index in [{-count}, {count}) of the trajectory's {count} "
                         f"checkpoints, got {checkpoint!r}")
    base_ckpt = Checkpoint(base)
    check_shapes(base_ckpt, trajectory.shapes, f"the trajectory {trajectory.root}")
    replaced = {}
    for module in trajectory.modules:
        u, v = trajectory.vectors(module)
        size = float(trajectory.scalar(scale, module)[checkpoint])
        replaced[module] = base_ckpt.get(module).float() + alpha * size * torch.outer(u[checkpoint], v[checkpoint])
    return write_checkpoint(base_ckpt, out, replaced, command="rank1-model")
