"""Benchmark angle_stats against the public full-matrix method, the best
pure-torch O(T*d) expression, and one copy of the same bytes.

For each (sequence length m, hidden size d) a pack of T = max(m, 16384)
tokens is made of T/m sequences, each with a prefix of m/4 tokens. Methods:

  full_matrix   the released scorer's method: per sequence (batch 1), the full
                m x m fp32 cosine matrix, then block means (sliced correctly)
  torch         rlsignals' torch backend: normalise in fp32, segment sums
  cpp / triton / cuda   each live compiled backend
  copy          out.copy_(hidden) into a preallocated buffer: one read and
                one write of the input's bytes

Usage: python bench/angle_stats.py [--device cpu|cuda] [--full-matrix-max-m 4096] [--quick]
Writes bench/results/angle_stats-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from common import peak_memory_bytes, pin_glibc_mmap_threshold, print_table, time_call, write_results

import rlsignals
from rlsignals.ops.unit_sums import EPS


def full_matrix_method(hidden: torch.Tensor, cu: list[int], prefix: list[int]) -> tuple[list[float], list[float]]:
    intra, inter = [], []
    for b, p in enumerate(prefix):
        u = F.normalize(hidden[cu[b]:cu[b + 1]].float(), dim=1, eps=EPS)
        cos = u @ u.T
        intra.append(cos[p:, p:].mean().item())
        inter.append(cos[p:, :p].mean().item())
    return intra, inter


def make_case(m: int, d: int, device: torch.device, dtype: torch.dtype):
    total = max(m, 16384)
    num_seqs = total // m
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(total, d, device=device, dtype=dtype, generator=gen)
    cu = torch.arange(0, total + 1, m, device=device)
    prefix = torch.full((num_seqs,), m // 4, device=device)
    return hidden, cu, prefix


def case_methods(m: int, d: int, device: torch.device, dtype: torch.dtype, backends: list[str],
                 full_matrix_max_m: int):
    hidden, cu, prefix = make_case(m, d, device, dtype)
    base = {"op": "angle_stats", "m": m, "d": d, "T": hidden.shape[0], "B": cu.numel() - 1,
            "dtype": str(dtype).replace("torch.", ""), "bytes": hidden.numel() * hidden.element_size()}
    out = torch.zeros_like(hidden)  # touched now, so the copy pays no first-touch page faults
    methods = {"copy": lambda: out.copy_(hidden)}
    if m <= full_matrix_max_m:
        cu_list, prefix_list = cu.tolist(), prefix.tolist()
        methods["full_matrix"] = lambda: full_matrix_method(hidden, cu_list, prefix_list)
    for name in backends:
        methods[name] = (lambda name=name: rlsignals.angle_stats(hidden, cu, prefix, backend=name))
    return base, methods


def time_case(base: dict, methods: dict, device: torch.device, min_seconds: float,
              full_matrix_max_m: int) -> list[dict]:
    records = []
    for name, fn in methods.items():
        slow = name == "full_matrix"
        timing = time_call(fn, device, min_seconds=0.0 if slow else min_seconds, min_reps=1 if slow else 3)
        records.append({**base, "method": name, **timing, "gb_per_s": base["bytes"] / timing["median_ms"] / 1e6})
    by_name = {r["method"]: r["median_ms"] for r in records}
    for r in records:
        r["vs_copy"] = r["median_ms"] / by_name["copy"]
        r["speedup_vs_full_matrix"] = by_name["full_matrix"] / r["median_ms"] if "full_matrix" in by_name else None
        r["speedup_vs_torch"] = by_name["torch"] / r["median_ms"] if "torch" in by_name else None
    if "full_matrix" not in by_name:
        records.append({**base, "method": "full_matrix", "not_run": f"m > --full-matrix-max-m={full_matrix_max_m}"})
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--full-matrix-max-m", type=int, default=4096,
                        help="run the full-matrix method only up to this sequence length")
    parser.add_argument("--quick", action="store_true", help="two small cases, for a smoke run")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    live = [name for name, (ok, _) in rlsignals.available_backends().items() if ok]
    backends = [b for b in ("torch", "cpp", "triton", "cuda") if b in live
                and not (b == "triton" and device.type == "cpu") and not (b == "cuda" and device.type != "cuda")
                and not (b == "cpp" and device.type != "cpu")]
    cases = [(512, 896), (4096, 2048)] if args.quick else [
        (m, d) for m in (512, 4096, 32768) for d in (896, 2048, 4096)]
    records = []
    for m, d in cases:
        print(f"timing m={m} d={d} ...", file=sys.stderr, flush=True)
        base, methods = case_methods(m, d, device, dtype, backends, args.full_matrix_max_m)
        records += time_case(base, methods, device, 0.3 if args.quick else 1.0, args.full_matrix_max_m)
    if device.type == "cpu":
        pin_glibc_mmap_threshold()
    for m, d in cases:
        print(f"peak memory m={m} d={d} ...", file=sys.stderr, flush=True)
        _, methods = case_methods(m, d, device, dtype, backends, args.full_matrix_max_m)
        for r in records:
            if (r["m"], r["d"]) == (m, d) and r["method"] in methods:
                r["peak_mb"] = peak_memory_bytes(methods[r["method"]], device) / 2**20
    print_table(records, [("m", "m", "d"), ("d", "d", "d"), ("B", "B", "d"), ("method", "method", "s"),
                          ("median_ms", "median ms", ".3f"), ("p20_ms", "p20", ".3f"), ("p80_ms", "p80", ".3f"),
                          ("peak_mb", "peak MB", ".1f"), ("gb_per_s", "GB/s", ".1f"), ("vs_copy", "x copy", ".2f"),
                          ("speedup_vs_full_matrix", "vs full", ".0f"), ("speedup_vs_torch", "vs torch", ".1f")])
    path = write_results("angle_stats", device, records, {"backends": backends})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
