"""Benchmark the rank-1 checkpoint pipeline on real 7B layer shapes.

Writes a synthetic Llama-7B-shaped checkpoint folder (a few decoder layers,
bf16, q/k/v/o 4096 x 4096, gate/up 11008 x 4096, down 4096 x 11008) as the base
and C checkpoints whose updates are rank-1-dominated plus dense noise (like RL
updates), then runs ``track_rank1`` over them, and reports: seconds per layer
per checkpoint, peak RAM, the store's size against one checkpoint's, and the
full-SVD approach (torch.linalg.svd in fp32 of one 4096 x 4096 update, as the
released AlphaRL code does, on the same device as the pipeline), measured once and
scaled by m*n*min(m, n) to a layer. The store's size per checkpoint is its record
(S, U, V and the scalars); the warm-start basis (16 columns per module, for resume)
is kept once, for the latest checkpoint. Also the worst err_bound and err_estimate,
and how many modules were certified (err_bound <= tol).

Usage: python bench/checkpoint_rank1.py [--layers 2] [--checkpoints 2] [--device cpu] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import peak_memory_bytes, pin_glibc_mmap_threshold, print_table, write_results
from safetensors.torch import save_file

from rlsignals.rank1.track import track_rank1

SHAPES = {"self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (4096, 4096), "self_attn.v_proj": (4096, 4096),
          "self_attn.o_proj": (4096, 4096), "mlp.gate_proj": (11008, 4096), "mlp.up_proj": (11008, 4096),
          "mlp.down_proj": (4096, 11008)}


def write_checkpoints(root: Path, layers: int, count: int) -> tuple[Path, list[Path]]:
    gen = torch.Generator().manual_seed(0)
    base = {f"model.layers.{i}.{kind}.weight": (torch.randn(shape, generator=gen) * 0.02).bfloat16()
            for i in range(layers) for kind, shape in SHAPES.items()}
    directions = {name: (torch.randn(w.shape[0], generator=gen), torch.randn(w.shape[1], generator=gen))
                  for name, w in base.items()}
    folders = []
    for c in range(count + 1):
        folder = root / ("base" if c == 0 else f"checkpoint-{c * 100}")
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
        tensors = {}
        for name, w in base.items():
            if c == 0:
                tensors[name] = w
                continue
            a, b = directions[name]
            update = 1e-4 * c * torch.outer(a, b) + 2e-5 * torch.randn(w.shape, generator=gen)
            tensors[name] = (w.float() + update).bfloat16()
        save_file(tensors, str(folder / "model.safetensors"))
        folders.append(folder)
    return folders[0], folders[1:]


def full_svd_seconds(base: Path, ckpt: Path, device: torch.device) -> tuple[float, tuple[int, int]]:
    """Seconds of one full fp32 SVD of a q_proj update on ``device`` (the solver library is warmed up first)."""
    from rlsignals.io.checkpoints import Checkpoint

    name = "model.layers.0.self_attn.q_proj.weight"
    delta = (Checkpoint(ckpt).get(name).float() - Checkpoint(base).get(name).float()).to(device)
    torch.linalg.svd(torch.eye(8, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    torch.linalg.svd(delta, full_matrices=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, tuple(delta.shape)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workdir", default=None, help="where to write the synthetic checkpoints (deleted after)")
    args = parser.parse_args()
    device = torch.device(args.device)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="rlsignals-bench-"))
    try:
        print(f"writing {args.checkpoints + 1} checkpoints of {args.layers} 7B-shaped layers to {root} ...",
              file=sys.stderr, flush=True)
        base, ckpts = write_checkpoints(root, args.layers, args.checkpoints)
        ckpt_bytes = (ckpts[0] / "model.safetensors").stat().st_size
        print("rank-1 trajectory ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        traj = track_rank1(base, ckpts, root / "traj", device=args.device)
        seconds = time.perf_counter() - start
        # per checkpoint: its record (S, U, V and the scalars); the warm-start basis is kept once, for the latest
        store_bytes = sum((traj.root / r.file).stat().st_size for r in traj.records)
        basis_bytes = (traj.root / traj.basis_file).stat().st_size
        iters = [traj.scalar("iters", m).mean().item() for m in traj.modules]
        bounds = [traj.scalar("err_bound", m).max().item() for m in traj.modules]
        estimates = [traj.scalar("err_estimate", m).max().item() for m in traj.modules]
        certified, modules = traj.certified_count()
        print(f"full fp32 SVD of one 4096 x 4096 update on {device} ...", file=sys.stderr, flush=True)
        svd_s, shape = full_svd_seconds(base, ckpts[0], device)
        flops_one = shape[0] * shape[1] * min(shape)
        layer_scale = sum(m * n * min(m, n) for m, n in SHAPES.values()) / flops_one
        full_store = sum((m + n) * min(m, n) * 4 + min(m, n) * 4 for m, n in SHAPES.values()) * args.layers
        if device.type == "cpu":
            pin_glibc_mmap_threshold()
        shutil.rmtree(root / "traj")
        peak = peak_memory_bytes(lambda: track_rank1(base, ckpts[:1], root / "traj", device=args.device,
                                                     progress=False), device)
        per_layer = seconds / args.checkpoints / args.layers
        records = [
            {"op": "checkpoint_rank1", "method": "rlsignals track_rank1", "layers": args.layers,
             "checkpoints": args.checkpoints, "seconds_per_layer_per_checkpoint": per_layer,
             "peak_mb": peak / 2**20, "store_bytes_per_checkpoint": store_bytes / args.checkpoints,
             "checkpoint_bytes": ckpt_bytes, "size_ratio": ckpt_bytes / (store_bytes / args.checkpoints),
             "basis_bytes_kept_once": basis_bytes,
             "mean_iters": sum(iters) / len(iters), "max_err_bound": max(bounds),
             "max_err_estimate": max(estimates), "certified_modules": certified, "modules": modules},
            {"op": "checkpoint_rank1", "method": "full fp32 torch.linalg.svd (released AlphaRL)",
             "layers": args.layers, "measured_seconds_4096x4096": svd_s,
             "seconds_per_layer_per_checkpoint": svd_s * layer_scale, "scaled": True,
             "store_bytes_per_checkpoint": full_store, "checkpoint_bytes": ckpt_bytes,
             "size_ratio": ckpt_bytes / full_store},
        ]
        records[1]["speedup"] = 1.0
        records[0]["speedup"] = records[1]["seconds_per_layer_per_checkpoint"] / per_layer
        print_table(records, [("method", "method", "s"), ("seconds_per_layer_per_checkpoint", "s/layer/ckpt", ".2f"),
                              ("peak_mb", "peak MB", ".0f"), ("store_bytes_per_checkpoint", "store B/ckpt", ".3g"),
                              ("size_ratio", "ckpt/store", ".0f"), ("speedup", "speedup", ".1f"),
                              ("max_err_estimate", "max est.", ".1e"), ("certified_modules", "certified", "")])
        path = write_results("checkpoint_rank1", device, records)
        print(f"wrote {path}")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
