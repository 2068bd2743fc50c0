"""bench/checkpoint_rank1.py --whole-model: the whole `rlsignals rank1` command on a whole
model, against the best script a user could write, both run as a user runs them.

Per model (bench/rank1_models.py: a Qwen2.5-0.5B-shaped model, all 24 layers, and a stack of
Qwen2.5-7B-shaped layers; a base and C checkpoints of RL-like updates, flat tops included):

  ours        `python -m rlsignals rank1 --base B --ckpt C1 .. CC --out O`, a fresh process
  contender   `python bench/rank1_contender.py PLAN O`, a fresh process: torch + scipy +
              safetensors, the fp32 delta of every module, per module and checkpoint the
              fastest of torch.svd_lowrank / scipy svds (PROPACK, ARPACK) whose sigma_1 met 1e-4
              of the fp64 answer when tuned beforehand (rank1_contender.tune_plan: knowledge
              of the answer, which favours the contender)

timed alternately (``reps`` each, the order swapped every round, each run after the CPUs have
been idle for a moment), start-up and reading included on both sides. The split of our time:
start-up (a fresh process importing what the command imports), and reading, solving and
writing from track_rank1's own clock (an in-process run); the contender prints its own
phases. Checks: sigma_1 of every module and checkpoint against the fp64 answer (both
sides), err_bound never below the true error, the vectors flag against the measured
angle of u_1 (flag <=> sin(u_1) > 1e-4), and the contender's sigma_1 errors as run.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from rank1_contender import tune_plan
from rank1_models import MODELS, family_of, reference, sin_angle, write_model
from safetensors import safe_open

BENCH = Path(__file__).resolve().parent
TARGET = 1e-4
QUIET_IDLE = 0.9       # wait for this share of idle CPU (over half a second) before each timed run
QUIET_WAIT_S = 120     # ... at most this long


def cpu_idle(seconds: float = 0.5) -> float:
    """Share of idle CPU time over ``seconds`` (from /proc/stat; 1.0 where it cannot be read)."""
    def sample():
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)
    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except OSError:
        return 1.0
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_quiet() -> float:
    """Wait (up to QUIET_WAIT_S) for an idle CPU; returns the idle share last seen."""
    start = time.perf_counter()
    idle = cpu_idle()
    while idle < QUIET_IDLE and time.perf_counter() - start < QUIET_WAIT_S:
        idle = cpu_idle()
    return idle


def wall(cmd: list[str]) -> tuple[float, str]:
    """(seconds, stdout) of a fresh process; fails loudly."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def ours_cmd(base: Path, ckpts: list[Path], out: Path) -> list[str]:
    return [sys.executable, "-m", "rlsignals", "rank1", "--base", str(base), "--ckpt", *map(str, ckpts),
            "--out", str(out)]


def contender_cmd(plan: Path, out: Path) -> list[str]:
    return [sys.executable, str(BENCH / "rank1_contender.py"), str(plan), str(out)]


def race(base: Path, ckpts: list[Path], plan: Path, scratch: Path, reps: int) -> dict:
    """Alternating timed runs of both commands: their seconds, idle shares, the contender's
    phases and our printed summary."""
    runs = {"ours": [], "contender": []}
    idle, phases, printed = [], [], ""
    for rep in range(reps):
        for side in (("ours", "contender") if rep % 2 == 0 else ("contender", "ours")):
            if side == "ours":
                shutil.rmtree(scratch / "traj", ignore_errors=True)
                idle.append(wait_quiet())
                seconds, printed = wall(ours_cmd(base, ckpts, scratch / "traj"))
            else:
                (scratch / "contender.safetensors").unlink(missing_ok=True)
                idle.append(wait_quiet())
                seconds, stdout = wall(contender_cmd(plan, scratch / "contender.safetensors"))
                phases.append(json.loads(stdout.strip().splitlines()[-1]))
            runs[side].append(seconds)
            extra = f", phases {phases[-1]}" if side == "contender" else ""
            print(f"    {side:9s} {seconds:7.2f} s (cpu idle before: {idle[-1]:.0%}){extra}", flush=True)
    return {"runs": runs, "idle": idle, "phases": phases, "printed": printed.strip().splitlines()}


def startup() -> dict:
    """Seconds of a fresh process importing torch alone, and what the command imports
    (fastest of 3 each, after a quiet moment)."""
    out = {}
    for key, code in (("python", "pass"), ("torch", "import torch"),
                      ("rlsignals_rank1", "import rlsignals.cli, rlsignals.rank1.track"),
                      ("contender_imports", "import torch, scipy.sparse.linalg, safetensors.torch")):
        times = []
        for _ in range(3):
            wait_quiet()
            times.append(wall([sys.executable, "-c", code])[0])
        out[key] = min(times)
    return out


