"""Data parallel training on torch's own engine, under torchrun.

``Parallel.start(kind)`` joins the process group that torchrun set up
(``rlsignals.io.distributed``: NCCL with CUDA, gloo on the CPU) and picks how
the policy is spread over the ranks:

    "fsdp"  FSDP2 (``torch.distributed.fsdp.fully_shard``): every decoder layer,
            then the whole model, is sharded along dim 0; gradients are
            reduce-scattered (averaged over ranks). Runs on the CPU with gloo too
            (torch 2.13), so it is the default under torchrun.
    "ddp"   ``DistributedDataParallel``: whole weights on every rank, gradients
            all-reduced (averaged).
    "none"  one process.

Generation never runs through the sharded model: FSDP2 all-gathers a layer's
weights at each call, so every rank would have to make the same calls, while
each rank's generate stops when its own completions end. Rollouts come from
``full_model()``: the plain model (one process, DDP), or under FSDP a whole
replica on each rank, refreshed from the shards (one all-gather) each step. The
training forward must also make the same module calls on every rank, so under
data parallelism it runs prompt and completion as one padded batch (no
shared-prefix split, whose use depends on each rank's prompts).

Checkpoints: the whole model as an HF folder (written by rank 0); the optimizer
state as ``optimizer.pt`` (one process, DDP: written by rank 0) or, under FSDP,
sharded with torch.distributed.checkpoint in ``optimizer/`` (every rank writes
its shard; resuming needs the same number of ranks).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlsignals.io.distributed import rank_and_world
from rlsignals.lm.capture import decoder_layers
from rlsignals.trainer.config import PARALLEL_KINDS


def device_for_rank() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class Parallel:
    """The ranks of a run and how the policy is wrapped for them."""

    def __init__(self, kind: str = "none", rank: int = 0, world: int = 1):
        if kind not in PARALLEL_KINDS[1:]:
            raise ValueError(f"parallel kind must be one of {PARALLEL_KINDS[1:]}, got {kind!r}")
        if (kind == "none") != (world == 1):
            raise ValueError(f"parallel kind {kind!r} does not fit a world of {world} process(es)")
        self.kind, self.rank, self.world = kind, rank, world
        self.model: nn.Module | None = None
        self.train_module: nn.Module | None = None
        self._replica: nn.Module | None = None

    @classmethod
    def start(cls, kind: str = "auto") -> Parallel:
        """Join torchrun's process group (if any): "auto" is FSDP2 under torchrun, else one process."""
        if kind not in PARALLEL_KINDS:
            raise ValueError(f"parallel must be one of {PARALLEL_KINDS}, got {kind!r}")
        rank, world = rank_and_world()
        if world == 1:
            return cls("none")
        if kind == "none":
            raise ValueError(f"parallel='none' but torchrun started {world} processes; use 'fsdp' or 'ddp'")
        if torch.cuda.is_available():
            torch.cuda.set_device(device_for_rank())
        return cls("fsdp" if kind == "auto" else kind, rank, world)

    # ---- the model ------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to run the training forward through (``model`` itself is kept as
        ``self.model``; FSDP2 shards it in place)."""
        self.model = model
        if self.kind == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            self._replica = copy.deepcopy(model).eval().requires_grad_(False)
            device = next(model.parameters()).device
            mesh = init_device_mesh(device.type, (self.world,))
            for layer in decoder_layers(model)[1]:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            self.train_module = model
        elif self.kind == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device = next(model.parameters()).device
            self.train_module = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        else:
            self.train_module = model
        return self.train_module

    def full_model(self) -> nn.Module:
        """A plain module holding the current whole weights (collective under FSDP:
        every rank must call it at the same point)."""
        if self.kind != "fsdp":
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        self._replica.load_state_dict(state)
        return self._replica

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Load whole weights into the (possibly sharded) model; returns (missing, unexpected)."""
        if self.kind != "fsdp":
            result = self.model.load_state_dict(state, strict=False)
            return list(result.missing_keys), list(result.unexpected_keys)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        names = set(self.model.state_dict())
        missing, unexpected = sorted(names - set(state)), sorted(set(state) - names)
        if not unexpected:
            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True, strict=False))
        return missing, unexpected

    # ---- collectives ----------------------------------------------------------------------------
    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (fp64)."""
        if self.world == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, obj)
        return everyone

    def _comm_device(self) -> torch.device:
        return device_for_rank() if torch.cuda.is_available() else torch.device("cpu")

    # ---- optimizer state ------------------------------------------------------------------------
    def save_optimizer(self, optimizer: torch.optim.Optimizer, folder: Path) -> None:
        """Every rank calls this; see the module docstring for the layout."""
        if self.kind == "fsdp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            dcp.save(get_optimizer_state_dict(self.model, optimizer), checkpoint_id=str(folder / "optimizer"))
        elif self.rank == 0:
            torch.save(optimizer.state_dict(), folder / "optimizer.pt")

    def load_optimizer(self, optimizer: torch.optim.Optimizer, folder: Path) -> None:
        if self.kind == "fsdp":
            if not (folder / "optimizer").is_dir():
                raise ValueError(f"{folder}: no sharded optimizer state (optimizer/); it was not written by an "
                                 "FSDP run")
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

            state = get_optimizer_state_dict(self.model, optimizer)
            dcp.load(state, checkpoint_id=str(folder / "optimizer"))
            set_optimizer_state_dict(self.model, optimizer, state)
            return
        if not (folder / "optimizer.pt").is_file():
            raise ValueError(f"{folder}: no optimizer.pt; it was written by an FSDP run (resume it with "
                             "parallel='fsdp' and the same number of ranks)")
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True,
                                             map_location=next(self.model.parameters()).device))
