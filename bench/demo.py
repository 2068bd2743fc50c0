"""Benchmark the end-to-end demo: `make demo`'s run (``run_demo`` with the default
DemoConfig) timed whole and by phase, with its testbed figures and claims, written to
bench/results/demo-<device>.{json,txt,png}; with ``--testbed smollm2`` the same pipeline
on SmolLM2-135M-Instruct and SVAMP's arithmetic (``DemoConfig.real()``, after
`rlsignals setup-real`), written to bench/results/demo-smollm2-<device>.*.

The README quotes the time against the budget (10 minutes on the project's 2-core CPU
for `make demo`, about an hour for the real model), the lift of held-out greedy accuracy
of the uniform RL run and each claim, each figure with its 95% interval (paired
bootstrap over problems) and verdict.
Usage: python bench/demo.py [--testbed embedded|smollm2] [--out DIR] [--note TEXT]
The exact command that made a result file is in its JSON ("command").
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, device_tag, readme_row, write_results

from rlsignals.demo.run import DemoConfig, run_demo
from rlsignals.stats import Estimate

BUDGET_S = {"embedded": 600.0, "smollm2": 3600.0}
TITLES = {"embedded": ("`make demo`", "demo testbed"), "smollm2": ("real model (SmolLM2-135M), demo pipeline",
                                                                   "real model")}


def demo_rows(results: dict, wall_s: float, testbed: str) -> list[dict]:
    """README rows: the run's time against the budget, the testbed's lift and every claim."""
    cfg = results["config"]
    run, figure = TITLES[testbed]
    task = f"levels {', '.join(map(str, cfg['levels']))}" if testbed == "embedded" else "SVAMP's arithmetic"
    case = (f"{run}: {cfg['steps']} RL steps x {cfg['prompts_per_step']} prompts x {cfg['generations']} "
            f"samples, GAIN-RL, uniform and uniform + jump arms, {cfg['eval_prompts']} held-out problems ({task}), "
            "rank-1/AlphaRL/geometry analysis and SFT")
    phases = ", ".join(f"{name} {s:.0f} s" for name, s in results["phase_seconds"].items())
    rows = [readme_row(f"{run}, whole run", case, f"{wall_s:.0f} s ({phases})",
                       f"the budget: {BUDGET_S[testbed]:.0f} s on this 2-core CPU")]
    for row in results["testbed"]:
        start, end = Estimate(**row["start"]), Estimate(**row["end"])
        rows.append(readme_row(f"{figure}: {row['figure']} (uniform RL run)", "the same run",
                               f"{start.format()} -> {end.format()} ({end.value - start.value:+.3f})",
                               "the starting model (step 0), same held-out problems"))
    for claim in results["claims"]:
        ours = Estimate(claim["value"], claim["low"], claim["high"]).format(claim["spec"])
        rows.append(readme_row(f"{figure}: {claim['name']}", f"the same run, one seed; {claim['note']}",
                               f"{ours}: {claim['verdict']}", f"paper: {claim['paper']}"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default bench/results)")
    parser.add_argument("--note", help="a remark on how it was run (e.g. the machine's load), kept in the JSON")
    parser.add_argument("--testbed", choices=tuple(BUDGET_S), default="embedded")
    args = parser.parse_args()
    device = torch.device("cpu")
    config = DemoConfig() if args.testbed == "embedded" else DemoConfig.real()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        results = run_demo(Path(tmp) / "demo", config, progress=False)
        wall_s = time.perf_counter() - started
        tag = "demo-" + ("" if args.testbed == "embedded" else f"{args.testbed}-") + device_tag(device)
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "demo" / "demo.txt", args.out / f"{tag}.txt")
        shutil.copyfile(Path(tmp) / "demo" / "demo.png", args.out / f"{tag}.png")
    budget = BUDGET_S[args.testbed]
    record = {"wall_s": wall_s, "budget_s": budget, "within_budget": wall_s <= budget,
              "phase_seconds": results["phase_seconds"]}
    extra = {"readme_rows": demo_rows(results, wall_s, args.testbed), "demo": results,
             "command": "python bench/demo.py " + " ".join(sys.argv[1:])}
    if args.note:
        extra["note"] = args.note
    path = write_results(tag.rsplit("-", 1)[0], device, [record], extra, results_dir=args.out)
    print(f"wrote {path} ({wall_s:.0f} s; budget {budget:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
