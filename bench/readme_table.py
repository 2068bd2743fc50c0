"""The README's benchmark table, generated from bench/results/*.json.

Each benchmark JSON may carry a top-level "readme_rows": a list of plain dicts
with exactly the string keys what, case, result, baseline (bench/common.py's
``readme_row`` makes one). Every row becomes one table row (columns what | case
| result | baseline | file); a JSON without "readme_rows", or with an empty
list, becomes a row saying so, so nothing is dropped silently. Files come in a fixed order (ORDER, by the
name before the first "-"; other names after, alphabetically), then one line per
file with the machine it was measured on (the "machine" dict that
bench/common.py's write_results records) and the file's "note", if any.

Usage:
  python bench/readme_table.py                    print the table (markdown) to stdout
  python bench/readme_table.py --check README.md  exit 1 if README's table differs
  python bench/readme_table.py --write README.md  replace README's table
README's table is the text between the lines START and END below. Exit status:
0 done / up to date, 1 README's table differs, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ORDER = ("angle_stats", "delta_svd", "checkpoint_rank1", "score_dataset", "train_step", "demo")
COLUMNS = ("what", "case", "result", "baseline")
START = "<!-- bench-table:start -->"
END = "<!-- bench-table:end -->"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


class TableError(Exception):
    """Bad input: a file, row or README that the table cannot be built from; one line."""


def _order_key(path: Path) -> tuple[int, str]:
    prefix = path.stem.split("-", 1)[0]
    return (ORDER.index(prefix) if prefix in ORDER else len(ORDER), path.name)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(path: Path, payload: dict) -> list[list[str]]:
    """Table rows of one results file: its readme_rows, or one row saying it has none."""
    file_cell = f"`{path.name}`"
    rows = payload.get("readme_rows")
    if rows is not None and not isinstance(rows, list):
        raise TableError(f"{path.name}: readme_rows is {type(rows).__name__}, expected a list")
    if not rows:
        what = "no readme_rows in this file" if rows is None else "readme_rows is empty in this file"
        return [[path.stem.split("-", 1)[0], "-", what, "-", file_cell]]
    out = []
    for i, row in enumerate(rows):
        if not (isinstance(row, dict) and set(row) == set(COLUMNS) and all(isinstance(v, str) for v in row.values())):
            raise TableError(f"{path.name}: readme_rows[{i}] must be a dict of exactly the strings "
                             f"{', '.join(COLUMNS)}; got {row!r}")
        out.append([_cell(row[k]) for k in COLUMNS] + [file_cell])
    return out


def machine_line(path: Path, payload: dict) -> str:
    """One line: the device, CPU threads, versions, commit and date of a results file, and its
    top-level "note" (how it was run) if it has one."""
    machine = payload.get("machine")
    note = f"; note: {_cell(payload['note'])}" if isinstance(payload.get("note"), str) and payload["note"] else ""
    if not isinstance(machine, dict):
        return f"- `{path.name}`: machine not recorded{note}"
    parts = [str(machine.get("device") or "device not recorded")]
    if machine.get("cpu_threads") is not None:
        parts.append(f"{machine['cpu_threads']} CPU threads")
    parts += [f"{name} {machine[key]}" for key, name in (("torch", "torch"), ("cuda", "CUDA"), ("triton", "triton"),
                                                         ("rlsignals", "rlsignals"), ("git_commit", "commit"))
              if machine.get(key)]
    if machine.get("date"):
        parts.append(str(machine["date"]))
    return f"- `{path.name}`: {', '.join(parts)}{note}"


def build_table(results_dir: Path) -> str:
    """Markdown table of every readme row in results_dir/*.json, then the machine lines."""
    paths = sorted(results_dir.glob("*.json"), key=_order_key)
    if not paths:
        raise TableError(f"no *.json in {results_dir}")
    rows, machines = [], []
    for path in paths:
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise TableError(f"{path.name}: cannot read JSON ({err})") from None
        if not isinstance(payload, dict):
            raise TableError(f"{path.name}: top level is {type(payload).__name__}, expected an object")
        rows += _rows(path, payload)
        machines.append(machine_line(path, payload))
    lines = ["| what | case | result | baseline | file |", "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + ["", "Measured on:", "", *machines]) + "\n"


def split_readme(text: str, name: str) -> tuple[str, str, str]:
    """(text up to and including the START line, the table between, END line onwards)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise TableError(f"{name}: needs the lines {START} and {END} (in that order) around the table")
    head_end = text.find("\n", start)
    head_end = len(text) if head_end < 0 or head_end > end else head_end + 1
    return text[:head_end], text[head_end:end], text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of benchmark JSON files")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", type=Path, metavar="README", help="exit 1 if README's table differs")
    action.add_argument("--write", type=Path, metavar="README", help="replace README's table")
    args = parser.parse_args(argv)
    try:
        table = build_table(args.results)
        if args.check is None and args.write is None:
            sys.stdout.write(table)
            return 0
        readme = args.check or args.write
        try:
            text = readme.read_text()
        except OSError as err:
            raise TableError(f"cannot read {readme}: {err.strerror}") from None
        head, current, tail = split_readme(text, str(readme))
        if args.check is not None:
            if current != table:
                print(f"{readme}: benchmark table differs from {args.results}/*.json; "
                      f"run python bench/readme_table.py --write {readme}", file=sys.stderr)
                return 1
            print(f"{readme}: benchmark table is up to date")
            return 0
        tmp = readme.with_name(readme.name + ".tmp")
        tmp.write_text(head + table + tail)
        os.replace(tmp, readme)
        print(f"{readme}: benchmark table {'unchanged' if current == table else 'replaced'}")
        return 0
    except TableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