def in_process_split(base: Path, ckpts: list[Path], out: Path) -> dict:
    """track_rank1's own clock (read, solve, write) and its wall time, in this process (the
    extension loaded beforehand)."""
    import rlsignals
    from rlsignals.rank1.track import track_rank1

    rlsignals.delta_svd(torch.randn(1, 8, 8), backend="auto")
    shutil.rmtree(out, ignore_errors=True)
    clock: dict[str, float] = {}
    wait_quiet()
    start = time.perf_counter()
    track_rank1(base, ckpts, out, progress=False, timings=clock)
    clock["track_rank1"] = time.perf_counter() - start
    return clock


def check_store(store: Path, ref: list[dict]) -> dict:
    """Our store against the fp64 answers."""
    from rlsignals.rank1.trajectory import Trajectory

    traj = Trajectory.open(store)
    worst = worst_vec = 0.0
    bound_below = flag_wrong = undetermined = 0
    iters, flagged_sin = [], []
    for name in traj.modules:
        sigma, bound = traj.scalar("sigma", name), traj.scalar("err_bound", name)
        flags, (u, _) = traj.scalar("vectors_undetermined", name), traj.vectors(name)
        iters += traj.scalar("iters", name).tolist()
        for c, answer in enumerate(ref):
            err = abs(float(sigma[c]) - answer[name]["sigma1"]) / answer[name]["sigma1"]
            sin_u = sin_angle(u[c], answer[name]["u"])
            worst = max(worst, err)
            bound_below += int(float(bound[c]) < err)
            flag_wrong += int(bool(flags[c]) != (sin_u > TARGET))
            undetermined += int(bool(flags[c]))
            if flags[c]:
                flagged_sin.append(sin_u)
            else:
                worst_vec = max(worst_vec, sin_u)
    return {"max_sigma_err": worst, "bound_below_true_err": bound_below, "flag_disagrees_with_sin_u": flag_wrong,
            "undetermined": undetermined, "solves": len(traj.modules) * len(ref),
            "modules_undetermined": len(traj.undetermined()), "modules": len(traj.modules),
            "max_sin_u_determined": worst_vec, "min_sin_u_undetermined": min(flagged_sin, default=None),
            "mean_passes": sum(iters) / len(iters), "max_passes": max(iters),
            "certified": traj.certified_count()[0]}


def check_contender(out: Path, ref: list[dict]) -> float:
    """Max sigma_1 error of the contender's output (as run) against the fp64 answers."""
    worst = 0.0
    with safe_open(str(out), framework="pt") as f:
        for c, answer in enumerate(ref):
            for name, r in answer.items():
                worst = max(worst, abs(float(f.get_tensor(f"{c}::{name}::sigma")[0]) - r["sigma1"]) / r["sigma1"])
    return worst


