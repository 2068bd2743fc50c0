"""Streaming access to Hugging Face checkpoints (local folders of safetensors).

A ``Checkpoint`` opens a folder with ``model.safetensors`` or sharded
``model-0000k-of-0000n.safetensors`` files listed in
``model.safetensors.index.json``. Tensors are memory-mapped and read one at a
time, so a model is never held in RAM whole; ``Checkpoint.stack`` gives a batch of
same-kind modules as one view of the map where the file's layout allows
(``rlsignals.io.mapped``), else a copy. Errors name the folder, the file and the
tensor.

``select_matrices`` picks the tensors an analysis covers (default: every 2-D
weight of the decoder layers; embeddings, lm_head and norms out);
``shape_batches`` batches same-shaped ones for ``delta_svd``, and
``layout_batches`` batches them so that ``Checkpoint.stack`` needs no copy.
``write_checkpoint`` writes a loadable copy of a checkpoint with some tensors
replaced, atomically; it carries the files that belong to the weights (config,
tokenizer, shard index, remote code) and none of a trainer's state (optimizer,
scheduler, RNG, trainer_state.json), which would no longer match them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rlsignals.io import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from rlsignals.io.atomic import atomic_folder
from rlsignals.io.errors import UserError
from rlsignals.io.mapped import MappedFile

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


# files of a checkpoint folder that describe its weights (everything else, e.g. optimizer.pt, rng_state.pth,
# scheduler.pt, trainer_state.json, training_args.bin, is a trainer's state and is not copied)
MODEL_FILES = re.compile(r"^(config\.json|generation_config\.json|model\.safetensors\.index\.json|"
                         r"special_tokens_map\.json|added_tokens\.json|merges\.txt|vocab\.(json|txt)|"
                         r"chat_template\.(jinja|json)|(video_)?(pre)?processor_config\.json|"
                         r".*tokeniz.*\.(json|model|py)|"
                         r".*\.tiktoken|(sentencepiece|spiece|tokenizer)\.model|"
                         r"(configuration|modeling|processing)_.*\.py)$")


class CheckpointError(UserError):
    """A checkpoint folder, file or tensor is missing, corrupt or does not match."""


class Checkpoint:
    """Lazy, memory-mapped view of one HF checkpoint folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handles: dict[Path, object] = {}
        self._mapped: dict[Path, MappedFile] = {}
        if not self.path.is_dir():
            found = "no such folder" if not self.path.exists() else "a file"
            raise CheckpointError(f"{self.path}: not a checkpoint folder ({found}); expected a Hugging Face "
                                  f"model folder with {SINGLE_FILE} or {INDEX_FILE}")
        index = self.path / INDEX_FILE
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
            self.files = {name: self.path / file for name, file in weight_map.items()}
        elif (self.path / SINGLE_FILE).exists():
            self.files = {}
            for name in self._open(self.path / SINGLE_FILE).keys():
                self.files[name] = self.path / SINGLE_FILE
        else:
            raise CheckpointError(f"{self.path}: no {SINGLE_FILE} or {INDEX_FILE}")
        for file in sorted(set(self.files.values())):
            if not file.exists():
                raise CheckpointError(f"{self.path}: shard {file.name} listed in {INDEX_FILE} is missing")

    def _open(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(str(file), framework="pt", device="cpu")
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"{file}: cannot read safetensors file (truncated or corrupt?): {exc}") from None
        return self._handles[file]

    @property
    def config(self) -> dict:
        config = self.path / "config.json"
        try:
            return json.loads(config.read_text()) if config.exists() else {}
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{config}: not valid JSON (line {exc.lineno}: {exc.msg})") from None

    def names(self) -> list[str]:
        return list(self.files)

    def _file_of(self, name: str) -> Path:
        if name not in self.files:
            raise CheckpointError(f"{self.path}: tensor {name!r} not found")
        return self.files[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self._file_of(name)).get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """The safetensors dtype of one tensor from its file's header ("BF16", "F32", ...)."""
        return self._open(self._file_of(name)).get_slice(name).get_dtype()

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from its (memory-mapped) file."""
        file = self._file_of(name)
        try:
            return self._open(file).get_tensor(name)
        except SafetensorError as exc:
            raise CheckpointError(f"{file}: cannot read tensor {name!r}: {exc}") from None

    def _map(self, file: Path) -> MappedFile:
        if file not in self._mapped:
            self._open(file)  # a damaged file fails here, with the message of every other read
            try:
                self._mapped[file] = MappedFile(file)
            except (OSError, ValueError, KeyError, struct.error) as exc:
                raise CheckpointError(f"{file}: cannot read safetensors header (truncated or corrupt?): "
                                      f"{exc}") from None
        return self._mapped[file]

    def location(self, name: str) -> tuple[Path, int]:
        """(file, byte offset of the tensor's data in it)."""
        file = self._file_of(name)
        return file, self._map(file).entries[name].offset

    def stack(self, names: Sequence[str]) -> torch.Tensor:
        """[B, *shape] of the named tensors (one shape and dtype), in this order: a view of the
        memory-mapped file when they lie in one file at equal distances (same-kind modules of
        successive layers, batched by ``layout_batches``), else a stacked copy."""
        files = {self._file_of(name) for name in names}
        if len(files) == 1:
            view = self._map(files.pop()).stack(names)
            if view is not None:
                return view
        return torch.stack([self.get(name) for name in names])

    def will_need(self) -> None:
        """Ask the kernel to read every file of the checkpoint into the page cache in the
        background (a later read then waits less, or not at all)."""
        for file in sorted(set(self.files.values())):
            self._map(file).will_need()


def select_matrices(ckpt: Checkpoint, include: str = DEFAULT_INCLUDE,
                    exclude: str | None = DEFAULT_EXCLUDE) -> list[str]:
    """Names of the 2-D tensors whose name matches ``include`` and not ``exclude`` (regexes)."""
    keep, drop = re.compile(include), re.compile(exclude) if exclude else None
    return [name for name in ckpt.names()
            if keep.search(name) and not (drop and drop.search(name)) and len(ckpt.shape(name)) == 2]


def check_compatible(base: Checkpoint, other: Checkpoint, names: Iterable[str]) -> None:
    """Same architecture (config model_type) and the same shape for every named tensor."""
    a, b = base.config.get("model_type"), other.config.get("model_type")
    if a and b and a != b:
        raise CheckpointError(f"{other.path}: model_type {b!r} differs from {base.path}'s {a!r}")
    for name in names:
        if name not in other.files:
            raise CheckpointError(f"{other.path}: tensor {name!r} (present in {base.path}) is missing")
        if other.shape(name) != base.shape(name):
            raise CheckpointError(f"{other.path}: tensor {name!r} has shape {other.shape(name)}, "
                                  f"{base.path} has {base.shape(name)}")


def check_shapes(ckpt: Checkpoint, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Every tensor named in ``shapes`` is in ``ckpt`` with that shape (``source`` names
    where the expected shapes come from, e.g. a trajectory file)."""
    for name, shape in shapes.items():
        if name not in ckpt.files:
            raise CheckpointError(f"{ckpt.path}: tensor {name!r} (tracked in {source}) is missing")
        if tuple(ckpt.shape(name)) != tuple(shape):
            raise CheckpointError(f"{ckpt.path}: tensor {name!r} has shape {ckpt.shape(name)}, "
                                  f"{source} expects {tuple(shape)} (another model?)")


def module_kind(name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'self_attn.q_proj'."""
    match = re.search(r"\.layers\.\d+\.(.*)\.weight$", name)
    return match.group(1) if match else name


def layer_index(name: str) -> int | None:
    match = re.search(r"\.layers\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def shape_batches(shapes: Mapping[str, tuple[int, ...]], max_batch_bytes: int = 1 << 30) -> list[list[str]]:
    """Modules of one shape in batches of at most ``max_batch_bytes`` (the fp32 size of
    one operand), ordered by module kind then layer within a shape, shapes in first-seen
    order. The same shapes give the same batches on every rank."""
    by_shape: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for name, shape in shapes.items():
        by_shape[tuple(shape)].append(name)
    batches = []
    for shape, group in by_shape.items():
        per_batch = max(1, max_batch_bytes // (4 * math.prod(shape)))
        group = sorted(group, key=lambda n: (module_kind(n), layer_index(n) or 0, n))
        batches += [group[i:i + per_batch] for i in range(0, len(group), per_batch)]
    return batches


def layout_batches(ckpt: Checkpoint, names: Iterable[str], max_batch_bytes: int = 1 << 30) -> list[list[str]]:
    """Batches of same-shaped modules for ``delta_svd`` that ``ckpt.stack`` serves as views of
    its file: the modules of one kind (``module_kind``), shape and dtype in one file, in file
    order, cut where the distance between successive ones changes, and into chunks of at
    most ``max_batch_bytes`` (the fp32 size of one operand). Batches in file order of their
    first module. A model whose layers hold the same tensors gives one run per kind and file."""
    groups: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
    for name in names:
        file, offset = ckpt.location(name)
        groups[(file, module_kind(name), ckpt.shape(name), ckpt.dtype(name))].append((offset, name))
    runs: list[tuple[tuple[Path, int], list[str]]] = []
    for (file, _, shape, _), members in groups.items():
        members.sort()
        per_batch = max(1, max_batch_bytes // (4 * math.prod(shape)))
        run: list[tuple[int, str]] = []
        for offset, name in members:
            if len(run) >= 2 and offset - run[-1][0] != run[1][0] - run[0][0] or len(run) == per_batch:
                runs.append(((file, run[0][0]), [n for _, n in run]))
                run = []
            run.append((offset, name))
        runs.append(((file, run[0][0]), [n for _, n in run]))
    return [batch for _, batch in sorted(runs, key=lambda r: (str(r[0][0]), r[0][1]))]


def write_checkpoint(base: Checkpoint, out: str | Path, replaced: Mapping[str, torch.Tensor],
                     extra_files: Mapping[str, str] | None = None, *, command: str | None = None) -> Path:
    """Write a copy of ``base`` to ``out`` with the tensors in ``replaced`` swapped in
    (each cast to the base tensor's dtype), keeping the shard layout and copying the
    files that belong to the weights (``MODEL_FILES``: config, generation config,
    tokenizer, shard index, remote code), never a trainer's state; ``extra_files`` maps
    file names to text to add (e.g. a JSON of what was done). Built in a temporary
    folder beside ``out`` and renamed when whole (``atomic_folder``: an existing ``out``
    is replaced only when empty or marked as written by the same ``command``)."""
    out = Path(out)
    unknown = set(replaced) - set(base.files)
    if unknown:
        raise CheckpointError(f"{base.path}: cannot replace tensors it does not hold: {sorted(unknown)[:5]}")
    for name, tensor in replaced.items():
        if tuple(tensor.shape) != base.shape(name):
            raise CheckpointError(f"replacement for {name!r} has shape {tuple(tensor.shape)}, "
                                  f"expected {base.shape(name)} (that of {base.path})")
    with atomic_folder(out, command=command) as tmp:
        for item in base.path.iterdir():
            if item.is_file() and MODEL_FILES.match(item.name):
                shutil.copy2(item, tmp / item.name)
        by_file: dict[Path, list[str]] = defaultdict(list)
        for name, file in base.files.items():
            by_file[file].append(name)
        for file, names in by_file.items():
            tensors = {}
            for name in names:
                original = base.get(name)
                tensor = replaced.get(name, original)
                tensors[name] = tensor.detach().to("cpu", original.dtype).contiguous()
            save_file(tensors, str(tmp / file.name), metadata={"format": "pt"})
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return out
