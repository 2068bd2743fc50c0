"""The one rule for what a command writes, checked before any work starts.

- A folder output (``--out`` of demo, showcase, rank1, rank1-model, extrapolate,
  diff-report; ``output_dir`` of train) is written only when it does not exist, is
  empty, or carries the marker of the same command (``io.atomic.check_output``):
  "resume" continues it, ``overwrite`` replaces it; anything else is refused with one
  line and nothing changed. Folders written step by step (``incremental_output``) are
  marked incomplete while the run is on and complete at its end, hold a lock while a
  process writes them (``output_lock``: a second run into the same folder is refused
  at once), and lose their dead processes' temporaries (``.<name>.tmp-<pid>``) when a
  run starts.
- A table output (score's ``--out``, ``--ordered-data``) is replaced only with
  ``overwrite`` and only when its columns show that ``rlsignals score`` wrote it.
- Every output's nearest existing parent must be a writable folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from rlsignals.io.atomic import (
    check_output,
    clean_stale_temps,
    discard_if_unused,
    read_marker,
    remove_output,
    write_marker,
)
from rlsignals.io.errors import OutputExistsError, UsageError, UserError

LOCK = ".rlsignals-lock"


def check_writable(path: str | Path, flag: str) -> None:
    """The nearest existing folder above ``path`` must be a writable folder (``flag`` names the setting)."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: cannot be created, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot be written, folder {parent} is not writable")


def folder_output(out: str | Path, command: str, overwrite: bool, *, resume: bool = False,
                  flag: str = "--out") -> str:
    """``check_output`` of an output folder plus the writability check: "new", "resume" or "replace"."""
    check_writable(out, flag)
    try:
        return check_output(Path(out), command, overwrite=overwrite, resume=resume)
    except OutputExistsError as exc:
        raise OutputExistsError(f"{flag} {exc}") from None


def table_output(out: str | Path, flag: str, columns: set[str], overwrite: bool) -> Path:
    """A table file output of ``rlsignals score`` (see the module docstring)."""
    from rlsignals.io.tables import check_table_path, table_columns

    try:
        path = check_table_path(out)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    check_writable(path, flag)
    if path.is_dir():
        raise OutputExistsError(f"{flag} {path}: is a folder, expected a table file path")
    if path.exists():
        if not overwrite:
            raise OutputExistsError(f"{flag} {path}: exists; pass --overwrite to replace the output of an earlier "
                                    "`rlsignals score`, or choose another path")
        if not columns <= table_columns(path):
            raise OutputExistsError(f"{flag} {path}: --overwrite replaces only a table written by `rlsignals score` "
                                    f"(with columns {sorted(columns)}); this file is not one; nothing was changed")
    return path


@contextlib.contextmanager
def output_lock(folder: str | Path, flag: str = "--out") -> Iterator[None]:
    """Hold ``folder``'s lock (an flock on ``folder/.rlsignals-lock``, released by the kernel when
    the process dies, so a crash never leaves a stale lock); OutputExistsError at once when
    another process holds it."""
    path = Path(folder) / LOCK
    handle = open(path, "a+")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise OutputExistsError(f"{flag} {folder}: another rlsignals run (pid {holder}) is writing it; wait for "
                                    "it to finish or choose another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _remove_lock(folder: Path) -> None:
    (folder / LOCK).unlink(missing_ok=True)


@contextlib.contextmanager
def incremental_output(out: str | Path, command: str, overwrite: bool, *, resume: bool = False,
                       resume_incomplete: bool = False, keep_on_failure: bool | None = None,
                       flag: str = "--out") -> Iterator[str]:
    """An output folder written step by step by ``command``; yields "new", "resume" or "replace".

    Checked, locked and marked ``complete: false`` before the work, marked complete after
    it. ``resume``: a folder of the same command is continued; ``resume_incomplete``: only
    one whose run did not finish. A failed run leaves only what a resume needs: its folder
    is removed unless ``keep_on_failure`` (default: when the run could be resumed), and
    whenever it holds nothing but the marker. Under torchrun rank 0 checks, locks and marks
    the folder and every rank gets its verdict (the same error on every rank)."""
    from rlsignals.io.distributed import broadcast_object, rank_and_world

    rank, world = rank_and_world()
    with contextlib.ExitStack() as stack:
        verdict: tuple[str, str] = ("", "")
        if rank == 0:
            try:
                verdict = ("", stack.enter_context(_owned_output(out, command, overwrite, resume, resume_incomplete,
                                                                 keep_on_failure, flag)))
            except UserError as exc:
                verdict = (str(exc), "")
        error, state = broadcast_object(verdict, world)
        if error:
            raise OutputExistsError(error)
        yield state


@contextlib.contextmanager
def _owned_output(out: str | Path, command: str, overwrite: bool, resume: bool, resume_incomplete: bool,
                  keep_on_failure: bool | None, flag: str) -> Iterator[str]:
    """``incremental_output`` in the one process that owns the folder."""
    path = Path(out)
    if resume_incomplete and (read_marker(path) or {}).get("command") == command:
        resume = not read_marker(path).get("complete", True)
    state = folder_output(out, command, overwrite, resume=resume, flag=flag)
    keep = (resume or resume_incomplete or state == "resume") if keep_on_failure is None else keep_on_failure
    path.mkdir(parents=True, exist_ok=True)
    with output_lock(path, flag):
        if state == "replace":
            for entry in path.iterdir():
                if entry.name != LOCK:
                    _remove_entry(entry)
        clean_stale_temps(path)
        write_marker(path, command, complete=False)
        try:
            yield state
        except BaseException:
            _remove_lock(path)
            if not keep:
                remove_output(path, command)
            else:
                discard_if_unused(path)
            raise
        write_marker(path, command, complete=True)
        _remove_lock(path)


def _remove_entry(entry: Path) -> None:
    import shutil

    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()
