"""bench/readme_table.py: the README's benchmark table built from results JSON (synthetic files), and
the README's table matching the committed results."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "readme_table.py"


@pytest.fixture(scope="module")
def table_mod():
    spec = importlib.util.spec_from_file_location("bench_readme_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MACHINE = {"date": "2026-12-02T00:00:00+00:00", "device": "CPU: Test CPU", "cpu": "Test CPU", "cpu_threads": 2,
           "python": "3.11.7", "torch": "2.13.0+cpu", "cuda": None, "triton": None, "rlsignals": "0.1.0",
           "git_commit": "abc1234"}


def row(what: str, result: str = "1 ms", case: str = "c", baseline: str = "b") -> dict:
    return {"what": what, "case": case, "result": result, "baseline": baseline}


def write(folder: Path, name: str, payload: dict) -> None:
    (folder / name).write_text(json.dumps(payload))


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    write(folder, "zeta_extra-cpu.json", {"machine": MACHINE, "readme_rows": [row("zeta")]})
    write(folder, "demo-cpu.json", {"claims": [], "note": "under\nload"})
    write(folder, "score_dataset-cpu.json", {"machine": MACHINE, "results": []})
    write(folder, "train_step-cpu.json", {"machine": MACHINE, "readme_rows": []})
    write(folder, "angle_stats-cpu.json", {"machine": MACHINE, "readme_rows": [row("a1", "x | y"), row("a2")]})
    write(folder, "angle_stats-H200.json", {"machine": {**MACHINE, "device": "NVIDIA H200", "cuda": "12.8"},
                                            "readme_rows": [row("a-gpu")]})
    (folder / "demo-cpu.txt").write_text("not json")
    return folder


def table_rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("| ")][2:]  # past the header and rule
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


def test_rows_in_file_order_and_none_dropped(table_mod, results):
    rows = table_rows(table_mod.build_table(results))
    assert [(r[0], r[4]) for r in rows] == [
        ("a-gpu", "`angle_stats-H200.json`"), ("a1", "`angle_stats-cpu.json`"), ("a2", "`angle_stats-cpu.json`"),
        ("score_dataset", "`score_dataset-cpu.json`"), ("train_step", "`train_step-cpu.json`"),
        ("demo", "`demo-cpu.json`"), ("zeta", "`zeta_extra-cpu.json`")]
    assert rows[3][2] == rows[5][2] == "no readme_rows in this file"
    assert rows[4][2] == "readme_rows is empty in this file"
    assert rows[1][2] == "x \\| y"  # a pipe inside a cell is escaped


def test_machine_lines(table_mod, results):
    table = table_mod.build_table(results)
    assert ("- `angle_stats-H200.json`: NVIDIA H200, 2 CPU threads, torch 2.13.0+cpu, CUDA 12.8, rlsignals 0.1.0, "
            "commit abc1234, 2026-12-02T00:00:00+00:00") in table
    assert "- `demo-cpu.json`: machine not recorded; note: under load\n" in table
    assert "- `score_dataset-cpu.json`: CPU: Test CPU, 2 CPU threads, torch 2.13.0+cpu, rlsignals 0.1.0, " in table


@pytest.mark.parametrize("bad", [[{"what": "x"}], [row("x") | {"extra": "y"}], [row("x") | {"result": 1.5}], "rows",
                                 {"what": "x"}])
def test_bad_rows_are_one_line_errors(table_mod, results, bad, capsys):
    write(results, "delta_svd-cpu.json", {"machine": MACHINE, "readme_rows": bad})
    assert table_mod.main(["--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "delta_svd-cpu.json" in err


def test_check_and_write(table_mod, results, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{table_mod.START}\n| old |\n{table_mod.END}\nafter\n")
    args = ["--results", str(results)]
    assert table_mod.main([*args, "--check", str(readme)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert table_mod.main([*args, "--write", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# Title\n\nbefore\n{table_mod.START}\n| what |")
    assert text.endswith(f"{table_mod.END}\nafter\n")
    assert table_mod.main([*args, "--check", str(readme)]) == 0
    assert table_mod.main([*args, "--write", str(readme)]) == 0 and readme.read_text() == text
    assert not list(tmp_path.glob("*.tmp"))


def test_stdout_is_the_table(table_mod, results, capsys):
    assert table_mod.main(["--results", str(results)]) == 0
    assert capsys.readouterr().out == table_mod.build_table(results)


@pytest.mark.parametrize("text", ["no markers\n", "<!-- bench-table:end -->\n<!-- bench-table:start -->\n"])
def test_missing_markers_refused(table_mod, results, tmp_path, capsys, text):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    for flag in ("--write", "--check"):
        assert table_mod.main(["--results", str(results), flag, str(readme)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "bench-table:start" in err
    assert readme.read_text() == text


def test_unreadable_json_is_an_error(table_mod, results, capsys):
    (results / "train_step-cpu.json").write_text("{not json")
    assert table_mod.main(["--results", str(results)]) == 2
    assert "train_step-cpu.json" in capsys.readouterr().err


def test_headline_rows_are_picked_in_their_order_each_exactly_once(table_mod, results, tmp_path):
    selectors = [("zeta_extra-cpu.json", "zeta", "c"), ("angle_stats-cpu.json", "a2", "")]
    rows = table_rows(table_mod.build_headline(results, selectors))
    assert [r[0] for r in rows] == ["zeta", "a2"]
    headline = table_mod.build_headline(results, selectors)
    assert "`angle_stats-H200.json`" not in headline and "- `zeta_extra-cpu.json`: " in headline
    write(results, "twice-cpu.json", {"machine": MACHINE, "readme_rows": [row("t"), row("t")]})
    for bad, count in (([("twice-cpu.json", "t", "")], 2), ([("angle_stats-cpu.json", "a", "")], 0)):
        with pytest.raises(table_mod.TableError, match=f"matches {count} rows, expected one"):
            table_mod.build_headline(results, bad)
    with pytest.raises(table_mod.TableError, match="no missing-cpu.json"):
        table_mod.build_headline(results, [("missing-cpu.json", "x", "")])


def test_a_file_with_both_tables_gets_both(table_mod, results, tmp_path, monkeypatch):
    monkeypatch.setattr(table_mod, "HEADLINE", (("zeta_extra-cpu.json", "zeta", ""),))
    page = tmp_path / "page.md"
    page.write_text(f"{table_mod.HEADLINE_START}\nold\n{table_mod.HEADLINE_END}\n\n{table_mod.START}\nold\n"
                    f"{table_mod.END}\n")
    assert table_mod.main(["--results", str(results), "--write", str(page)]) == 0
    text = page.read_text()
    assert table_mod.build_headline(results) in text and table_mod.build_table(results) in text
    assert table_mod.main(["--results", str(results), "--check", str(page)]) == 0


def test_the_tables_are_the_ones_the_committed_results_give():
    """README.md's headline table and docs/benchmarks.md's full table quote bench/results/*.json
    as they are: rerun `python bench/readme_table.py --write README.md docs/benchmarks.md`
    after a benchmark."""
    root = SCRIPT.parents[1]
    done = subprocess.run([sys.executable, str(SCRIPT), "--check", str(root / "README.md"),
                           str(root / "docs" / "benchmarks.md")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
