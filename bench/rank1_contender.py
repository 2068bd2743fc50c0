"""The best script a user could write for `rlsignals rank1`'s job without rlsignals.

It imports torch, scipy and safetensors, reads the base and each checkpoint (memory-mapped
safetensors), forms each module's fp32 update dW = W_t - W_0 and takes its top singular
triplet with whichever of torch.svd_lowrank or scipy's svds (PROPACK, ARPACK) the plan
names for that module and checkpoint, then saves sigma_1, u_1, v_1 of every module
(safetensors). The plan is tuned by bench/checkpoint_rank1.py with knowledge of the fp64
answer: per module and checkpoint, the fastest solver and setting whose sigma_1 is within
1e-4 of it (``tune``), which favours this script.

Usage: python bench/rank1_contender.py PLAN.json OUT.safetensors
PLAN.json: {"base": folder, "checkpoints": [folders], "modules": {name: [choice per checkpoint]}},
a choice {"solver": "svd_lowrank", "q": q, "niter": niter} or {"solver": "propack" | "arpack",
"tol": tol}. Prints one JSON line with the seconds of each phase (imports, read and form
the deltas, solve, write).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from scipy.sparse.linalg import svds  # noqa: E402

IMPORTED = time.perf_counter()
PROPACK_MAXITER = 400


def seed_of(name: str, checkpoint: int) -> int:
    return (zlib.crc32(name.encode()) + checkpoint) % 2 ** 31


def top_triplet(delta: torch.Tensor, choice: dict, seed: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(sigma_1, u_1, v_1) of the fp32 matrix ``delta`` by the chosen solver and setting."""
    if choice["solver"] == "svd_lowrank":
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(delta, q=choice["q"], niter=choice["niter"])
        return float(s[0]), u[:, 0], v[:, 0]
    extra = {"maxiter": PROPACK_MAXITER} if choice["solver"] == "propack" else {}
    u, s, vt = svds(delta.numpy(), k=1, tol=choice["tol"], solver=choice["solver"], random_state=seed, **extra)
    return float(s[0]), torch.from_numpy(u[:, 0]), torch.from_numpy(vt[0])


def open_folder(folder: str) -> dict:
    """tensor name -> an open safetensors handle of a checkpoint folder (single file or sharded)."""
    path = Path(folder)
    index = path / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists()
             else ["model.safetensors"])
    handles = {}
    for file in files:
        handle = safe_open(str(path / file), framework="pt")
        for name in handle.keys():
            handles[name] = handle
    return handles


def main(plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    base = open_folder(plan["base"])
    ckpts = [open_folder(c) for c in plan["checkpoints"]]
    read = solve = 0.0
    results = {}
    for name, choices in plan["modules"].items():
        t0 = time.perf_counter()
        w0 = base[name].get_tensor(name)
        read += time.perf_counter() - t0
        for c, (ckpt, choice) in enumerate(zip(ckpts, choices)):
            t0 = time.perf_counter()
            delta = ckpt[name].get_tensor(name).float()
            delta.sub_(w0)
            t1 = time.perf_counter()
            sigma, u, v = top_triplet(delta, choice, seed_of(name, c))
            solve += time.perf_counter() - t1
            read += t1 - t0
            results[f"{c}::{name}::sigma"] = torch.tensor([sigma])
            results[f"{c}::{name}::u"] = u.float().contiguous()
            results[f"{c}::{name}::v"] = v.float().contiguous()
    t0 = time.perf_counter()
    save_file(results, out_path)
    write = time.perf_counter() - t0
    print(json.dumps({"imports": IMPORTED - START, "read_and_delta": read, "solve": solve, "write": write}))


# ---- tuning (bench/checkpoint_rank1.py): per module and checkpoint, with the fp64 answer -----------------
TARGET = 1e-4
LOWRANK_QS = (2, 4, 8, 16)
LOWRANK_NITERS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
SVDS_TOLS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0)


def _seconds(delta: torch.Tensor, choice: dict, seed: int, reps: int) -> float:
    """Fastest of ``reps`` runs of top_triplet (the fastest favours the contender)."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        top_triplet(delta, choice, seed)
        best = min(best, time.perf_counter() - t0)
    return best


def tune(delta: torch.Tensor, sigma: float, seed: int, reps: int = 3) -> tuple[dict, float, float]:
    """(choice, seconds, sigma_1 rel. error) of the fastest solver and setting whose sigma_1 is
    within TARGET of ``sigma`` (the fp64 answer): per family (svd_lowrank at each q, PROPACK,
    ARPACK) the first setting of its ladder that is accurate (fewest iterations, loosest tol),
    then the fastest of those. Without any accurate setting, ARPACK at tol = 0 (full precision)."""
    candidates = []
    ladders = [[{"solver": "svd_lowrank", "q": q, "niter": it} for it in LOWRANK_NITERS] for q in LOWRANK_QS]
    ladders += [[{"solver": solver, "tol": tol} for tol in SVDS_TOLS] for solver in ("propack", "arpack")]
    for ladder in ladders:
        for choice in ladder:
            try:
                got = top_triplet(delta, choice, seed)[0]
            except Exception:  # noqa: BLE001 - a solver failing at this setting counts as not accurate
                continue
            if abs(got - sigma) / sigma <= TARGET:
                candidates.append((choice, abs(got - sigma) / sigma))
                break
    if not candidates:
        choice = {"solver": "arpack", "tol": 0.0}
        return choice, _seconds(delta, choice, seed, 1), abs(top_triplet(delta, choice, seed)[0] - sigma) / sigma
    timed = [(choice, _seconds(delta, choice, seed, reps), err) for choice, err in candidates]
    return min(timed, key=lambda t: t[1])


def tune_plan(base: str, checkpoints: list[str], sigmas: list[dict[str, float]]) -> dict:
    """The plan ``main`` runs: per module and checkpoint the ``tune``d choice (and, for the
    record, its seconds and error), the deltas formed as ``main`` forms them."""
    plan = {"base": base, "checkpoints": checkpoints, "modules": {}, "seconds": {}, "errors": {}}
    w0s = open_folder(base)
    ckpts = [open_folder(c) for c in checkpoints]
    for name in sigmas[0]:
        w0 = w0s[name].get_tensor(name)
        plan["modules"][name], plan["seconds"][name], plan["errors"][name] = [], [], []
        for c, ckpt in enumerate(ckpts):
            delta = ckpt[name].get_tensor(name).float()
            delta.sub_(w0)
            choice, seconds, err = tune(delta, sigmas[c][name], seed_of(name, c))
            plan["modules"][name].append(choice)
            plan["seconds"][name].append(seconds)
            plan["errors"][name].append(err)
    return plan


if __name__ == "__main__":
    main(*sys.argv[1:3])
