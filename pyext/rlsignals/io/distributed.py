"""torch.distributed helpers for work split across ranks (torchrun).

Under torchrun (WORLD_SIZE > 1) the default process group is started on first
use: NCCL when CUDA is present, else gloo. A group started here is also shut
down here, at interpreter exit: a gloo group left alive at exit can abort the
process ("terminate called without an active exception") once its work is
already done. No barrier there: a rank that exits on an error must not wait for
ranks that will never reach it. Without torchrun everything runs as rank 0 of 1.
"""

from __future__ import annotations

import atexit
import os

import torch


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_shut_down_group)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shut_down_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: int | None = None) -> None:
    """Wait for every rank of the default process group; nothing with one process (``world``
    1, or no process group started)."""
    import torch.distributed as dist

    if (world is None or world > 1) and dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, world: int):
    """rank 0's ``obj`` on every rank."""
    if world == 1:
        return obj
    import torch.distributed as dist

    shared = [obj]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def merge_dicts(part: dict, world: int) -> dict:
    """The union of every rank's dict, on every rank."""
    if world == 1:
        return part
    import torch.distributed as dist

    everyone: list = [None] * world
    dist.all_gather_object(everyone, part)
    merged: dict = {}
    for other in everyone:
        merged.update(other)
    return merged
