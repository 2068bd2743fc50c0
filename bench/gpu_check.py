"""The GPU check: install, build, test and benchmark the GPU kernels in one command.

Run on a machine with a CUDA device whose Python already has torch (with CUDA),
triton, transformers, safetensors, scikit-learn, pytest, hypothesis, tqdm,
matplotlib and ninja (trl and vllm are not needed; their tests skip). No network
is used. Every step runs in its own subprocess (process group) with a time limit,
so a hang costs only its step; the steps' limits add up to --time-limit (default
480 s, which one H200 meets), and time a step leaves unused passes to the later
ones. A failed step does not stop the run. Without a CUDA device every GPU step
is skipped with the reason, and the others run.

Speed targets (issue 14), read from the benchmarks' JSON:
  angle_stats  >= 0.80 of the device's copy bandwidth at T*d >= 64M, per GPU backend;
               fraction = (bytes / t_op) / (2 * bytes / t_copy): a copy reads and writes
  delta pass   >= 0.70 of the bandwidth of reading both matrices once, per GPU backend,
               on every case of bench/delta_svd.py: fraction = t_read / t_pass

Writes under OUT: summary.json (machine, device, every step with status, reason,
seconds, key figure; the targets; the exit status), logs/<step>.log (the step's
command and output), tests-junit.xml, and a copy of every file the benchmarks wrote
to bench/results/ (<op>-<device>.json, named after the device).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
BENCH_RESULTS = REPO / "bench" / "results"
DEFAULT_TIME_LIMIT_S = 480.0
REQUIRED_MODULES = ("torch", "triton", "transformers", "safetensors", "sklearn", "pytest", "hypothesis", "tqdm",
                    "matplotlib", "ninja")
OPTIONAL_MODULES = ("trl", "vllm")
ANGLE_MIN_ELEMENTS = 64 * 2**20  # T*d >= 64M
ANGLE_TARGET = 0.80
PASS_TARGET = 0.70
GPU_BACKENDS = ("cuda", "triton")

EXIT_CODES = {
    0: "every step ran and passed, and every speed target was met",
    1: "a step failed or ran out of time",
    2: "usage error (bad arguments)",
    3: "nothing failed, but some steps did not run (no CUDA device, --skip or --only)",
    4: "every step that ran passed, but a speed target was missed or could not be measured",
    130: "interrupted (Ctrl-C); summary.json holds the steps that finished",
}

# The environment probe: one JSON line, prefixed so warnings around it do not matter.
PROBE_TAG = "GPU_CHECK_PROBE "
PROBE = f"""
import importlib.util, json, os, platform, sys
import torch
from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available
cuda = torch.cuda.is_available()
info = dict(python=platform.python_version(), executable=sys.executable, torch=torch.__version__,
            torch_cuda=torch.version.cuda, cuda_available=cuda, cuda_home=CUDA_HOME,
            ninja_binary=is_ninja_available(), cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            devices=[dict(name=torch.cuda.get_device_name(i),
                          memory_gib=round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                          capability=".".join(map(str, torch.cuda.get_device_capability(i))))
                     for i in range(torch.cuda.device_count() if cuda else 0)],
            modules={{m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}})
