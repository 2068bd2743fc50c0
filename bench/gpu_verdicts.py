"""How the GPU check (bench/gpu_check.py) judges each step's run, and its speed targets.

Each ``assess_*`` turns a finished step (exit status, output, the files it wrote)
into an Outcome: passed or failed, one line of key figure or reason, and the
speed targets it measured. Targets (issue 14), read from the benchmarks' JSON:

  angle_stats  >= 0.80 of the device's copy bandwidth at T*d >= 64M, per GPU backend;
               fraction = (bytes / t_op) / (2 * bytes / t_copy): a copy reads and writes
  delta pass   >= 0.70 of the bandwidth of reading both matrices once, per GPU backend,
               on every case of bench/delta_svd.py: fraction = t_read / t_pass

What is read from each benchmark's JSON ("results": a list of records):
  angle_stats       "method" ("copy" or a backend name), "T", "d", "vs_copy" (t_method / t_copy)
  delta_svd         "method" "pass/<backend>" with "x_read" (t_pass / t_read of W0 and W1);
                    "err" of the "delta_svd..." records
  score_dataset     the "rlsignals" record: prompts_per_s, speedup_vs_reference,
                    hook_overhead_vs_forward, max_abs_diff_vs_reference
  checkpoint_rank1  the first record: seconds_per_layer_per_checkpoint, speedup
A matching record without one of these fields fails the step with the field's name;
no matching record leaves its target "not measured" (exit status 4). When a
benchmark changes its records, update the reader here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

REQUIRED_MODULES = ("torch", "triton", "transformers", "safetensors", "sklearn", "pytest", "hypothesis", "tqdm",
                    "matplotlib", "ninja")
OPTIONAL_MODULES = ("trl", "vllm")
ANGLE_MIN_ELEMENTS = 64 * 2**20  # T*d >= 64M
ANGLE_TARGET = 0.80
PASS_TARGET = 0.70
GPU_BACKENDS = ("cuda", "triton")

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
class Run:
    """A finished step: exit status (None: stopped at its time limit), output, new result files, and
    whether the machine has a CUDA device."""

    rc: int | None
    output: str
    out_dir: Path
    new_files: list[Path]
    timeout_s: float
    started: float  # time.time() at the start
    gpu: bool


def last_lines(text: str, count: int) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()][-count:]


def _exit_failure(run: Run) -> Outcome | None:
    """The failed outcome of a run that timed out or exited non-zero; None when it exited 0."""
    if run.rc is None:
        return Outcome("failed", f"timed out after {run.timeout_s:.0f} s")
    if run.rc != 0:
        return Outcome("failed", f"exit {run.rc}: {' '.join(last_lines(run.output, 1)) or 'no output'}")
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
    copies = [2 * r["bytes"] / r["median_ms"] / 1e6 for r in records if r.get("method") == "copy" and "bytes" in r]
    return Outcome("passed", f"x copy BW at T*d>=64M (target {ANGLE_TARGET}): {_target_text(targets)}"
                   + (f"; copy {max(copies):.0f} GB/s" if copies else ""), targets)


def assess_delta_svd(run: Run) -> Outcome:
    failure, records = _bench_records(run, "delta_svd")
    if failure is not None:
        return failure
    targets = pass_targets(records)
    errors = [r["err"] for r in records if str(r.get("method", "")).startswith("delta_svd") and "err" in r]
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
    failure, records = _bench_records(run, "checkpoint_rank1-solve")
    if failure is not None:
        return failure
    ours = records[0]
    shape = f"{ours.get('model_shape', '')} layer ({ours.get('case', '')} update)"
    return Outcome("passed", f"{ours['seconds_per_layer_per_checkpoint']:.2f} s per {shape} per checkpoint, "
                             f"{ours['speedup']:.0f}x the full SVD")


def train_memory_targets(payload: dict) -> list[Target]:
    """bench/train_memory.py's verdicts as higher-is-better ratios against 1: 1.1 x the small
    batch's peak / the large batch's, the bound / the peak at micro-batch 4, TRL's peak / ours,
    our tokens/s / TRL's (each the worst over the configurations it covers)."""
    found = payload.get("targets", [])

    def worst(name: str, prefix: str, value) -> Target:
        values = [value(v) for v in found if v["target"].startswith(prefix)]
        return Target(f"train_memory: {name} (min)", min(values) if values else None, 1.0)

    return [worst("1.1 x small-batch peak / large-batch peak", "peak independent", lambda v: 1.10 / v["ratio"]),
            worst("bound / peak at micro-batch 4", "peak at micro-batch 4",
                  lambda v: v["bound_bytes"] / v["peak_bytes"]),
            worst("TRL's peak / ours", "vs TRL", lambda v: 1 / v["peak_ratio"]),
            worst("our tokens/s / TRL's", "vs TRL", lambda v: v["speed_ratio"])]


def assess_train_memory(run: Run) -> Outcome:
    failure = _exit_failure(run)
    if failure is not None:
        return failure
    found = [p for p in run.new_files if p.name.startswith("train_memory-") and p.suffix == ".json"]
    if not found:
        return Outcome("failed", "wrote no bench/results/train_memory-*.json")
    targets = train_memory_targets(json.loads(found[0].read_text()))
    return Outcome("passed", f"ratios (target >= 1): {_target_text(targets)}", targets)
