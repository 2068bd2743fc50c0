"""Jump ahead: write the checkpoint that the early trajectory predicts.

Three extrapolators with one interface, ``extrapolate(method=...)``:

  alpharl      per module, 1-component PLS between the aligned rank-1 features
               x_t = sigma_t u_t and accuracy, inverted at ``target_accuracy``;
               the predicted update x* v_T^T is added to the latest fitted
               checkpoint W_T (the released method; ``update="replace"`` instead
               swaps the rank-1 part, W_T + (x* - x_T) v_T^T)
  linear_step  per module, the line x_t = a + b * step through the fitted
               features, evaluated at ``target_step``: W_T + (x* - x_T) v_T^T
  two_point    W_0 + a (W_T - W_0) with a = target_step / step_T (or ``factor``)

alpharl and linear_step fit the modules' u_1; where that is undetermined at a fitted
checkpoint (the trajectory's ``vectors_undetermined``: the top of the update is not
separated, sigma_1 / sigma_2 near 1, so u_1 is an arbitrary direction of a near-degenerate
top and a fit on it extrapolates noise), ``undetermined="keep"`` (the default) leaves the
module at the latest fitted checkpoint's weights and ``"use"`` extrapolates it all the same.
two_point reads the weights, not u_1, and extrapolates every module.

The result is a loadable HF checkpoint (the latest fitted checkpoint's weights
with the tracked modules replaced, its config and tokenizer; none of its
trainer state, which would not match the new weights) plus ``extrapolation.json`` recording the
method, the fitted checkpoints, what was done with modules whose vectors are undetermined
("vectors_undetermined": policy, count, modules) and, per module, the fit's R^2 in-sample
and leave-one-out (or "kept" for a module left as it was). ``summary_lines`` says it in a
few lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlsignals.io.checkpoints import Checkpoint, check_shapes, write_checkpoint
from rlsignals.io.errors import UserError
from rlsignals.io.tables import read_table
from rlsignals.rank1.alpharl import UPDATES, aligned_features, alpharl_update, linear_in_step
from rlsignals.rank1.trajectory import INDEX, Trajectory

METHODS = ("alpharl", "linear_step", "two_point")
UNDETERMINED = ("keep", "use")  # what alpharl / linear_step do with modules whose u_1 is undetermined
REPORT = "extrapolation.json"


def open_trajectory(root: str | Path) -> Trajectory:
    """Open a trajectory store and check it whole before any work (``Trajectory.verify``:
    every record file readable with every module) and that it holds a record."""
    traj = Trajectory.open(root)
    traj.verify()
    if not traj.records:
        raise UserError(f"{Path(root) / INDEX}: holds no checkpoint yet; run `rlsignals rank1` to completion first")
    return traj


def read_accuracy(path: str | Path, step_field: str = "step", acc_field: str = "accuracy") -> dict[int, float]:
    """step -> accuracy from a table file (.jsonl, .csv, .json or .parquet)."""
    rows = read_table(path, "accuracy")
    out = {}
    for i, row in enumerate(rows):
        if step_field not in row or acc_field not in row:
            raise ValueError(f"{path}: row {i} lacks {step_field!r} or {acc_field!r} (fields: {sorted(row)})")
        out[int(row[step_field])] = float(row[acc_field])
    return out


def _fitted(traj: Trajectory, accuracy: dict[int, float], fit_steps: Sequence[int] | None,
            accuracy_path: str) -> list[int]:
    """Indices of the trajectory's checkpoints to fit, all with an accuracy."""
    steps = traj.steps
    if any(s is None for s in steps):
        raise ValueError("some checkpoints of the trajectory have no step; rerun `rlsignals rank1` with --steps")
    orphans = sorted(set(accuracy) - set(steps))
    if orphans:
        raise ValueError(f"{accuracy_path}: steps {orphans[:10]} have no checkpoint in the trajectory "
                         f"(its steps: {steps})")
    wanted = set(fit_steps) if fit_steps is not None else set(accuracy)
    missing = sorted(wanted - set(accuracy))
    if missing:
        raise ValueError(f"{accuracy_path}: no accuracy for fitted steps {missing[:10]}")
    chosen = [i for i, s in enumerate(steps) if s in wanted]
    if len(chosen) < 2:
        raise ValueError(f"need at least 2 fitted checkpoints with an accuracy, got {len(chosen)}")
    return chosen


