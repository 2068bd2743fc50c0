"""The benchmark tables, generated from bench/results/*.json: the full table (docs/benchmarks.md)
and the README's headline table.

Each benchmark JSON may carry a top-level "readme_rows": a list of plain dicts
with exactly the string keys what, case, result, baseline (bench/common.py's
``readme_row`` makes one). Every row becomes one table row (columns what | case
| result | baseline | file); a JSON without "readme_rows", or with an empty
list, becomes a row saying so, so nothing is dropped silently. Files come in a fixed order (ORDER, by the
name before the first "-"; other names after, alphabetically), then one line per
file with the machine it was measured on (the "machine" dict that
bench/common.py's write_results records) and the file's "note", if any.

The headline table is the rows HEADLINE selects (per capability: the realistic case
against the best alternative a user has, and the worst case), each by its file, its
"what" text (whole) and a piece of its "case" text; a selector that matches no row, or
more than one, is an error, so a renamed case cannot drop out of the README silently.

Usage:
  python bench/readme_table.py                        print the full table (markdown) to stdout
  python bench/readme_table.py --check FILE [FILE]    exit 1 if a file's tables differ
  python bench/readme_table.py --write FILE [FILE]    replace the files' tables
A file's full table is the text between the lines START and END below, its headline
table the text between HEADLINE_START and HEADLINE_END; a file holds either or both.
Exit status: 0 done / up to date, 1 a table differs, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ORDER = ("angle_stats", "delta_svd", "checkpoint_rank1", "score_dataset", "train_step", "train_memory", "demo",
         "real_model")
COLUMNS = ("what", "case", "result", "baseline")
START = "<!-- bench-table:start -->"
END = "<!-- bench-table:end -->"
HEADLINE_START = "<!-- bench-headline:start -->"
HEADLINE_END = "<!-- bench-headline:end -->"
SCORE_VS_RELEASED = "score: prefix run once vs released batch-1 procedure"
RANK1_WHOLE = "`rlsignals rank1`, whole command (sigma1, u1, v1 of every module)"
# (file, "what", a piece of "case") of each headline row, in the README's order
HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("angle_stats-cpu.json", "`angle_stats`, cpp backend", "bf16, d = 4096, T = 64k"),
    ("score_dataset-cpu.json", SCORE_VS_RELEASED, "llama d=1024, 8 layers, prefix 1000"),
    ("delta_svd-cpu.json", "delta_svd top-1, tol 1e-4, vectors to tol too (default)",
     "mp1-1.5 (realistic: sigma1/sigma2 1.49, top direction 0.22% of energy), 4096x4096 bf16, B=2"),
    ("delta_svd-cpu.json", "delta_svd top-1, tol 1e-4, vectors to tol too (default)",
     "subulp (realistic: sigma1/sigma2 1.01, top direction 0.1% of energy), 4096x4096 bf16, B=2"),
    ("checkpoint_rank1-cpu.json", RANK1_WHOLE, "Qwen2.5-0.5B shapes"),
    ("checkpoint_rank1-cpu.json", RANK1_WHOLE, "Qwen2.5-7B shapes"),
    ("train_memory-cpu.json", "RL step memory and speed (`RLTrainer`)", "V = 151,936, random weights; 4 prompts"),
    ("train_step-cpu.json", "live angle signal in `rlsignals train`", "demo model"),
    ("demo-cpu.json", "`make demo`, whole run", ""),
    ("demo-study-cpu.json", "greedy accuracy, uniform RL", ""),
    ("demo-study-cpu.json", "GAIN-RL: steps to the same accuracy, uniform / GAIN-RL", ""),
    ("real_model-cpu.json", "real model: `score_dataset` (rlsignals score) vs the released batch-1 procedure", ""),
    ("real_model-cpu.json", "real model: Spearman(angle signal, sampled pass rate at the start)", ""),
    ("demo-smollm2-cpu.json", "real model: greedy accuracy (uniform RL run)", ""),
)
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


def _results(results_dir: Path) -> list[tuple[Path, dict]]:
    paths = sorted(results_dir.glob("*.json"), key=_order_key)
    if not paths:
        raise TableError(f"no *.json in {results_dir}")
    loaded = []
    for path in paths:
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise TableError(f"{path.name}: cannot read JSON ({err})") from None
        if not isinstance(payload, dict):
            raise TableError(f"{path.name}: top level is {type(payload).__name__}, expected an object")
        loaded.append((path, payload))
    return loaded


def _markdown(rows: list[list[str]], machines: list[str]) -> str:
    lines = ["| what | case | result | baseline | file |", "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + ["", "Measured on:", "", *machines]) + "\n"


def build_table(results_dir: Path) -> str:
    """Markdown table of every readme row in results_dir/*.json, then the machine lines."""
    loaded = _results(results_dir)
    return _markdown([row for path, payload in loaded for row in _rows(path, payload)],
                     [machine_line(path, payload) for path, payload in loaded])


def build_headline(results_dir: Path, selectors=None) -> str:
    """The rows ``selectors`` (default HEADLINE) pick, in their order, then the machine lines of
    their files; TableError when a selector matches no row or several."""
    selectors = HEADLINE if selectors is None else selectors
    loaded = {path.name: (path, payload) for path, payload in _results(results_dir)}
    rows, files = [], []
    for name, what, case in selectors:
        if name not in loaded:
            raise TableError(f"headline row ({what!r}, {case!r}): no {name} in {results_dir}")
        path, payload = loaded[name]
        found = [row for row in _rows(path, payload) if row[0] == _cell(what) and _cell(case) in row[1]]
        if len(found) != 1:
            raise TableError(f"{name}: the headline selector ({what!r}, {case!r}) matches {len(found)} rows, "
                             "expected one")
        rows.append(found[0])
        files += [name] if name not in files else []
    return _markdown(rows, [machine_line(*loaded[name]) for name in files])


def split_readme(text: str, name: str, start_line: str = START, end_line: str = END) -> tuple[str, str, str]:
    """(text up to and including the start line, the table between, the end line onwards)."""
    start, end = text.find(start_line), text.find(end_line)
    if start < 0 or end < 0 or end < start:
        raise TableError(f"{name}: needs the lines {start_line} and {end_line} (in that order) around the table")
    head_end = text.find("\n", start)
    head_end = len(text) if head_end < 0 or head_end > end else head_end + 1
    return text[:head_end], text[head_end:end], text[end:]


def refresh(text: str, name: str, results_dir: Path) -> str:
    """``text`` with each of its tables (full, headline) rebuilt; TableError when it holds neither."""
    tables = [(START, END, build_table), (HEADLINE_START, HEADLINE_END, build_headline)]
    present = [(a, b, build) for a, b, build in tables if a in text or b in text]
    if not present:
        split_readme(text, name)  # the error names the full table's markers
    for start_line, end_line, build in present:
        head, _, tail = split_readme(text, name, start_line, end_line)
        text = head + build(results_dir) + tail
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of benchmark JSON files")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", type=Path, nargs="+", metavar="FILE", help="exit 1 if a file's tables differ")
    action.add_argument("--write", type=Path, nargs="+", metavar="FILE", help="replace the files' tables")
    args = parser.parse_args(argv)
    try:
        if args.check is None and args.write is None:
            sys.stdout.write(build_table(args.results))
            return 0
        status = 0
        for path in args.check or args.write:
            try:
                text = path.read_text()
            except OSError as err:
                raise TableError(f"cannot read {path}: {err.strerror}") from None
            fresh = refresh(text, str(path), args.results)
            if args.check is not None:
                if fresh != text:
                    print(f"{path}: benchmark table differs from {args.results}/*.json; "
                          f"run python bench/readme_table.py --write {path}", file=sys.stderr)
                    status = 1
                else:
                    print(f"{path}: benchmark table is up to date")
                continue
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(fresh)
            os.replace(tmp, path)
            print(f"{path}: benchmark table {'unchanged' if fresh == text else 'replaced'}")
        return status
    except TableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