print({PROBE_TAG!r} + json.dumps(info))
"""


@dataclasses.dataclass(frozen=True)
class Target:
    """One speed target: ``value`` (None: not measured) against ``threshold`` (higher is better)."""

    name: str
    value: float | None
    threshold: float

    @property
    def met(self) -> bool:
        return self.value is not None and self.value >= self.threshold


@dataclasses.dataclass
class Outcome:
    """What a step's run amounts to: status passed/failed, a one-line figure or reason, targets."""

    status: str
    text: str = ""
    targets: list[Target] = dataclasses.field(default_factory=list)
    details: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Step:
    """A step: its command (given the output folder), its share of the time, and how to read its run."""

    name: str
    gpu: bool
    budget_s: float
    command: Callable[[Path], list[str]]
    assess: Callable[["Run"], Outcome]
    results_prefix: str | None = None  # bench/results/<prefix>-*.json written by the step


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished step: exit status (None: stopped at its time limit), output, new result files, and
    whether the machine has a CUDA device."""

    rc: int | None
    output: str
    out_dir: Path
    new_files: list[Path]
    timeout_s: float
    started: float = 0.0  # time.time() at the start
    gpu: bool = False


# ---- reading the steps' output ---------------------------------------------------------------------


def _tail(text: str, lines: int = 1) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _exit_failure(run: Run) -> Outcome | None:
    """The failed outcome of a run that timed out or exited non-zero; None when it exited 0."""
    if run.rc is None:
        return Outcome("failed", f"timed out after {run.timeout_s:.0f} s")
    if run.rc != 0:
        return Outcome("failed", f"exit {run.rc}: {_tail(run.output) or 'no output'}")
    return None


def parse_probe(output: str) -> dict | None:
    for line in output.splitlines():
        if line.startswith(PROBE_TAG):
            return json.loads(line[len(PROBE_TAG):])
    return None


def no_device_reason(probe: dict | None) -> str | None:
    """Why the GPU steps cannot run (None: they can)."""
    if probe is None:
        return "the environment probe failed (see logs/env.log)"
    if probe["devices"]:
        return None
    if probe["torch_cuda"] is None:
        return f"no CUDA device: torch {probe['torch']} is a build without CUDA"
    visible = probe.get("cuda_visible_devices")
    return ("no CUDA device: torch.cuda.is_available() is False"
            + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""))


def assess_env(run: Run) -> Outcome:
    failure = _exit_failure(run)
    probe = parse_probe(run.output)
    if failure is not None or probe is None:
        return failure or Outcome("failed", "the probe printed no result")
    missing = [m for m in REQUIRED_MODULES if not probe["modules"].get(m)]
    absent = [m for m in OPTIONAL_MODULES if not probe["modules"].get(m)]
    devices = ", ".join(f"{d['name']} ({d['memory_gib']} GiB, sm {d['capability']})" for d in probe["devices"])
    text = (f"{devices or 'no CUDA device'}; torch {probe['torch']}"
            + (f", CUDA {probe['torch_cuda']}" if probe["torch_cuda"] else "")
            + (f"; absent (their tests skip): {', '.join(absent)}" if absent else ""))
    problems = [f"missing: {', '.join(missing)}"] if missing else []
    if probe["devices"] and probe["cuda_home"] is None:
        problems.append("nvcc not found (set CUDA_HOME): the CUDA kernels cannot be built")
    if not probe["ninja_binary"]:
        problems.append("the ninja binary is not found: no kernel can be built")
    return Outcome("failed" if problems else "passed", "; ".join(problems + [text]), details={"probe": probe})


def assess_exit(run: Run) -> Outcome:
    return _exit_failure(run) or Outcome("passed")


def assess_build(run: Run) -> Outcome:
    """Passed when the build command exits 0 and, on a machine with a device, the CUDA kernels were built."""
    failure = _exit_failure(run)
    lines = [line.strip() for line in run.output.splitlines() if line.startswith(("C++ kernels:", "CUDA kernels:"))]
    if failure is not None:
        failure.text = "; ".join(lines) or failure.text
        return failure
    cuda = [line for line in lines if line.startswith("CUDA kernels:")]
    if run.gpu and cuda and not cuda[0].removeprefix("CUDA kernels:").strip().startswith("built"):
        return Outcome("failed", "; ".join(lines))
    return Outcome("passed", "; ".join(lines))


def parse_doctor(output: str) -> dict[str, tuple[bool, str]]:
    """The doctor's backend table: name -> (live, why)."""
    table = {}
    for line in output.splitlines():
        fields = line.split(maxsplit=2)
        if len(fields) >= 2 and fields[0] in ("torch", "cpp", "triton", "cuda") and fields[1] in ("yes", "no"):
            table[fields[0]] = (fields[1] == "yes", fields[2] if len(fields) > 2 else "")
    return table


