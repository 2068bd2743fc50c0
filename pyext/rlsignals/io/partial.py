"""A table written row by row that a rerun resumes: ``<out>.partial[.rankR].jsonl``.

Its first line is a header ``{"rlsignals_partial": <fingerprint of the run's settings>}``;
each later line a finished row. A rerun with the same fingerprint keeps the rows (and
skips their work); the file of a run that failed records it in its header (``failed``),
so that a rerun with corrected settings replaces it, while the file of an interrupted
run with other settings is refused rather than lost silently.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from rlsignals.io.errors import UserError
from rlsignals.io.tables import read_jsonl_tolerant, write_table


def fingerprint(**parts: Any) -> str:
    """16 hex digits identifying a run's settings."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def partial_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(out.name + (f".partial.rank{rank}.jsonl" if world > 1 else ".partial.jsonl"))


def read_partial(partial: Path, key: str, restart: bool, index: str = "index") -> dict[Any, dict]:
    """Rows already finished by an earlier run with the same ``key`` (row[index] -> row);
    see the module docstring for the files of failed and interrupted runs."""
    if restart or not partial.exists():
        return {}
    try:
        lines = iter(read_jsonl_tolerant(partial))
        header = next(lines, None)
        kept = list(lines) if isinstance(header, dict) and header.get("rlsignals_partial") == key else []
    except json.JSONDecodeError as exc:
        raise UserError(f"{partial}: a line is not valid JSON ({exc.msg}); delete it or pass restart=True "
                        "(--restart)") from None
    if not isinstance(header, dict) or "rlsignals_partial" not in header:
        raise UserError(f"{partial}: not a partial file of `rlsignals score`; move it away or pass restart=True "
                        "(--restart)")
    if header["rlsignals_partial"] == key:
        return {row[index]: row for row in kept}
    if header.get("failed"):
        warnings.warn(f"{partial}: discarding the partial results of a failed run with other settings "
                      f"({header['failed']})", RuntimeWarning, stacklevel=3)
        return {}
    raise UserError(f"{partial} holds results of an interrupted run with other settings; rerun with those settings "
                    "to resume it, or pass restart=True (--restart) to discard them")


def start_partial(partial: Path, key: str, rows: list[dict]) -> None:
    """(Re)write the file whole: the header and the rows kept, without a line an interruption cut off."""
    write_table([{"rlsignals_partial": key}, *rows], partial)


def read_rows(partial: Path) -> list[dict]:
    return list(read_jsonl_tolerant(partial))[1:]


def record_failure(partial: Path, key: str, exc: BaseException) -> None:
    """Mark the file as that of a failed run (or remove it when it holds no row)."""
    try:
        rows = read_rows(partial) if partial.exists() else []
        if not rows:
            partial.unlink(missing_ok=True)
            return
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        write_table([{"rlsignals_partial": key, "failed": reason}, *rows], partial)
    except (OSError, ValueError):  # the original error is the one to report
        pass
