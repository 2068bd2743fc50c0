"""Reading and writing result tables (.jsonl, .json, .csv, .parquet), atomically."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlsignals.io.atomic import atomic_path

TABLE_TYPES = (".jsonl", ".json", ".csv", ".parquet")


def check_table_path(path: str | Path) -> Path:
    """``path`` as a Path when its suffix is a table type we write, else ValueError."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_TYPES:
        raise ValueError(f"{path}: unsupported output type {path.suffix!r}; use one of {TABLE_TYPES}")
    return path


def read_table(path: str | Path, kind: str = "table") -> list[Any]:
    """The rows of a .jsonl, .json, .csv or .parquet file (a .json file may hold any
    JSON list). ``kind`` names the file in errors ("data", "scores", ...)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open() as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}: line {line_no} is not valid JSON ({exc.msg})") from None
        return rows
    if suffix == ".json":
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list")
        return rows
    if suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ValueError(f"{path}: unsupported {kind} file type {suffix!r}; use one of {TABLE_TYPES}")


def write_table(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write rows to ``path`` atomically (built under a temporary name beside it, renamed when whole)."""
    path = check_table_path(path)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
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
    return path


def table_columns(path: str | Path) -> set[str]:
    """Column names of an existing table, read from its header (the first row of a
    .jsonl/.json file, a .csv's header line, a .parquet's schema); empty when it has none."""
    path = check_table_path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(path).names)
        if suffix == ".csv":
            with path.open(newline="") as f:
                return set(next(csv.reader(f), []))
        if suffix == ".jsonl":
            with path.open() as f:
                first = json.loads(f.readline() or "null")
        else:
            rows = json.loads(path.read_text())
            first = rows[0] if isinstance(rows, list) and rows else None
    except (ValueError, OSError, ImportError):
        return set()
    return set(first) if isinstance(first, dict) else set()


def read_jsonl_tolerant(path: Path) -> Iterable[dict[str, Any]]:
    """Lines of a JSONL file that an interrupted writer may have cut short: a
    final partial line is dropped."""
    with path.open() as f:
        for line in f:
            if not line.endswith("\n"):
                return
            yield json.loads(line)
