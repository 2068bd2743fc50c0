"""Outputs that appear whole or not at all, and never over what we did not write.

Every file or folder is built under a temporary name beside its target,
``.<name>.tmp-<pid>``, and renamed into place when whole; an error removes the
temporary. A process killed mid-write leaves its temporary behind: the next
write of the same target removes temporaries whose process is dead
(``clean_stale``; ``clean_stale_temps`` does it for a whole folder we own).

Folders written by a command carry a marker file, ``.rlsignals-output.json``
(``{"written_by": "rlsignals", "command": ..., "complete": ...}``). An existing
folder is only ever replaced when it is empty or carries the marker of the same
command; ``check_output`` is the command line's stricter rule (an existing
non-empty ``--out`` is refused unless ``--overwrite``, and even then only a
folder of the same command is replaced).

API (stable: other modules build on it):
    atomic_write(path, mode="w", **open_kwargs)   context manager -> open file
    atomic_path(path)                             context manager -> temporary Path (for writers that take a path)
    write_text_atomic(path, text)                 -> path
    write_json_atomic(path, payload, indent=1)    -> path
    atomic_folder(out, *, command=None)           context manager -> temporary folder
    clean_stale(path) / clean_stale_temps(folder) -> removed paths
    read_marker(folder) / write_marker(folder, command, *, complete=True)
    check_output(out, command, *, overwrite=False, resume=False) -> "new" | "resume" | "replace"
    remove_output(out, command)                   remove a folder marked by ``command``
    discard_if_unused(out)                        remove a folder holding nothing but its marker
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rlsignals.io.errors import OutputExistsError

MARKER = ".rlsignals-output.json"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")


def temp_path(path: str | Path, kind: str = "tmp") -> Path:
    """``.<name>.<kind>-<pid>`` beside ``path`` (kind "tmp" for what is being built, "old" for what it replaces)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _stale(entry: Path, name: str | None = None) -> bool:
    match = _TEMP.match(entry.name)
    return bool(match) and (name is None or match["name"] == name) and int(match["pid"]) != os.getpid() \
        and not pid_alive(int(match["pid"]))


def clean_stale(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>``) left by dead processes."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = [entry for entry in path.parent.iterdir() if _stale(entry, path.name)]
    for entry in removed:
        _remove(entry)
    return removed


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove every temporary of a dead process directly inside ``folder`` (a folder this package wrote)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [entry for entry in folder.iterdir() if _stale(entry)]
    for entry in removed:
        _remove(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` (parents created); when the block
    ends without an error the file there replaces ``path`` (``os.replace``),
    otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the writer of {path} produced no file")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` that appears whole or not at all (mode "w" or "wb";
    the data is flushed to disk before the rename)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any, indent: int | None = 1) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=indent) + "\n")


def read_marker(folder: str | Path) -> dict | None:
    """The marker of a folder an rlsignals command wrote, or None (no marker, or not ours)."""
    marker = Path(folder) / MARKER
    try:
        payload = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and payload.get("written_by") == "rlsignals" else None


def write_marker(folder: str | Path, command: str, *, complete: bool = True) -> Path:
    """Mark ``folder`` as written by ``rlsignals <command>`` (``complete=False`` while an incremental run is on)."""
    return write_json_atomic(Path(folder) / MARKER, {"written_by": "rlsignals", "command": command,
                                                     "complete": complete})


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _owned_by(path: Path, command: str | None) -> bool:
    marker = read_marker(path)
    return command is not None and marker is not None and marker.get("command") == command


def _check_replaceable(out: Path, command: str | None) -> None:
    if out.exists() and not _is_empty_dir(out) and not _owned_by(out, command):
        what = "a file" if not out.is_dir() else "a folder not written by " + (
            f"`rlsignals {command}`" if command else "this writer")
        raise OutputExistsError(f"{out}: exists and is {what}; refusing to replace it (choose another output path)")


@contextlib.contextmanager
def atomic_folder(out: str | Path, *, command: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` (marked as written by ``command`` when
    given); when the block ends without an error it replaces ``out``, otherwise it is
    removed and ``out`` is left as it was. An existing ``out`` is replaced only when
    it is an empty folder or carries the marker of the same ``command``; anything
    else raises ``OutputExistsError`` (checked before the block runs, and again at
    the end)."""
    out = Path(out)
    _check_replaceable(out, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = temp_path(out)
    _remove(tmp)
    tmp.mkdir()
    try:
        if command is not None:
            write_marker(tmp, command)
        yield tmp
        _check_replaceable(out, command)
        if out.exists():
            old = temp_path(out, "old")
            out.rename(old)
            tmp.rename(out)
            _remove(old)
        else:
            tmp.rename(out)
    finally:
        _remove(tmp)


def check_output(out: str | Path, command: str, *, overwrite: bool = False, resume: bool = False) -> str:
    """The command line's rule for an output folder ``--out``, checked before any work:
    "new" when it does not exist or is empty; "resume" when ``resume`` and it carries
    the marker of ``command`` (and ``overwrite`` is off); "replace" when ``overwrite``
    and it carries that marker. Anything else raises ``OutputExistsError``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: is a file, expected a folder (or a path that does not exist)")
    if not out.exists() or _is_empty_dir(out):
        return "new"
    owned = _owned_by(out, command)
    if owned and resume and not overwrite:
        return "resume"
    if not overwrite:
        hint = f"pass --overwrite to replace this output of `rlsignals {command}`" if owned \
            else "choose a new or empty folder"
        raise OutputExistsError(f"{out}: exists and is not empty; {hint}")
    if not owned:
        marker = read_marker(out)
        by = f"`rlsignals {marker.get('command')}`" if marker else "something else (no rlsignals marker " + MARKER + ")"
        raise OutputExistsError(f"{out}: --overwrite replaces only a folder written by `rlsignals {command}`; "
                                f"this one was written by {by}; nothing was changed")
    return "replace"


def remove_output(out: str | Path, command: str) -> None:
    """Remove a folder that carries the marker of ``command`` (``--overwrite`` of an incremental command)."""
    out = Path(out)
    if not _owned_by(out, command):
        raise OutputExistsError(f"{out}: not a folder written by `rlsignals {command}`; refusing to remove it")
    shutil.rmtree(out)


def discard_if_unused(out: str | Path) -> bool:
    """Remove ``out`` when it holds nothing but its marker and dead temporaries (what a
    run that failed before its first result leaves); True when removed."""
    out = Path(out)
    if not out.is_dir() or read_marker(out) is None:
        return False
    clean_stale_temps(out)
    if any(entry.name != MARKER for entry in out.iterdir()):
        return False
    shutil.rmtree(out)
    return True
