"""The rank-1 trajectory store: per module and tracked checkpoint (or training
step), the top-k singular triplets of the update W_t - W_0 and how sure they are.

Layout of a store folder (format 3; for 7B shapes about a thousand times smaller
than one checkpoint: k (m + n) fp32 numbers per module instead of m x n bf16):

    trajectory.json          format, base, k, tol, module shapes, a per-module
                             summary (certified at every record, worst err_bound,
                             err_estimate and vector_estimate, vectors undetermined
                             at some record), and per record: its source (a
                             checkpoint folder, or "step N" in-loop), step,
                             accuracy (in-loop) and file. Its size grows by one
                             short entry per record, never with the modules' sizes.
    record-0000.safetensors  one record, M = number of modules in store order:
                               S [M, k] fp32; frob, err_bound, err_estimate,
                               vector_estimate [M] fp32; certified,
                               vectors_undetermined [M] bool; iters [M] int64;
                               "U::<module>" [m, k], "V::<module>" [n, k] fp32
    basis-0000.safetensors   the warm-start block [n, p] of every module ("<module>"),
                             kept for the latest record only: a resumed run starts
                             where an uninterrupted one would have, bit for bit

Per module, as delta_svd defines them: err_bound is the certificate (never below
the true error of S relative to sigma_1); err_estimate the a-posteriori (residual
and Ritz-gap) estimate of the same error; certified = err_bound <= tol;
vector_estimate the vectors' own estimate (residual / Ritz gap, the estimated sine
of u_1's and v_1's angles); vectors_undetermined = vector_estimate > tol, mostly
where the top is not separated (sigma_1 / sigma_2 near 1) and u_1, v_1 are not
determined to tol at all (sigma_1 still is).

A record is added by writing its file, then the basis file, then the index, each
whole or not at all (``rlsignals.io.atomic``), then deleting the previous basis
file: an interrupted run leaves the store as it was after its last whole record.
The folder is made by the first record, so a run that fails before one leaves
nothing. Stores of formats 1 and 2 (no vector estimate) are refused with one line:
rerun `rlsignals rank1` into a new folder.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rlsignals.io.atomic import atomic_path, write_json_atomic
from rlsignals.io.errors import UserError

FORMAT = 3
INDEX = "trajectory.json"
SCALARS = ("sigma", "frob", "err_bound", "err_estimate", "certified", "iters", "vector_estimate",
           "vectors_undetermined")
FLAGS = ("certified", "vectors_undetermined")
# per-module numbers of a record file, beside "S" and the "U::" / "V::" vectors
_RECORD_SCALARS = ("frob", "err_bound", "err_estimate", "certified", "iters", "vector_estimate",
                   "vectors_undetermined")


@dataclasses.dataclass
class Record:
    """One tracked checkpoint (offline) or training step (in-loop)."""

    path: str                     # the checkpoint folder, or "step N" for an in-loop record
    step: int | None
    file: str                     # its safetensors file in the store
    accuracy: float | None = None  # in-loop: mean training reward since the previous record


class Trajectory:
    """Top-k singular triplets of every tracked module over a list of records.

    ``base``: W_0's source (a checkpoint folder, or the in-loop tracker's base file);
    ``shapes``: module -> (m, n) in store order; ``k``: triplets per module;
    ``tol``: the tolerance delta_svd ran with (``certified`` means err_bound <= tol).
    """

    def __init__(self, root: str | Path, base: str, shapes: Mapping[str, tuple[int, int]], k: int, tol: float,
                 records: list[Record] | None = None, basis_file: str | None = None):
        self.root = Path(root)
        self.base, self.k, self.tol = base, int(k), float(tol)
        self.shapes = {name: (int(m), int(n)) for name, (m, n) in shapes.items()}
        self.records = list(records or [])
        self.basis_file = basis_file
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    # ---- reading --------------------------------------------------------------------------------
    @property
    def modules(self) -> list[str]:
        return list(self.shapes)

    @property
    def steps(self) -> list[int | None]:
        return [r.step for r in self.records]

    @property
    def accuracy(self) -> list[float | None]:
        return [r.accuracy for r in self.records]

    def has(self, path: str | Path) -> bool:
        return any(r.path == str(path) for r in self.records)

    def _read(self, record: Record, keys: list[str]) -> dict[str, torch.Tensor]:
        cached = self._cache.setdefault(record.file, {})
        missing = [key for key in keys if key not in cached]
        if missing:
            file = self.root / record.file
            try:
                with safe_open(str(file), framework="pt") as f:
                    for key in missing:
                        cached[key] = f.get_tensor(key)
            except (SafetensorError, OSError) as exc:
                raise UserError(f"{file}: cannot read the trajectory record (truncated or missing?): {exc}") from None
        return {key: cached[key] for key in keys}

    def _index(self, module: str) -> int:
        if module not in self.shapes:
            raise UserError(f"module {module!r} is not in the trajectory at {self.root} "
                             f"(it tracks {len(self.shapes)} modules, e.g. {self.modules[:2]})")
        return self.modules.index(module)

    def scalar(self, name: str, module: str) -> torch.Tensor:
        """[C] values of ``name`` for one module over the records: sigma (= S[:, 0]),
        frob, err_bound, err_estimate, vector_estimate, iters as fp64; certified and
        vectors_undetermined as bool."""
        if name not in SCALARS:
            raise ValueError(f"name must be one of {SCALARS}, got {name!r}")
        at, key = self._index(module), "S" if name == "sigma" else name
        values = [self._read(r, [key])[key][at] for r in self.records]
        if not values:
            return torch.zeros(0, dtype=torch.bool if name in FLAGS else torch.float64)
        stacked = torch.stack([v[0] if name == "sigma" else v for v in values])
        return stacked if name in FLAGS else stacked.double()

    def triplets(self, module: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S [C, k], U [C, m, k], V [C, n, k]) of one module over the records, fp32."""
        at = self._index(module)
        read = [self._read(r, ["S", f"U::{module}", f"V::{module}"]) for r in self.records]
        m, n = self.shapes[module]
        if not read:
            return torch.zeros(0, self.k), torch.zeros(0, m, self.k), torch.zeros(0, n, self.k)
        return (torch.stack([t["S"][at] for t in read]), torch.stack([t[f"U::{module}"] for t in read]),
                torch.stack([t[f"V::{module}"] for t in read]))

    def vectors(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(u_1 [C, m], v_1 [C, n]): the top singular pair of one module over the records."""
        _, u, v = self.triplets(module)
        return u[:, :, 0], v[:, :, 0]

    def latest_basis(self, modules: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The warm-start block [n, p] of each of ``modules`` (default all) saved with
        the latest record; empty when the store has none for it."""
        if self.basis_file is None:
            return {}
        file = self.root / self.basis_file
        try:
            with safe_open(str(file), framework="pt") as f:
                return {name: f.get_tensor(name) for name in (modules if modules is not None else self.modules)}
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{file}: cannot read the warm-start basis (truncated or missing?): {exc}") from None

    def _flags(self, name: str) -> torch.Tensor:
        """bool [C, M]: the flag ``name`` of every module over the records."""
        flags = [self._read(r, [name])[name] for r in self.records]
        return torch.stack(flags) if flags else torch.zeros(0, len(self.shapes), dtype=torch.bool)

    def certified_count(self) -> tuple[int, int]:
        """(modules certified at every record, modules): err_bound <= tol throughout."""
        flags = self._flags("certified")
        return (int(flags.all(0).sum()) if len(flags) else 0), len(self.shapes)

    def undetermined(self, records: Sequence[int] | None = None) -> list[str]:
        """The modules whose vectors are undetermined (vector_estimate > tol) at some record
        (of ``records``, indices into ``records``; default all), in store order."""
        flags = self._flags("vectors_undetermined")
        if records is not None:
            flags = flags[list(records)]
        hit = flags.any(0).tolist() if len(flags) else [False] * len(self.shapes)
        return [name for name, flag in zip(self.modules, hit) if flag]

    def summary_lines(self) -> list[str]:
        """What ``rlsignals rank1`` prints when done: the store, how many modules were
        certified, and how many have undetermined vectors (with their worst estimate)."""
        certified, modules = self.certified_count()
        lines = [f"trajectory of {modules} modules over {len(self.records)} checkpoints -> {self.root}",
                 f"{certified} of {modules} modules certified (err_bound <= tol); the others carry an "
                 "a-posteriori estimate"]
        flagged = self.undetermined()
        if flagged:
            worst = max(float(self.scalar("vector_estimate", name).max()) for name in flagged)
            lines.append(f"{len(flagged)} of {modules} modules: top not separated, vectors undetermined "
                         f"(estimated sin(u_1) up to {worst:.1g}; sigma_1 to tol all the same)")
        else:
            lines.append(f"0 of {modules} modules with undetermined vectors: u_1, v_1 to tol everywhere (estimated)")
        return lines

    def verify(self) -> None:
        """Check every record file (and the basis file) is readable and holds every
        module, before any long work; a one-line error names the file."""
        wanted = {"S", *_RECORD_SCALARS}
        wanted |= {f"{side}::{name}" for name in self.modules for side in ("U", "V")}
        files = [(r.file, wanted) for r in self.records]
        files += [(self.basis_file, set(self.modules))] if self.basis_file else []
        for name, keys in files:
            file = self.root / name
            try:
                with safe_open(str(file), framework="pt") as f:
                    missing = sorted(keys - set(f.keys()))
            except (SafetensorError, OSError) as exc:
                raise UserError(f"{file}: cannot read the trajectory file (truncated or missing?): {exc}") from None
            if missing:
                raise UserError(f"{file}: lacks {len(missing)} tensors of the tracked modules, e.g. {missing[0]!r}")

    # ---- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> Trajectory:
        """The store at ``root``; a one-line ValueError when it is missing, truncated or old."""
        root = Path(root)
        index = root / INDEX
        if not index.is_file():
            raise UserError(f"{root}: no {INDEX}; not a trajectory store (made by `rlsignals rank1`)")
        try:
            meta = json.loads(index.read_text())
            version = meta.get("format", meta.get("version"))
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
            raise UserError(f"{index}: not a trajectory index (truncated or not JSON: {exc})") from None
        if version != FORMAT:
            raise UserError(f"{index}: trajectory format {version}, this rlsignals reads format {FORMAT} "
                             "(rerun `rlsignals rank1` into a new --out)")
        try:
            records = [Record(**r) for r in meta["records"]]
            return cls(root, meta["base"], meta["shapes"], meta["k"], meta["tol"], records, meta["basis"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{index}: malformed trajectory index ({type(exc).__name__}: {exc})") from None

    @classmethod
    def open_or_create(cls, root: str | Path, base: str, shapes: Mapping[str, tuple[int, int]], *, k: int = 1,
                       tol: float = 1e-4) -> Trajectory:
        """The store at ``root`` if it exists (it must have the same base, modules, k and
        tol), else a new empty one whose folder the first record makes."""
        root = Path(root)
        if not (root / INDEX).exists():
            return cls(root, base, shapes, k, tol)
        existing = cls.open(root)
        wanted = {name: (int(m), int(n)) for name, (m, n) in shapes.items()}
        if existing.base != base or existing.shapes != wanted:
            raise UserError(f"{root} holds a trajectory of another base or module set (base {existing.base}, "
                            f"{len(existing.shapes)} modules); choose another output folder")
        if existing.k != k or existing.tol != tol:
            raise UserError(f"{root} holds a trajectory made with k={existing.k}, tol={existing.tol:g}, "
                            f"not k={k}, tol={tol:g}; rerun with those or choose another output folder")
        return existing

    # ---- writing --------------------------------------------------------------------------------
    def add(self, path: str | Path, step: int | None, results: Mapping[str, Mapping[str, torch.Tensor]],
            basis: Mapping[str, torch.Tensor] | None = None, accuracy: float | None = None) -> None:
        """Append one record and save it.

        results: module -> {"S" [k], "U" [m, k], "V" [n, k], "frob", "err_bound",
            "err_estimate", "certified", "iters", "vector_estimate", "vectors_undetermined"
            (0-d)} for every module of the store (rank1.track.RESULT_FIELDS).
        basis: module -> the warm-start block [n, p] to keep for the next record (all
            modules, or None to keep none).
        """
        missing = [name for name in self.modules if name not in results]
        if missing:
            raise ValueError(f"results lack modules {missing[:3]} of the trajectory at {self.root}")
        if basis is not None and set(basis) != set(self.shapes):
            raise ValueError(f"basis must hold every module of the trajectory, got {len(basis)} of {len(self.shapes)}")
        number = len(self.records)
        file = f"record-{number:04d}.safetensors"
        tensors = {key: torch.stack([torch.as_tensor(results[name][key]).cpu() for name in self.modules])
                   for key in ("S", *_RECORD_SCALARS)}
        tensors["iters"] = tensors["iters"].long()
        for key in ("S", "frob", "err_bound", "err_estimate", "vector_estimate"):
            tensors[key] = tensors[key].float()
        for key in FLAGS:
            tensors[key] = tensors[key].bool()
        for name in self.modules:
            for key in ("U", "V"):
                tensors[f"{key}::{name}"] = results[name][key].detach().float().cpu().contiguous()
        self.root.mkdir(parents=True, exist_ok=True)
        self._save(tensors, file)
        old_basis = self.basis_file
        self.basis_file = None
        if basis is not None:
            self.basis_file = f"basis-{number:04d}.safetensors"
            self._save({name: basis[name].detach().float().cpu().contiguous() for name in self.modules},
                       self.basis_file)
        self.records.append(Record(str(path), step, file, accuracy))
        self._cache.pop(file, None)
        self._write_index()
        if old_basis is not None and old_basis != self.basis_file:
            (self.root / old_basis).unlink(missing_ok=True)

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` records (a resumed run drops those it will redo);
        the warm-start basis survives only if it belongs to record ``count`` - 1."""
        if not 0 <= count <= len(self.records):
            raise ValueError(f"count must be in [0, {len(self.records)}], got {count}")
        if count == len(self.records):
            return
        self.records = self.records[:count]
        if self.basis_file != (f"basis-{count - 1:04d}.safetensors" if count else None):
            self.basis_file = None
        if self.root.exists():
            self._write_index()

    def _save(self, tensors: dict[str, torch.Tensor], file: str) -> None:
        with atomic_path(self.root / file) as tmp:
            save_file(tensors, str(tmp))

    def _summary(self) -> dict[str, Any]:
        """Per module: certified at every record, worst err_bound, err_estimate and
        vector_estimate, vectors undetermined at some record."""
        keys = ("err_bound", "err_estimate", "vector_estimate")
        read = [self._read(r, ["certified", "vectors_undetermined", *keys]) for r in self.records]
        certified = torch.stack([t["certified"] for t in read]).all(0)
        undetermined = torch.stack([t["vectors_undetermined"] for t in read]).any(0)
        worst = {key: torch.stack([t[key] for t in read]).amax(0) for key in keys}
        return {name: {"certified": bool(certified[i]), "max_err_bound": float(worst["err_bound"][i]),
                       "max_err_estimate": float(worst["err_estimate"][i]),
                       "max_vector_estimate": float(worst["vector_estimate"][i]),
                       "vectors_undetermined": bool(undetermined[i])} for i, name in enumerate(self.modules)}

    def _write_index(self) -> None:
        meta: dict[str, Any] = {"format": FORMAT, "base": self.base, "k": self.k, "tol": self.tol,
                                "shapes": {name: list(shape) for name, shape in self.shapes.items()},
                                "modules": self._summary() if self.records else {},
                                "records": [dataclasses.asdict(r) for r in self.records], "basis": self.basis_file}
        write_json_atomic(self.root / INDEX, meta)