def bench_model(model: str, layers: int, count: int, reps: int, workdir: Path) -> list[dict]:
    root = workdir / f"{model}-L{layers}-C{count}"
    print(f"{model}: {layers} layers, base + {count} checkpoints in {root} (made once, then reused) ...", flush=True)
    base, ckpts = write_model(root, model, layers, count)
    ref = reference(root, base, ckpts)
    plan_path = root / "plan.json"
    if not plan_path.exists():
        print("  tuning the best script with the fp64 answers ...", flush=True)
        plan = tune_plan(str(base), [str(c) for c in ckpts],
                         [{name: r["sigma1"] for name, r in answer.items()} for answer in ref])
        plan_path.write_text(json.dumps(plan))
    plan = json.loads(plan_path.read_text())
    scratch = root / "scratch"
    scratch.mkdir(exist_ok=True)
    print("  start-up and the in-process split ...", flush=True)
    starts = startup()
    split = in_process_split(base, ckpts, scratch / "split")
    print("  race ...", flush=True)
    raced = race(base, ckpts, plan_path, scratch, reps)
    checks = check_store(scratch / "traj", ref)
    contender_err = check_contender(scratch / "contender.safetensors", ref)
    ours_s, theirs_s = statistics.median(raced["runs"]["ours"]), statistics.median(raced["runs"]["contender"])
    shapes = MODELS[model]["shapes"]
    modules = layers * len(shapes)
    fields = {"op": "checkpoint_rank1", "mode": "whole_model", "model_shape": model, "layers": layers,
              "checkpoints": count, "modules": modules, "dtype": "bfloat16", "device": "cpu", "reps": reps,
              "families": sorted({family_of(n) for n in ref[0]}),
              "ratio_range": [min(r["sigma1"] / r["sigma2"] for a in ref for r in a.values()),
                              max(r["sigma1"] / r["sigma2"] for a in ref for r in a.values())],
              "checkpoint_bytes": (base / "model.safetensors").stat().st_size, "cpu_idle_before_runs": raced["idle"]}
    phases = {key: statistics.median(p[key] for p in raced["phases"]) for key in raced["phases"][0]}
    choices: dict[str, int] = {}
    for per_ckpt in plan["modules"].values():
        for choice in per_ckpt:
            choices[choice["solver"]] = choices.get(choice["solver"], 0) + 1
    other = ours_s - starts["rlsignals_rank1"] - split["track_rank1"]
    ours = {**fields, "method": "rlsignals rank1 (whole command)", "seconds": ours_s,
            "runs": raced["runs"]["ours"], "startup_s": starts["rlsignals_rank1"], "torch_import_s": starts["torch"],
            "read_s": split.get("read", 0.0), "solve_s": split.get("solve", 0.0), "write_s": split.get("write", 0.0),
            "track_rank1_s": split["track_rank1"], "other_s": other, "printed": raced["printed"], **checks}
    theirs = {**fields, "method": "best script (tuned torch.svd_lowrank / scipy svds)", "seconds": theirs_s,
              "runs": raced["runs"]["contender"], "phases": phases, "startup_s": starts["contender_imports"],
              "max_sigma_err": contender_err, "choices": choices,
              "tuned_solve_s": sum(sum(v) for v in plan["seconds"].values())}
    ours["x_vs_best"] = theirs_s / ours_s
    ours["x_vs_best_without_startup"] = (theirs_s - starts["contender_imports"]) / (ours_s - starts["rlsignals_rank1"])
    return [ours, theirs]


def readme_rows(records: list[dict]) -> list[dict]:
    rows = []
    for ours in (r for r in records if r["method"].startswith("rlsignals rank1 (whole")):
        theirs = next(r for r in records if r["model_shape"] == ours["model_shape"] and r["method"].startswith("best"))
        name = {"qwen2.5-0.5b": "Qwen2.5-0.5B", "qwen2.5-7b": "Qwen2.5-7B"}[ours["model_shape"]]
        lo, hi = ours["ratio_range"]
        case = (f"{name} shapes, {ours['layers']} layers ({ours['modules']} matrices), base + {ours['checkpoints']} "
                f"checkpoints, bf16; RL-like updates: spikes over a noise bulk (sigma1/sigma2 {lo:.2f}-{hi:.2f}), "
                f"rank-3, friendly, flat tops; cpu")
        result = (f"{ours['seconds']:.1f} s (start-up {ours['startup_s']:.1f}, of which importing torch "
                  f"{ours['torch_import_s']:.1f}; reading, solving and writing "
                  f"{ours['seconds'] - ours['startup_s']:.1f}, "
                  f"nearly all solving: the checkpoints are memory-mapped); {ours['x_vs_best']:.1f}x the best script "
                  f"({ours['x_vs_best_without_startup']:.1f}x without either's start-up); sigma1 err "
                  f"{ours['max_sigma_err']:.1e} (best script {theirs['max_sigma_err']:.1e}), "
                  f"{ours['mean_passes']:.1f} passes mean; {ours['modules_undetermined']} of {ours['modules']} "
                  f"modules: top not separated, vectors undetermined")
        ph = theirs["phases"]
        baseline = (f"the best script: torch + scipy + safetensors, fp32 delta per module, the fastest of "
                    f"torch.svd_lowrank / scipy svds (PROPACK, ARPACK) tuned per module with the fp64 answer to "
                    f"sigma1 err <= 1e-4: {theirs['seconds']:.1f} s (imports {ph['imports']:.1f}, read and delta "
                    f"{ph['read_and_delta']:.1f}, solve {ph['solve']:.1f}), same run, alternating")
        rows.append({"what": "`rlsignals rank1`, whole command (sigma1, u1, v1 of every module)", "case": case,
                     "result": result, "baseline": baseline})
    return rows


def run(models: list[str], layers: dict[str, int], count: int, reps: int, workdir: Path) -> list[dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    records = []
    for model in models:
        records += bench_model(model, layers[model], count, reps, workdir)
    return records
