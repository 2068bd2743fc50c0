"""Reading and writing result tables (.jsonl, .json, .csv, .parquet), atomically."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable

TABLE_TYPES = (".jsonl", ".json", ".csv", ".parquet")


def check_table_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in TABLE_TYPES:
        raise ValueError(f"{path}: unsupported output type {path.suffix!r}; use one of {TABLE_TYPES}")
    return path


def write_table(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write rows to a temporary file beside ``path`` and rename it when whole."""
    path = check_table_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            with tmp.open("w", newline="") as f:
                if suffix == ".jsonl":
                    f.writelines(json.dumps(row) + "\n" for row in rows)
                elif suffix == ".json":
                    json.dump(rows, f, indent=1)
                else:
                    fields = list(dict.fromkeys(key for row in rows for key in row))
                    writer = csv.DictWriter(f, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_jsonl_tolerant(path: Path) -> Iterable[dict[str, Any]]:
    """Lines of a JSONL file that an interrupted writer may have cut short: a
    final partial line is dropped."""
    with path.open() as f:
        for line in f:
            if not line.endswith("\n"):
                return
            yield json.loads(line)
