"""The GPU check: install, build, test and benchmark the GPU kernels in one command.

Run on a machine with a CUDA device whose Python already has torch (with CUDA),
triton, transformers, safetensors, scikit-learn, pytest, hypothesis, tqdm,
matplotlib and ninja (trl and vllm are not needed; their tests skip). No network
is used. Every step runs in its own subprocess (process group) with a time limit,
so a hang costs only its step; the steps' limits add up to --time-limit (default
570 s: issue 14 asked for 8 minutes on one H200, and the RL step's memory bench adds 90 s;
not yet timed on one), and time a
step leaves unused passes to the later ones. A step stopped at its limit gets
SIGINT, then SIGTERM, then SIGKILL, 5 s apart (so a run can overrun the limit by
that much per stopped step). A failed step does not stop the run. Without a CUDA
device every GPU step is skipped with the reason, and the others run.

How each step is judged, and the speed targets (angle statistics at >= 80% of
the device's copy bandwidth, a delta-products pass at >= 70% of the bandwidth of
reading both matrices): bench/gpu_verdicts.py.

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
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import gpu_verdicts as verdicts
from gpu_verdicts import Outcome, Run

REPO = Path(__file__).resolve().parent.parent
BENCH_RESULTS = REPO / "bench" / "results"
DEFAULT_TIME_LIMIT_S = 570.0

EXIT_CODES = {
    0: "every step ran and passed, and every speed target was met",
    1: "a step failed or ran out of time",
    2: "usage error (bad arguments)",
    3: "nothing failed, but some steps did not run (no CUDA device, --skip or --only)",
    4: "every step that ran passed, but a speed target was missed or could not be measured",
    130: "interrupted (Ctrl-C); summary.json holds the steps that finished",
}


@dataclasses.dataclass(frozen=True)
class Step:
    """A step: its command (given the output folder), its share of the time, and how to read its run."""

    name: str
    gpu: bool
    budget_s: float
    command: Callable[[Path], list[str]]
    assess: Callable[[Run], Outcome]
    writes_results: bool = False  # a benchmark: its new files in bench/results/ are copied to OUT


# ---- the steps ---------------------------------------------------------------------------------------


def _py(*args: str) -> Callable[[Path], list[str]]:
    return lambda out: [sys.executable, *args]


def shown(command: list[str]) -> str:
    """A command as printed: ``python`` for this interpreter, the probe's code left out."""
    args = ["<probe>" if arg == verdicts.PROBE else arg for arg in command[1:]]
    return shlex.join(["python", *args])


PROBE_COMMAND = ("-c", verdicts.PROBE, *verdicts.REQUIRED_MODULES, *verdicts.OPTIONAL_MODULES)
PIP_INSTALL = ("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check",
               "-e", ".")


def _pytest_gpu(out: Path) -> list[str]:
    return [sys.executable, "bench/gpu_tests.py", "tests", "-v", "-p", "no:cacheprovider",
            "--continue-on-collection-errors", "--durations=15", f"--junitxml={out / 'tests-junit.xml'}"]


