"""bench/gpu_check.py (the one-command GPU check), bench/gpu_verdicts.py (how it judges each step)
and bench/gpu_tests.py (its test selection).

The GPU steps themselves need a device; here the script must parse, skip every
GPU step with its reason, say so in its exit status and write its summary; its
pieces (test selection, time limits, targets, exit status) are checked directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPT = BENCH / "gpu_check.py"
SELECTOR = BENCH / "gpu_tests.py"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


verdicts = _load(BENCH / "gpu_verdicts.py")  # first: gpu_check imports it by name
gpu_check = _load(SCRIPT)


def test_help_lists_every_step_and_exit_status():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for name in gpu_check.STEP_NAMES:
        assert f"\n  {name} " in out
    for code in gpu_check.EXIT_CODES:
        assert f"\n  {code}  " in out


@pytest.mark.parametrize("argv, message", [
    (["--skip", "install,nosuch"], "unknown step nosuch"),
    (["--skip", "env"], "--skip env"),
    (["--time-limit", "0"], "--time-limit must be positive"),
])
def test_bad_arguments_are_usage_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_step_limits_add_up_to_the_default_time_limit():
    assert sum(step.budget_s for step in gpu_check.STEPS) == gpu_check.DEFAULT_TIME_LIMIT_S
    assert gpu_check.step_timeout(300.0, [100.0, 40.0]) == 160.0


def test_without_a_device_every_gpu_step_is_skipped_with_its_reason(tmp_path):
    """The whole script on the CPU (install and build skipped to stay quick): exit 3, a summary, the reasons."""
    out = tmp_path / "check"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--skip", "install,build",
                           "--time-limit", "2000"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_code"] == 3 and summary["device"] == "no CUDA device"
    status = {s["step"]: (s["status"], s["text"]) for s in summary["steps"]}
    assert list(status) == list(gpu_check.STEP_NAMES)
    assert status["env"][0] == "passed"
    assert status["install"] == status["build"] == ("skipped", "skipped by --skip")
    gpu_steps = [step.name for step in gpu_check.STEPS if step.gpu]
    for name in gpu_steps:
        assert status[name][0] == "skipped" and status[name][1].startswith("no CUDA device"), status[name]
        assert any(line.startswith(name) and status[name][1] in line for line in proc.stdout.splitlines())
    assert (out / "logs" / "env.log").read_text().startswith("$ ")
    assert not (out / "logs" / "tests.log").exists()


def test_selection_keeps_exactly_the_gpu_tests(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA device\n")
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.fixture(params=["torch", "cpp", "triton", "cuda"])
        def backend(request):
            return request.param

        def test_by_backend(backend):
            pass

        @pytest.mark.parametrize("backend_name", ["cpp", "triton"])
        def test_named_backend(backend_name):
            pass

        @pytest.mark.parametrize("device", ["cuda"])
        def test_other_parameter(device):
            pass

        @pytest.mark.gpu
        def test_marked():
            assert False, "a GPU test that fails"

        @pytest.mark.skipif(True, reason="needs a CUDA device")
        def test_skipped_without_a_device():
            pass

        @pytest.mark.skipif(True, reason="nvcc is not on PATH (no CUDA toolkit)")
        def test_toolkit_only():
            pass

        def test_plain():
            pass
    """))
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, str(SELECTOR), str(tmp_path), "-v", "-p", "no:cacheprovider",
                           f"--junitxml={junit}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = verdicts.read_junit(junit)
    assert (report["tests"], report["passed"], report["skipped"], report["failures"]) == (5, 3, 1, 1)
    assert report["failed_ids"] == ["test_sample::test_marked"]
    assert "6 deselected" in proc.stdout
    from_log = verdicts.read_verbose_log(proc.stdout)  # what is read when a run is stopped before its report
    assert {k: from_log[k] for k in ("tests", "passed", "skipped", "failures", "errors")} == \
        {k: report[k] for k in ("tests", "passed", "skipped", "failures", "errors")}
    assert from_log["failed_ids"] == ["test_sample.py::test_marked"]