def assess_doctor(run: Run) -> Outcome:
    failure = _exit_failure(run)
    if failure is not None:
        return failure
    table = parse_doctor(run.output)
    dead = [f"{name} not live: {table[name][1]}" if name in table else f"{name} missing from the doctor's table"
            for name in GPU_BACKENDS if not table.get(name, (False, ""))[0]]
    if dead:
        return Outcome("failed", "; ".join(dead))
    return Outcome("passed", ", ".join(f"{name} live" for name in GPU_BACKENDS))


def read_junit(path: Path) -> dict:
    """Counts and failed test ids from a pytest JUnit XML report."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {**counts, "failed_ids": failed}


VERBOSE_RESULT = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)")


def read_verbose_log(output: str) -> dict:
    """Counts and failed ids from pytest -v lines, for a run stopped before it wrote its report."""
    outcomes = dict(m.groups() for m in map(VERBOSE_RESULT.match, output.splitlines()) if m)
    counts = {key: sum(v == word for v in outcomes.values())
              for key, word in (("passed", "PASSED"), ("failures", "FAILED"), ("errors", "ERROR"),
                                ("skipped", "SKIPPED"))}
    failed = [test for test, word in outcomes.items() if word in ("FAILED", "ERROR")]
    return {"tests": len(outcomes), **counts, "failed_ids": failed}


def assess_tests(run: Run) -> Outcome:
    """pytest's JUnit report when it wrote one in this run, else its -v lines (a run killed at its limit)."""
    junit = run.out_dir / "tests-junit.xml"
    if run.rc == 5:
        return Outcome("failed", "no GPU test was selected")
    fresh = junit.exists() and junit.stat().st_mtime >= run.started - 1
    report = read_junit(junit) if fresh else read_verbose_log(run.output)
    if not report["tests"]:
        return _exit_failure(run) or Outcome("failed", "pytest reported no test")
    text = (f"{report['passed']} passed, {report['skipped']} skipped, {report['failures']} failed, "
            f"{report['errors']} errors")
    if run.rc is None:
        text = f"timed out after {run.timeout_s:.0f} s; by then {text}"
    return Outcome("passed" if run.rc == 0 else "failed", text, details=report)


def _bench_records(run: Run, prefix: str) -> tuple[Outcome | None, list[dict]]:
    failure = _exit_failure(run)
    if failure is not None:
        return failure, []
    found = [p for p in run.new_files if p.name.startswith(prefix + "-") and p.suffix == ".json"]
    if not found:
        return Outcome("failed", f"wrote no bench/results/{prefix}-*.json"), []
    return None, json.loads(found[0].read_text())["results"]


def angle_targets(records: list[dict]) -> list[Target]:
    """Per GPU backend, the smallest fraction of copy bandwidth over the cases with T*d >= 64M.

    The bench's ``vs_copy`` is t_op / t_copy; a copy moves 2 * bytes, the op reads bytes once,
    so the fraction is 1 / (2 * vs_copy).
    """
    targets = []
    for backend in GPU_BACKENDS:
        fractions = [1 / (2 * r["vs_copy"]) for r in records
                     if r.get("method") == backend and r["T"] * r["d"] >= ANGLE_MIN_ELEMENTS and r.get("vs_copy")]
        targets.append(Target(f"angle_stats/{backend}: fraction of copy bandwidth, T*d >= 64M (min)",
                              min(fractions) if fractions else None, ANGLE_TARGET))
    return targets


def pass_targets(records: list[dict]) -> list[Target]:
    """Per GPU backend, the smallest t_read / t_pass over the bench's cases (``x_read`` is t_pass / t_read)."""
    targets = []
    for backend in GPU_BACKENDS:
        fractions = [1 / r["x_read"] for r in records if r.get("method") == f"pass/{backend}" and r.get("x_read")]
        targets.append(Target(f"delta pass/{backend}: fraction of the bandwidth of reading both matrices (min)",
                              min(fractions) if fractions else None, PASS_TARGET))
    return targets


