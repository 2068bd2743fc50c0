"""The rank-1 trajectory store: per module and checkpoint, the top singular
triplet of the update W_t - W_0, its Frobenius norm and the error bound.

Layout of a store folder (about a thousand times smaller than one checkpoint
for 7B shapes: (m + n) fp32 numbers per module instead of m x n bf16):

    trajectory.json        base path, module shapes, and per checkpoint: its path,
                           step, vector file, and per module sigma, frob,
                           err_bound, iters
    ckpt-0000.safetensors  u and v of every module for checkpoint 0 ("<name>::u", "<name>::v")

A checkpoint is added by writing its vector file, then the JSON, each to a
temporary name renamed when whole: an interrupted run leaves the store as it
was after the last finished checkpoint, and a rerun skips what is there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

INDEX = "trajectory.json"
SCALARS = ("sigma", "frob", "err_bound", "iters")


@dataclasses.dataclass
class CheckpointRecord:
    path: str
    step: int | None
    file: str
    scalars: dict[str, dict[str, float]]  # scalar name -> module -> value


class Trajectory:
    """Rank-1 trajectory of every tracked module over a list of checkpoints."""

    def __init__(self, base: str, shapes: dict[str, tuple[int, int]], records: list[CheckpointRecord] | None = None,
                 root: Path | None = None):
        self.base = base
        self.shapes = dict(shapes)
        self.records = list(records or [])
        self.root = root
        self._vectors: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def modules(self) -> list[str]:
        return list(self.shapes)

    @property
    def steps(self) -> list[int | None]:
        return [r.step for r in self.records]

    def has(self, path: str | Path) -> bool:
        return any(r.path == str(path) for r in self.records)

    def scalar(self, name: str, module: str) -> torch.Tensor:
        """[C] values of ``name`` (sigma, frob, err_bound, iters) for one module."""
        return torch.tensor([r.scalars[name][module] for r in self.records], dtype=torch.float64)

    def _load(self, record: CheckpointRecord) -> dict[str, torch.Tensor]:
        if record.file not in self._vectors:
            if self.root is None:
                raise ValueError("this trajectory is not saved; vectors are only kept on disk")
            self._vectors[record.file] = load_file(str(self.root / record.file))
        return self._vectors[record.file]

    def vectors(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(u [C, m], v [C, n]) of one module over the checkpoints, fp32."""
        loaded = [self._load(r) for r in self.records]
        return (torch.stack([t[f"{module}::u"] for t in loaded]), torch.stack([t[f"{module}::v"] for t in loaded]))

    @classmethod
    def open(cls, root: str | Path) -> Trajectory:
        root = Path(root)
        meta = json.loads((root / INDEX).read_text())
        records = [CheckpointRecord(**r) for r in meta["checkpoints"]]
        return cls(meta["base"], {k: tuple(v) for k, v in meta["shapes"].items()}, records, root)

    @classmethod
    def open_or_create(cls, root: str | Path, base: str, shapes: dict[str, tuple[int, int]]) -> Trajectory:
        """The store at ``root``; it must track the same base and modules if it exists."""
        root = Path(root)
        if (root / INDEX).exists():
            existing = cls.open(root)
            if existing.base != base or existing.shapes != {k: tuple(v) for k, v in shapes.items()}:
                raise ValueError(f"{root} holds a trajectory of another base or module set "
                                 f"(base {existing.base}); choose another --out")
            return existing
        root.mkdir(parents=True, exist_ok=True)
        return cls(base, shapes, [], root)

    def add(self, path: str | Path, step: int | None, scalars: dict[str, dict[str, float]],
            u: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> None:
        """Append one checkpoint and save it (vector file first, then the index)."""
        if self.root is None:
            raise ValueError("open the trajectory with Trajectory.open_or_create(root, ...) first")
        file = f"ckpt-{len(self.records):04d}.safetensors"
        tensors = {f"{m}::u": u[m].detach().float().cpu().contiguous() for m in self.modules}
        tensors |= {f"{m}::v": v[m].detach().float().cpu().contiguous() for m in self.modules}
        tmp = self.root / f".{file}.tmp-{os.getpid()}"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.root / file)
        self.records.append(CheckpointRecord(str(path), step, file, {k: dict(scalars[k]) for k in SCALARS}))
        self._write_index()

    def _write_index(self) -> None:
        meta: dict[str, Any] = {"version": 1, "base": self.base,
                                "shapes": {k: list(v) for k, v in self.shapes.items()},
                                "checkpoints": [dataclasses.asdict(r) for r in self.records]}
        tmp = self.root / f".{INDEX}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, self.root / INDEX)
