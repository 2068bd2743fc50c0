"""Tensors of a safetensors file as views of its memory map, several at once.

A safetensors file is an 8-byte little-endian header length N, a JSON header giving each
tensor's dtype, shape and [begin, end) byte range, and the data from byte 8 + N on. Files
written by ``save_file`` / ``save_pretrained`` store tensors in name order, so the same
module of successive decoder layers (``model.layers.<i>.mlp.up_proj.weight``) lies at
equal distances when the layers hold the same tensors. ``MappedFile.stack`` then returns
the whole run as one [B, m, n] view with a batch stride of that distance: no copy, the
pages read from the page cache (or the disk) when a kernel first touches them.

The map is private (copy-on-write; nothing is ever written to the file) and lives as long
as any view of it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


class Entry(NamedTuple):
    """Where a tensor's data lies in its file."""

    dtype: str                # safetensors dtype ("BF16", ...)
    shape: tuple[int, ...]
    offset: int               # byte offset of its data from the start of the file
    nbytes: int


class MappedFile:
    """The header of one safetensors file and, on first use, a private memory map of it."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        start = 8 + length
        self.entries = {name: Entry(info["dtype"], tuple(info["shape"]), start + info["data_offsets"][0],
                                    info["data_offsets"][1] - info["data_offsets"][0])
                        for name, info in header.items() if name != "__metadata__"}
        self._storage: torch.UntypedStorage | None = None

    def storage(self) -> torch.UntypedStorage:
        if self._storage is None:
            self._storage = torch.UntypedStorage.from_file(str(self.path), shared=False,
                                                           nbytes=os.path.getsize(self.path))
        return self._storage

    def stack(self, names: Sequence[str]) -> torch.Tensor | None:
        """[B, *shape] view of the named tensors, in this order, when they share dtype and
        shape and lie at one positive, element-aligned distance from each other (B = 1: any
        tensor whose data is element-aligned); None otherwise."""
        entries = [self.entries[name] for name in names]
        first = entries[0]
        dtype = DTYPES.get(first.dtype)
        if dtype is None or any(e.dtype != first.dtype or e.shape != first.shape for e in entries):
            return None
        size = dtype.itemsize
        steps = {b.offset - a.offset for a, b in zip(entries, entries[1:])}
        step = steps.pop() if len(steps) == 1 else (first.nbytes if not steps else None)
        if step is None or step < first.nbytes or step % size or first.offset % size:
            return None
        inner = [1] * len(first.shape)
        for i in range(len(first.shape) - 2, -1, -1):
            inner[i] = inner[i + 1] * first.shape[i + 1]
        view = torch.empty(0, dtype=dtype)
        return view.set_(self.storage(), first.offset // size, (len(entries), *first.shape),
                         (step // size, *inner))

    def will_need(self) -> None:
        """Ask the kernel to read the file into the page cache in the background."""
        if hasattr(os, "posix_fadvise"):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