def _target_text(targets: list[Target]) -> str:
    return "; ".join(f"{t.name.split(':')[0]} {'-' if t.value is None else f'{t.value:.2f}'}" for t in targets)


def assess_angle(run: Run) -> Outcome:
    failure, records = _bench_records(run, "angle_stats")
    if failure is not None:
        return failure
    targets = angle_targets(records)
    return Outcome("passed", f"x copy BW at T*d>=64M (target {ANGLE_TARGET}): {_target_text(targets)}", targets)


def assess_delta_svd(run: Run) -> Outcome:
    failure, records = _bench_records(run, "delta_svd")
    if failure is not None:
        return failure
    targets = pass_targets(records)
    errors = [r["err"] for r in records if str(r.get("method", "")).startswith("delta_svd/") and "err" in r]
    return Outcome("passed", f"x read BW per pass (target {PASS_TARGET}): {_target_text(targets)}"
                   + (f"; delta_svd max sigma1 rel. error {max(errors):.1e}" if errors else ""), targets)


def assess_score(run: Run) -> Outcome:
    failure, records = _bench_records(run, "score_dataset")
    if failure is not None:
        return failure
    ours = {r["method"]: r for r in records}["rlsignals"]
    return Outcome("passed", f"{ours['prompts_per_s']:.0f} prompts/s, {ours['speedup_vs_reference']:.1f}x the "
                             f"released procedure, hook {ours['hook_overhead_vs_forward']:+.1%} vs forward, "
                             f"max |diff| {ours['max_abs_diff_vs_reference']:.1e}")


def assess_rank1(run: Run) -> Outcome:
    failure, records = _bench_records(run, "checkpoint_rank1")
    if failure is not None:
        return failure
    ours = records[0]
    return Outcome("passed", f"{ours['seconds_per_layer_per_checkpoint']:.2f} s per 7B layer per checkpoint, "
                             f"{ours['speedup']:.0f}x the full SVD")


# ---- the steps ---------------------------------------------------------------------------------------


def _py(*args: str) -> Callable[[Path], list[str]]:
    return lambda out: [sys.executable, *args]


