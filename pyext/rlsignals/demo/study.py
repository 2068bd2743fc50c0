"""The multi-seed study: the demo run with several seeds, each claim's figure
pooled over them.

    python -m rlsignals.demo.study --seeds 5 --out bench/results/demo-study

Seed s changes the training and held-out problems, the RL sampling and the
SFT batches (``DemoConfig.seed``); the starting model is the shipped one. Per
claim, the seeds' figures x_1..x_N give the mean and Student's t 95% interval
over seeds (``stats.t_interval``): that interval covers the randomness of
training as well as the choice of problems, which one seed's bootstrap over
problems does not. The verdict rule is the claims table's (claims.verdict).

Writes ``study.json`` (every seed's figures, the pooled rows, and
``readme_rows``: the same as what/case/result/baseline strings for the README's
table), ``study.txt`` (the testbed's figures and the claims table) and
``study.png`` (each claim's per-seed figures, the pooled interval and the
paper's threshold) into ``--out``; each seed's full demo folder is
``--out/seed-<s>`` (resumed: a seed whose demo.json exists is not rerun).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlsignals.demo.claims import verdict
from rlsignals.demo.run import DemoConfig, run_demo
from rlsignals.stats import Estimate, t_interval


def pool(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Claims rows pooled over seeds: ``per_seed`` holds each seed's demo results
    (their ``claims`` lists, same rows in the same order). A seed whose figure is
    undefined (e.g. a curve that never reaches the target) is left out of the pool
    and counted in ``undefined``."""
    rows = []
    for i, first in enumerate(per_seed[0]["claims"]):
        values = [r["claims"][i]["value"] for r in per_seed]
        est = t_interval(values)
        rows.append({"name": first["name"], "paper": first["paper"], "per_seed": values, **est.as_dict(),
                     "undefined": sum(not math.isfinite(v) for v in values),
                     "threshold": first["threshold"], "side": first["side"],
                     "verdict": verdict(est, first["threshold"], first["side"]), "spec": first["spec"]})
    return rows


def pool_testbed(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The testbed's figures (greedy accuracy, pass@1, pass@k of the uniform run at
    start and end, and the end minus the start) pooled over seeds like the claims."""
    rows = []
    for i, first in enumerate(per_seed[0]["testbed"]):
        start = [r["testbed"][i]["start"]["value"] for r in per_seed]
        end = [r["testbed"][i]["end"]["value"] for r in per_seed]
        rows.append({"figure": first["figure"], "start": t_interval(start).as_dict(),
                     "end": t_interval(end).as_dict(),
                     "lift": t_interval([b - a for a, b in zip(start, end)]).as_dict(),
                     "per_seed_start": start, "per_seed_end": end})
    return rows


def _undefined(row: dict[str, Any], seeds: int) -> str:
    """The note for a pooled row whose figure was undefined on some seeds."""
    if not row["undefined"]:
        return ""
    return f" (undefined on {row['undefined']} of {seeds} seeds, pooled over the rest)"


def readme_rows(testbed: list[dict[str, Any]], rows: list[dict[str, Any]], seeds: int,
                problems: int) -> list[dict[str, str]]:
    """The pooled figures as README table rows: what, case, result, baseline."""
    case = f"demo, {seeds} seeds x {problems} held-out problems; mean [t 95% interval over seeds]"
    out = []
    for t in testbed:
        start, end, lift = (Estimate(**t[k]) for k in ("start", "end", "lift"))
        out.append({"what": f"{t['figure']}, uniform RL", "case": case,
                    "result": f"{end.format()} at the end ({lift.format('+.3f')} over the start)",
                    "baseline": f"{start.format()} at the start"})
    for r in rows:
        est = Estimate(r["value"], r["low"], r["high"])
        out.append({"what": r["name"], "case": case,
                    "result": f"{est.format(r['spec'])}: {r['verdict']}{_undefined(r, seeds)}",
                    "baseline": f"paper: {r['paper']}"})
    return out


def format_study(rows: list[dict[str, Any]], seeds: int, testbed: Sequence[dict[str, Any]] = ()) -> str:
    width = max(len(r["name"]) for r in rows)
    lines = [f"rlsignals demo study: {seeds} seeds; ours = mean over seeds [Student t 95% interval over seeds]", ""]
    if testbed:
        lines.append(f"  {'testbed (uniform run)':<22}{'start':<26}{'end':<26}end - start")
        for t in testbed:
            start, end, lift = (Estimate(**t[k]) for k in ("start", "end", "lift"))
            lines.append(f"  {t['figure']:<22}{start.format():<26}{end.format():<26}{lift.format('+.3f')}")
        lines.append("")
    lines.append(f"  {'claim':<{width}}  {'paper':<34}{'ours [95% interval]':<28}verdict")
    for r in rows:
        est = Estimate(r["value"], r["low"], r["high"])
        lines.append(f"  {r['name']:<{width}}  {r['paper']:<34}{est.format(r['spec']):<28}{r['verdict']}")
        if r["undefined"]:
            lines.append(f"  {'':<{width}}   {_undefined(r, seeds)}")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, len(rows)), 4))
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["per_seed"]), r["per_seed"], s=10, color="gray")
        if math.isfinite(r["low"]):
            ax.errorbar([i], [r["value"]], yerr=[[r["value"] - r["low"]], [r["high"] - r["value"]]], fmt="o",
                        capsize=4, color="C0")
        ax.scatter([i], [r["threshold"]], marker="_", s=300, color="red")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([str(i + 1) for i in range(len(rows))])
    ax.set_xlabel("claim (row of study.txt)")
    ax.set_title("per-seed figures (gray), mean with t 95% interval (blue), paper's threshold (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_study(out: str | Path, seeds: int, config: DemoConfig | None = None, progress: bool = True) -> dict:
    """Run the demo for seeds 0..seeds-1 (resuming finished ones) and pool the claims."""
    if seeds < 2:
        raise ValueError(f"seeds must be >= 2 for an interval over seeds, got {seeds}")
    out = Path(out)
    base = config or DemoConfig()
    per_seed = []
    for seed in range(seeds):
        folder = out / f"seed-{seed}"
        done = folder / "demo.json"
        per_seed.append(json.loads(done.read_text()) if done.exists() else
                        run_demo(folder, dataclasses.replace(base, seed=seed), progress=progress))
    rows, testbed = pool(per_seed), pool_testbed(per_seed)
    study = {"config": dataclasses.asdict(base), "seeds": seeds, "testbed": testbed, "claims": rows,
             "readme_rows": readme_rows(testbed, rows, seeds, base.eval_prompts),
             "seconds_per_seed": [r["seconds"] for r in per_seed]}
    (out / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    (out / "study.txt").write_text(format_study(rows, seeds, testbed) + "\n")
    _plot(rows, out / "study.png")
    print(format_study(rows, seeds, testbed))
    return study


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rlsignals.demo.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", default="bench/results/demo-study")
    p.add_argument("--quick", action="store_true", help="the test suite's reduced size")
    args = p.parse_args(argv)
    run_study(args.out, args.seeds, DemoConfig.quick() if args.quick else None)


if __name__ == "__main__":
    main()