STEPS = (
    Step("env", False, 30, _py(*PROBE_COMMAND), verdicts.assess_env),
    Step("install", False, 15, _py(*PIP_INSTALL), verdicts.assess_exit),
    Step("build", False, 120, _py("-m", "rlsignals", "build"), verdicts.assess_build),
    Step("doctor", True, 10, _py("-m", "rlsignals", "doctor"), verdicts.assess_doctor),
    Step("tests", True, 120, _pytest_gpu, verdicts.assess_tests),
    Step("bench-angle", True, 50, _py("bench/angle_stats.py", "--device", "cuda", "--max-tokens", "65536"),
         verdicts.assess_angle, True),
    Step("bench-delta-svd", True, 80, _py("bench/delta_svd.py", "--device", "cuda"), verdicts.assess_delta_svd,
         True),
    Step("bench-score", True, 30, _py("bench/score_dataset.py", "--preset", "gpu", "--prompts", "500"),
         verdicts.assess_score, True),
    Step("bench-rank1", True, 25, _py("bench/checkpoint_rank1.py", "--device", "cuda", "--layers", "1",
                                      "--checkpoints", "2"), verdicts.assess_rank1, True),
    Step("bench-train-mem", True, 90, _py("bench/train_memory.py", "--device", "cuda", "--models", "qwen2.5-0.5b-2l",
                                          "--micro", "4", "--trl-micro", "4", "--gradient-checkpointing", "off",
                                          "--prompt-len", "64", "--new-tokens", "64", "--timeout", "40"),
         verdicts.assess_train_memory, True),
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


def plan(args: argparse.Namespace, no_gpu: str | None) -> dict[str, str]:
    """Step name -> why it will not run (only for the steps that will not)."""
    skipped = {}
    for step in STEPS:
        if step.name in args.skip:
            skipped[step.name] = "skipped by --skip"
        elif args.only and step.name not in args.only and step.name != "env":
            skipped[step.name] = "not in --only"
        elif step.gpu and no_gpu:
            skipped[step.name] = no_gpu
    return skipped


def run_step(step: Step, out: Path, timeout: float, has_gpu: bool) -> tuple[dict, dict | None]:
    """Run one step, copy the result files it wrote to ``out``, judge it: its summary record, and
    the environment probe when the step is env."""
    command = step.command(out)
    t0, wall0 = time.monotonic(), time.time()
    rc, output = run_command(command, out / "logs" / f"{step.name}.log", timeout, step_env(step.gpu))
    seconds = time.monotonic() - t0
    files = new_result_files(wall0) if step.writes_results else []
    for path in files:
        if path.parent != out:
            shutil.copy2(path, out / path.name)
    try:
        outcome = step.assess(Run(rc, output, out, files, timeout, wall0, has_gpu))
    except (KeyError, IndexError, TypeError, ValueError, ET.ParseError) as exc:
        outcome = Outcome("failed", f"could not read the step's results: {exc.__class__.__name__}: {exc}")
    probe = outcome.details.pop("probe", None)
    print(f"    {outcome.status} in {seconds:.0f} s: {outcome.text}", flush=True)
    if outcome.status == "failed":
        print("".join(f"    | {line}\n" for line in verdicts.last_lines(output, 8)), end="", flush=True)
    return {"step": step.name, "status": outcome.status, "text": outcome.text, "seconds": seconds,
            "timeout_s": timeout, "command": shown(command), "exit_status": rc, "log": f"logs/{step.name}.log",
            "files": [p.name for p in files],
            "targets": [{**dataclasses.asdict(t), "met": t.met} for t in outcome.targets], **outcome.details}, probe


def run_all(args: argparse.Namespace) -> int:
    """Every step in order (see the module's docstring); summary.json is rewritten after each."""
    out: Path = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    scale = args.time_limit / sum(s.budget_s for s in STEPS)
    started = time.monotonic()
    summary = {"tool": "bench/gpu_check.py", "started": datetime.datetime.now(datetime.UTC)
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
        print(f"[{index + 1}/{len(STEPS)}] {step.name}: {shown(step.command(out))} (limit {timeout:.0f} s) ...",
              flush=True)
        record, probe = run_step(step, out, timeout, has_gpu)
        results.append(record)
        if step.name == "env":
            no_gpu = verdicts.no_device_reason(probe)
            device = ("unknown (the environment probe failed)" if probe is None
                      else ", ".join(d["name"] for d in probe["devices"]) or "no CUDA device")
            summary.update(probe=probe, device=device)
            has_gpu, skipped = no_gpu is None, plan(args, no_gpu)
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
    steps = "\n".join(f"  {step.name:<16} {'GPU' if step.gpu else '   '} {step.budget_s:>4.0f} s  "
                      f"{shown(step.command(Path('OUT')))}" for step in STEPS)
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with --skip and --only as sets of step names; a bad one exits 2 with its reason."""
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
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run_all(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the finished steps are in {args.out / 'summary.json'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