def extrapolate(base: str | Path, traj: Trajectory, out: str | Path, *, method: str = "alpharl",
                accuracy: dict[int, float] | None = None, accuracy_path: str = "<accuracy>",
                fit_steps: Sequence[int] | None = None, target_accuracy: float | None = None,
                target_step: int | None = None, factor: float | None = None, update: str = "released",
                undetermined: str = "keep") -> Path:
    """Write the extrapolated checkpoint to ``out``; see the module docstring."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if undetermined not in UNDETERMINED:
        raise ValueError(f"undetermined must be one of {UNDETERMINED}, got {undetermined!r}")
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    if method == "alpharl" and (accuracy is None or target_accuracy is None):
        raise ValueError("alpharl needs the accuracy per step and target_accuracy")
    if method == "linear_step" and target_step is None:
        raise ValueError("linear_step needs target_step")
    if method == "two_point" and target_step is None and factor is None:
        raise ValueError("two_point needs target_step or factor")
    if accuracy is not None:
        chosen = _fitted(traj, accuracy, fit_steps, accuracy_path)
    else:
        steps = traj.steps
        chosen = [i for i, s in enumerate(steps) if fit_steps is None or s in set(fit_steps)]
        if not chosen:
            raise UserError(f"fit_steps {list(fit_steps or [])[:10]} match no checkpoint of the trajectory "
                            f"(its steps: {steps})")
        if method != "two_point" or factor is None:
            if any(steps[i] is None for i in chosen):
                raise UserError("some checkpoints of the trajectory have no step; rerun `rlsignals rank1` with "
                                "--steps")
    latest = chosen[-1]
    latest_path = traj.records[latest].path
    base_ckpt, latest_ckpt = Checkpoint(base), Checkpoint(latest_path)
    source = f"the trajectory {traj.root / INDEX}" if traj.root else "the trajectory"
    check_shapes(base_ckpt, traj.shapes, source)
    check_shapes(latest_ckpt, traj.shapes, source)
    report: dict[str, Any] = {"method": method, "base": str(base), "fitted_checkpoints": [traj.records[i].path
                                                                                          for i in chosen],
                              "fitted_steps": [traj.steps[i] for i in chosen], "written_from": latest_path,
                              "target_accuracy": target_accuracy, "target_step": target_step, "update": update,
                              "modules": {}}
    flagged = traj.undetermined(chosen)
    uses_vectors = method != "two_point"
    report["vectors_undetermined"] = {
        "policy": (undetermined if uses_vectors else "not used (two_point reads the weights, not u_1)"),
        "count": len(flagged), "of": len(traj.modules), "modules": flagged}
    kept = set(flagged) if uses_vectors and undetermined == "keep" else set()
    replaced = {}
    for module in traj.modules:
        if module in kept:  # written as the latest fitted checkpoint has it
            report["modules"][module] = {"kept": "vectors undetermined (top not separated)"}
            continue
        w_latest = latest_ckpt.get(module).float()
        if method == "two_point":
            step_t = traj.steps[latest]
            a = factor if factor is not None else target_step / step_t
            replaced[module] = base_ckpt.get(module).float() + a * (w_latest - base_ckpt.get(module).float())
            report["modules"][module] = {"factor": a}
            continue
        u, v = traj.vectors(module)
        sigma = traj.scalar("sigma", module)[chosen]
        if method == "alpharl":
            delta, fit, flips = alpharl_update(sigma, u[chosen], v[chosen],
                                               [accuracy[traj.steps[i]] for i in chosen], target_accuracy, update)
            info: dict[str, Any] = {"r2": fit.r2, "r2_loo": fit.r2_loo, "slope": fit.slope}
        else:
            features, v_aligned, flips = aligned_features(sigma, u[chosen], v[chosen])
            x_star, r2 = linear_in_step(features, [traj.steps[i] for i in chosen], target_step)
            delta = torch.outer(torch.as_tensor(x_star - features[-1], dtype=torch.float32), v_aligned[-1])
            info = {"r2": r2}
        info["sign_flips"] = int(flips.sum())
        info["update_norm"] = float(delta.norm())
        if module in flagged:
            info["vectors_undetermined"] = True
        replaced[module] = w_latest + delta
        report["modules"][module] = info
    r2s = [m["r2"] for m in report["modules"].values() if "r2" in m and math.isfinite(m["r2"])]
    report["mean_r2"] = float(np.mean(r2s)) if r2s else None
    return write_checkpoint(latest_ckpt, out, replaced, {REPORT: json.dumps(report, indent=1) + "\n"},
                            command="extrapolate")


def summary_lines(out: str | Path) -> list[str]:
    """What ``rlsignals extrapolate`` prints when done, from ``out``'s extrapolation.json:
    the method and where it wrote, and what it did with modules whose vectors are
    undetermined."""
    out = Path(out)
    report = json.loads((out / REPORT).read_text())
    lines = [f"{report['method']} extrapolation -> {out} (what was done: {out / REPORT})"]
    flags = report["vectors_undetermined"]
    count, total = flags["count"], flags["of"]
    if not count:
        lines.append(f"0 of {total} modules with undetermined vectors at the fitted checkpoints")
    elif flags["policy"] == "keep":
        lines.append(f"{count} of {total} modules kept at the latest fitted checkpoint's weights: top not "
                     "separated, vectors undetermined (undetermined='use' extrapolates them all the same)")
    elif flags["policy"] == "use":
        lines.append(f"{count} of {total} modules extrapolated although their vectors are undetermined (top not "
                     "separated): their fit is on an arbitrary direction of a near-degenerate top")
    else:
        lines.append(f"{count} of {total} modules have undetermined vectors; {report['method']} does not use them")
    return lines
