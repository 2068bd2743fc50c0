"""Atomic writes: whole or nothing, temporaries of dead processes cleaned, and
folders replaced only when they are the same command's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rlsignals.io.atomic import (
    MARKER,
    atomic_folder,
    atomic_path,
    atomic_write,
    check_output,
    clean_stale,
    clean_stale_temps,
    discard_if_unused,
    read_marker,
    remove_output,
    write_json_atomic,
    write_marker,
    write_text_atomic,
)
from rlsignals.io.errors import OutputExistsError, UserError
from rlsignals.io.tables import read_table, table_columns, write_table


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_atomic_write_is_whole_or_nothing(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_text_atomic(path, "first\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "first\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]
    with atomic_write(path, "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    write_json_atomic(tmp_path / "p.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "p.json").read_text()) == {"a": [1, 2]}
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_write(path, "a"):
            pass


def test_atomic_path_for_writers_that_take_a_path(tmp_path):
    path = tmp_path / "t.bin"
    with atomic_path(path) as tmp:
        assert tmp.name == f".t.bin.tmp-{os.getpid()}" and tmp.parent == tmp_path
        tmp.write_bytes(b"ok")
    assert path.read_bytes() == b"ok"
    with pytest.raises(FileNotFoundError, match="produced no file"):
        with atomic_path(tmp_path / "never.bin"):
            pass
    assert not (tmp_path / "never.bin").exists()


def test_stale_temporaries_of_dead_processes_only(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    stale_file = tmp_path / f".a.txt.tmp-{dead}"
    stale_dir = tmp_path / f".out.old-{dead}"
    live = tmp_path / f".a.txt.tmp-{alive}"
    user = tmp_path / ".a.txt.tmp-notes"  # not our pattern: never touched
    stale_file.write_text("x")
    stale_dir.mkdir()
    live.write_text("x")
    user.write_text("x")
    assert clean_stale(tmp_path / "a.txt") == [stale_file]
    assert stale_dir.exists()
    assert clean_stale_temps(tmp_path) == [stale_dir]
    assert live.exists() and user.exists()


def test_atomic_folder_replaces_only_the_same_commands_output(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out, command="diff-report") as tmp:
        (tmp / "report.json").write_text("{}")
    assert read_marker(out) == {"written_by": "rlsignals", "command": "diff-report", "complete": True}
    with atomic_folder(out, command="diff-report") as tmp:
        (tmp / "report.json").write_text('{"v": 2}')
    assert (out / "report.json").read_text() == '{"v": 2}'
    with pytest.raises(OutputExistsError, match="not written by `rlsignals extrapolate`"):
        with atomic_folder(out, command="extrapolate"):
            pytest.fail("the block must not run when the output cannot be replaced")
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        with atomic_folder(user):
            pass
    assert [p.name for p in user.iterdir()] == ["keep.txt"]
    with pytest.raises(KeyError):
        with atomic_folder(out, command="diff-report") as tmp:
            (tmp / "report.json").write_text("broken")
            raise KeyError("failed")
    assert (out / "report.json").read_text() == '{"v": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "user"]


def test_check_output_states(tmp_path):
    out = tmp_path / "out"
    assert check_output(out, "rank1") == "new"
    out.mkdir()
    assert check_output(out, "rank1") == "new"  # empty
    write_marker(out, "rank1", complete=False)
    (out / "trajectory.json").write_text("{}")
    assert check_output(out, "rank1", resume=True) == "resume"
    assert check_output(out, "rank1", overwrite=True, resume=True) == "replace"
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        check_output(out, "rank1")
    with pytest.raises(OutputExistsError, match="written by `rlsignals rank1`; nothing was changed"):
        check_output(out, "demo", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output(tmp_path / "file", "rank1")
    assert isinstance(OutputExistsError("x"), UserError)
    remove_output(out, "rank1")
    assert not out.exists()


def test_discard_if_unused_keeps_what_resume_needs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_marker(out, "rank1", complete=False)
    (out / f".record-0000.safetensors.tmp-{dead_pid()}").write_text("x")
    assert discard_if_unused(out) and not out.exists()
    out.mkdir()
    write_marker(out, "rank1", complete=False)
    (out / "record-0000.safetensors").write_text("x")
    assert not discard_if_unused(out) and (out / MARKER).exists()
    user = tmp_path / "user"
    user.mkdir()
    assert not discard_if_unused(user) and user.exists()  # no marker: not ours


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_tables_round_trip_atomically_and_report_their_columns(tmp_path, suffix):
    rows = [{"index": 0, "score": 1.5}, {"index": 1, "score": -0.5}]
    path = write_table(rows, tmp_path / f"t{suffix}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    got = read_table(path)
    assert [{k: float(v) for k, v in r.items()} for r in got] == [{k: float(v) for k, v in r.items()} for r in rows]
    assert table_columns(path) == {"index", "score"}
    (tmp_path / f"junk{suffix}").write_text("not a table")
    assert table_columns(tmp_path / f"junk{suffix}") <= {"not a table"}