STEPS = (
    Step("env", False, 30, lambda out: [sys.executable, "-c", PROBE, *REQUIRED_MODULES, *OPTIONAL_MODULES],
         assess_env),
    Step("install", False, 30, _py("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                                   "--disable-pip-version-check", "-e", "."), assess_exit),
    Step("build", False, 110, _py("-m", "rlsignals", "build"), assess_build),
    Step("doctor", True, 20, _py("-m", "rlsignals", "doctor"), assess_doctor),
    Step("tests", True, 100, lambda out: [sys.executable, "bench/gpu_tests.py", "tests", "-v", "-p", "no:cacheprovider",
                                          "--continue-on-collection-errors", "--durations=15",
                                          f"--junitxml={out / 'tests-junit.xml'}"], assess_tests),
    Step("bench-angle", True, 40, _py("bench/angle_stats.py", "--device", "cuda"), assess_angle, "angle_stats"),
    Step("bench-delta-svd", True, 90, _py("bench/delta_svd.py", "--device", "cuda"), assess_delta_svd,
         "delta_svd"),
    Step("bench-score", True, 30, _py("bench/score_dataset.py", "--preset", "gpu", "--prompts", "500"),
         assess_score, "score_dataset"),
    Step("bench-rank1", True, 30, _py("bench/checkpoint_rank1.py", "--device", "cuda", "--layers", "1",
                                      "--checkpoints", "2"), assess_rank1, "checkpoint_rank1"),
)
STEP_NAMES = tuple(s.name for s in STEPS)


# ---- running ------------------------------------------------------------------------------------------


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader, so a finished one no longer counts as a member
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_group(proc: subprocess.Popen) -> None:
    """End whatever is left of the step's process group: SIGINT (pytest then writes its report, a
    benchmark removes its temporary files), SIGTERM, SIGKILL, 5 s apart."""
    for sig, grace_s in ((signal.SIGINT, 5.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(proc):
            return
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(proc):
            time.sleep(0.1)


def run_command(argv: list[str], log: Path, timeout_s: float, env: dict[str, str]) -> tuple[int | None, str]:
    """Run argv from the repository root in a new process group, output to ``log``; None: timed out."""
    with log.open("w") as sink:
        sink.write(f"$ {shlex.join(argv)}\n")
        sink.flush()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _kill_group(proc)
    return rc, log.read_text(errors="replace")


def step_env(gpu: bool) -> dict[str, str]:
    """The environment of a step; GPU steps run Triton on the device, never in its CPU interpreter."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if gpu:
        env.pop("TRITON_INTERPRET", None)
    return env


def new_result_files(since: float) -> list[Path]:
    if not BENCH_RESULTS.is_dir():
        return []
    return sorted(p for p in BENCH_RESULTS.iterdir() if p.is_file() and p.stat().st_mtime >= since - 1)


def step_timeout(remaining_s: float, later_budgets_s: list[float]) -> float:
    """The time a step may take: what is left of the whole limit, less what the later steps are owed."""
    return remaining_s - sum(later_budgets_s)


def exit_code(results: list[dict]) -> int:
    """1 > 4 > 3 > 0: a failure first, then a missed target, then a skipped step (see EXIT_CODES)."""
    if any(r["status"] == "failed" for r in results):
        return 1
    if any(not t["met"] for r in results for t in r["targets"]):
        return 4
    if any(r["status"] == "skipped" for r in results):
        return 3
    return 0


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def print_summary(results: list[dict], device: str, code: int) -> None:
    rows = [("step", "status", "seconds", "limit", "key figure / reason")]
    rows += [(r["step"], r["status"], "-" if r["seconds"] is None else f"{r['seconds']:.0f}",
              "-" if r["timeout_s"] is None else f"{r['timeout_s']:.0f}", r["text"]) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"\nGPU check on {device}")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    targets = [t for r in results for t in r["targets"]]
    if targets:
        print("\nspeed targets")
        for t in targets:
            value = "not measured" if t["value"] is None else f"{t['value']:.3f}"
            print(f"  {'met   ' if t['met'] else 'MISSED'}  {value:>12} >= {t['threshold']:.2f}  {t['name']}")
    print(f"\nexit {code}: {EXIT_CODES[code]}")


def plan(selected: list[Step], args: argparse.Namespace, no_gpu: str | None) -> dict[str, str]:
    """Step name -> why it will not run (only for the steps that will not)."""
    skipped = {}
    for step in selected:
        if step.name in args.skip:
            skipped[step.name] = "skipped by --skip"
        elif args.only and step.name not in args.only and step.name != "env":
            skipped[step.name] = "not in --only"
        elif step.gpu and no_gpu:
            skipped[step.name] = no_gpu
    return skipped


def run_all(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    scale = args.time_limit / sum(s.budget_s for s in STEPS)
    started = time.monotonic()
    summary = {"tool": "bench/gpu_check.py", "started": datetime.datetime.now(datetime.timezone.utc)
               .isoformat(timespec="seconds"), "time_limit_s": args.time_limit, "device": None, "probe": None,
               "steps": []}
    results: list[dict] = summary["steps"]
    skipped: dict[str, str] = {}
    device, has_gpu = "unknown device", False
    for index, step in enumerate(STEPS):
        if step.name in skipped:
            results.append({"step": step.name, "status": "skipped", "text": skipped[step.name], "seconds": None,
                            "timeout_s": None, "targets": [], "files": []})
            print(f"[{index + 1}/{len(STEPS)}] {step.name}: skipped: {skipped[step.name]}", flush=True)
            continue
        later = [s.budget_s * scale for s in STEPS[index + 1:] if s.name not in skipped]
        timeout = step_timeout(args.time_limit - (time.monotonic() - started), later)
        command = step.command(out)
        print(f"[{index + 1}/{len(STEPS)}] {step.name}: {shlex.join(command)[:110]} (limit {timeout:.0f} s) ...",
              flush=True)
        t0, wall0 = time.monotonic(), time.time()
        rc, output = run_command(command, out / "logs" / f"{step.name}.log", timeout, step_env(step.gpu))
        seconds = time.monotonic() - t0
        files = new_result_files(wall0) if step.results_prefix else []
        for path in files:
            shutil.copy2(path, out / path.name)
        try:
            outcome = step.assess(Run(rc, output, out, files, timeout, wall0, has_gpu))
        except (KeyError, IndexError, TypeError, ValueError, ET.ParseError) as exc:
            outcome = Outcome("failed", f"could not read the step's results: {exc.__class__.__name__}: {exc}")
        probe = outcome.details.pop("probe", None)
        results.append({"step": step.name, "status": outcome.status, "text": outcome.text, "seconds": seconds,
                        "timeout_s": timeout, "command": command, "exit_status": rc,
                        "log": f"logs/{step.name}.log", "files": [p.name for p in files],
                        "targets": [{**dataclasses.asdict(t), "met": t.met} for t in outcome.targets],
                        **outcome.details})
        print(f"    {outcome.status} in {seconds:.0f} s: {outcome.text}", flush=True)
        if outcome.status == "failed":
            print("    " + _tail(output, 8).replace(" | ", "\n    "), flush=True)
        if step.name == "env":
            summary["probe"] = probe
            device = ", ".join(d["name"] for d in probe["devices"]) if probe and probe["devices"] else "no CUDA device"
            summary["device"] = device
            has_gpu = no_device_reason(probe) is None
            skipped = plan(list(STEPS), args, no_device_reason(probe))
        _write_json(out / "summary.json", summary)
    code = exit_code(results)
    summary.update(seconds=time.monotonic() - started, exit_code=code, exit_meaning=EXIT_CODES[code])
    _write_json(out / "summary.json", summary)
    print_summary(results, device, code)
    print(f"results: {out}")
    return code


def _step_list(value: str) -> set[str]:
    names = {v.strip() for v in value.split(",") if v.strip()}
    unknown = sorted(names - set(STEP_NAMES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step {', '.join(unknown)}; the steps are {', '.join(STEP_NAMES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    steps = "\n".join(f"  {s.name:<16} {'GPU' if s.gpu else '   '} {s.budget_s:>4.0f} s  " + (
        "python -c <probe of torch, the CUDA device, nvcc, ninja and the packages>" if s.name == "env"
        else "python " + shlex.join(s.command(Path("OUT"))[1:])) for s in STEPS)
    codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="python bench/gpu_check.py", description=__doc__.split("\n\n")[0],
        epilog=f"steps (name, needs a GPU, share of the default {DEFAULT_TIME_LIMIT_S:.0f} s, command):\n{steps}"
               f"\n\nexit status:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.json, logs/ and the results")
    parser.add_argument("--skip", type=_step_list, action="append", default=[], metavar="STEP[,STEP]",
                        help="do not run these steps (e.g. --skip install when the package is installed)")
    parser.add_argument("--only", type=_step_list, action="append", default=[], metavar="STEP[,STEP]",
                        help="run only these steps (and env, which decides whether a GPU is there)")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S,
                        help="seconds for the whole run; each step's share scales with it (default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.skip = set().union(*args.skip)
    args.only = set().union(*args.only)
    if "env" in args.skip:
        parser.error("--skip env: the environment probe always runs (it decides whether a GPU is there)")
    if args.time_limit <= 0:
        parser.error(f"--time-limit must be positive, got {args.time_limit}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    try:
        return run_all(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the finished steps are in {args.out / 'summary.json'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