@pytest.mark.slow
def test_tests_stopped_at_their_limit_keep_what_ran(tmp_path):
    """SIGINT first: pytest ends the hanging test and still writes its report."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA device\n")
    (tmp_path / "test_hang.py").write_text(textwrap.dedent("""
        import time
        import pytest

        @pytest.mark.gpu
        def test_a_fast_one():
            pass

        @pytest.mark.gpu
        def test_b_hangs():
            time.sleep(300)
    """))
    (tmp_path / "out").mkdir()
    command = [sys.executable, str(SELECTOR), str(tmp_path), "-v", "-p", "no:cacheprovider",
               f"--junitxml={tmp_path / 'out' / 'tests-junit.xml'}"]
    started = time.time()
    rc, output = gpu_check.run_command(command, tmp_path / "tests.log", 25.0, dict(os.environ))
    assert rc is None and "test_a_fast_one PASSED" in output
    outcome = verdicts.assess_tests(verdicts.Run(rc, output, tmp_path / "out", [], 25.0, started, True))
    assert outcome.status == "failed"
    assert outcome.text.startswith("timed out after 25 s; by then 1 passed, 0 skipped")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_hanging_step_is_killed_with_its_children_at_its_limit(tmp_path):
    hang = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
            "print('pid of the child:', child.pid, flush=True)\n"
            "time.sleep(300)\n")
    start = time.monotonic()
    rc, output = gpu_check.run_command([sys.executable, "-c", hang], tmp_path / "hang.log", 3.0, dict(os.environ))
    assert rc is None and time.monotonic() - start < 20
    child = int(next(line for line in output.splitlines() if line.startswith("pid of the child:")).split()[-1])
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)
    outcome = verdicts.assess_exit(verdicts.Run(rc, output, tmp_path, [], 3.0, start, False))
    assert (outcome.status, outcome.text) == ("failed", "timed out after 3 s")


def _record(method, **fields):
    return {"method": method, **fields}


def test_angle_target_is_the_worst_large_case_per_backend():
    big, small = dict(T=16384, d=4096), dict(T=16384, d=896)
    records = [_record("copy", vs_copy=1.0, **big), _record("cuda", vs_copy=0.55, **big),
               _record("cuda", vs_copy=0.5, T=32768, d=2048), _record("cuda", vs_copy=5.0, **small)]
    cuda, triton = verdicts.angle_targets(records)
    assert cuda.value == pytest.approx(1 / 1.1) and cuda.met  # a copy moves twice the bytes the op reads
    assert triton.value is None and not triton.met


def test_pass_target_is_the_worst_case_per_backend():
    records = [_record("read"), _record("pass/cuda", x_read=1.25), _record("pass/triton", x_read=1.25),
               _record("pass/triton", x_read=1.6), _record("delta_svd/cuda", err=1e-6)]
    cuda, triton = verdicts.pass_targets(records)
    assert cuda.value == pytest.approx(0.8) and cuda.met
    assert triton.value == pytest.approx(1 / 1.6) and not triton.met


def test_train_memory_targets_are_the_worst_case_of_each_verdict():
    found = [{"target": "peak independent of the global batch (within 10%)", "ratio": 1.05},
             {"target": "peak independent of the global batch (within 10%)", "ratio": 1.21},
             {"target": "peak at micro-batch 4 <= weights + gradients + AdamW state + 2 GB",
              "peak_bytes": 3e9, "bound_bytes": 4.5e9},
             {"target": "vs TRL GRPOTrainer: our peak no higher, our tokens/s no lower", "peak_ratio": 0.9,
              "speed_ratio": 1.6},
             {"target": "vs TRL GRPOTrainer: our peak no higher, our tokens/s no lower", "peak_ratio": 1.05,
              "speed_ratio": 1.4}]
    batch, bound, peak, speed = verdicts.train_memory_targets({"targets": found})
    assert batch.value == pytest.approx(1.10 / 1.21) and not batch.met
    assert bound.value == pytest.approx(1.5) and bound.met
    assert peak.value == pytest.approx(1 / 1.05) and not peak.met
    assert speed.value == pytest.approx(1.4) and speed.met
    assert all(t.value is None for t in verdicts.train_memory_targets({"targets": []}))


@pytest.mark.parametrize("statuses, missed, code", [
    (["passed", "passed"], False, 0),
    (["passed", "skipped"], False, 3),
    (["passed", "passed"], True, 4),
    (["passed", "skipped"], True, 4),
    (["failed", "skipped"], True, 1),
])
def test_exit_status_precedence(statuses, missed, code):
    results = [{"status": s, "targets": []} for s in statuses]
    results[0]["targets"] = [{"met": not missed}]
    assert gpu_check.exit_code(results) == code


def test_doctor_table_decides_whether_the_gpu_backends_are_live():
    table = ("backend  live  why\ntorch    yes   always available\ncpp      yes   built\n"
             "triton   yes   CUDA device present\ncuda     no    nvcc / CUDA_HOME not found\n")
    assert verdicts.parse_doctor(table)["cuda"] == (False, "nvcc / CUDA_HOME not found")
    outcome = verdicts.assess_doctor(verdicts.Run(0, table, Path("."), [], 10.0, 0.0, True))
    assert (outcome.status, outcome.text) == ("failed", "cuda not live: nvcc / CUDA_HOME not found")


@pytest.mark.parametrize("gpu, status", [(True, "failed"), (False, "passed")])
def test_build_without_cuda_kernels_fails_only_where_there_is_a_device(gpu, status):
    output = "C++ kernels: built\nCUDA kernels: nvcc / CUDA_HOME not found\n"
    outcome = verdicts.assess_build(verdicts.Run(0, output, Path("."), [], 10.0, 0.0, gpu))
    assert (outcome.status, outcome.text) == (status, "C++ kernels: built; CUDA kernels: nvcc / CUDA_HOME not found")


def test_a_benchmark_that_writes_no_results_fails(tmp_path):
    outcome = verdicts.assess_angle(verdicts.Run(0, "done\n", tmp_path, [], 10.0, 0.0, True))
    assert (outcome.status, outcome.text) == ("failed", "wrote no bench/results/angle_stats-*.json")


def test_plan_names_why_each_step_will_not_run():
    args = gpu_check.parse_args(["--out", "x", "--only", "build", "--only", "tests", "--skip", "build"])
    skipped = gpu_check.plan(args, "no CUDA device: test")
    assert skipped.pop("build") == "skipped by --skip"
    assert skipped.pop("tests") == "no CUDA device: test"
    assert skipped == {name: "not in --only" for name in gpu_check.STEP_NAMES if name not in ("env", "build", "tests")}


def test_a_benchmark_step_copies_its_results_and_reads_its_targets(tmp_path, monkeypatch, capsys):
    results = tmp_path / "bench-results"
    results.mkdir()
    monkeypatch.setattr(gpu_check, "BENCH_RESULTS", results)
    case = dict(T=16384, d=4096, bytes=2**27)
    records = [dict(method="copy", median_ms=0.1, vs_copy=1.0, **case),
               dict(method="cuda", median_ms=0.06, vs_copy=0.6, **case),
               dict(method="triton", median_ms=0.07, vs_copy=0.7, **case)]
    writer = (f"import json, pathlib; pathlib.Path({str(results / 'angle_stats-H200.json')!r})"
              f".write_text(json.dumps({{'results': {records!r}}}))")
    step = gpu_check.Step("bench-angle", True, 10.0, lambda out: [sys.executable, "-c", writer],
                          verdicts.assess_angle, True)
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    record, probe = gpu_check.run_step(step, out, 120.0, True)
    assert probe is None and record["status"] == "passed", record
    assert record["files"] == ["angle_stats-H200.json"] and (out / "angle_stats-H200.json").exists()
    assert [(t["value"], t["met"]) for t in record["targets"]] == [(pytest.approx(1 / 1.2), True),
                                                                   (pytest.approx(1 / 1.4), False)]
    assert "copy 2684 GB/s" in record["text"] and "passed" in capsys.readouterr().out
