"""Benchmark the end-to-end demo: `make demo`'s run (``run_demo`` with the default
DemoConfig) timed whole and by phase, with its testbed figures, written to
bench/results/demo-<device>.{json,txt,png}.

The README quotes the time against the issue's budget (10 minutes on the
project's 2-core CPU) and the lift of held-out greedy accuracy of the uniform
RL run, each figure with its 95% interval (paired bootstrap over problems).
Usage: python bench/demo.py [--out DIR] [--note TEXT]
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

BUDGET_S = 600.0


def demo_rows(results: dict, wall_s: float) -> list[dict]:
    """README rows: the run's time against the budget, and the testbed's lift."""
    cfg = results["config"]
    case = (f"`make demo`: {cfg['steps']} RL steps x {cfg['prompts_per_step']} prompts x {cfg['generations']} "
            f"samples, GAIN-RL and uniform arms, {cfg['eval_prompts']} held-out problems (levels "
            f"{', '.join(map(str, cfg['levels']))}), rank-1/AlphaRL/geometry analysis and SFT")
    phases = ", ".join(f"{name} {s:.0f} s" for name, s in results["phase_seconds"].items())
    rows = [readme_row("`make demo`, whole run", case, f"{wall_s:.0f} s ({phases})",
                       f"the budget: {BUDGET_S:.0f} s on this 2-core CPU")]
    for row in results["testbed"]:
        start, end = Estimate(**row["start"]), Estimate(**row["end"])
        rows.append(readme_row(f"demo testbed: {row['figure']} (uniform RL run)", "the same run",
                               f"{start.format()} -> {end.format()} ({end.value - start.value:+.3f})",
                               "the starting model (step 0), same held-out problems"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default bench/results)")
    parser.add_argument("--note", help="a remark on how it was run (e.g. the machine's load), kept in the JSON")
    args = parser.parse_args()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        results = run_demo(Path(tmp) / "demo", DemoConfig(), progress=False)
        wall_s = time.perf_counter() - started
        tag = f"demo-{device_tag(device)}"
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "demo" / "demo.txt", args.out / f"{tag}.txt")
        shutil.copyfile(Path(tmp) / "demo" / "demo.png", args.out / f"{tag}.png")
    record = {"wall_s": wall_s, "budget_s": BUDGET_S, "within_budget": wall_s <= BUDGET_S,
              "phase_seconds": results["phase_seconds"]}
    extra = {"readme_rows": demo_rows(results, wall_s), "demo": results}
    if args.note:
        extra["note"] = args.note
    path = write_results("demo", device, [record], extra, results_dir=args.out)
    print(f"wrote {path} ({wall_s:.0f} s; budget {BUDGET_S:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
