"""Benchmark angle_stats against the best pure-torch code a user could write,
the released full-matrix method, and one copy of the same bytes.

Cases: packs of T tokens, hidden size d, bf16 and fp32, made of prompts as GAIN-RL
scores them: a shared prefix of PREFIX tokens, then a question of QUESTION
tokens (uniform, seeded), the last prompt cut to fill T. Full mode: d = 2048 and
4096, T = 4k, 64k and 1M tokens (a case whose input and copy do not fit in 80%
of the free memory is recorded as not run; so is a method whose own buffers do
not). Each method returns the per-prompt (intra, inter) of angle_stats and is
checked against rlsignals.ops.reference.angle_stats_reference (atol 1e-5 for
fp32, 1e-4 for bf16) before it is timed. With S_A = sum of the unit rows
u_i = h_i / max(||h_i||, eps) over a block A of n_A rows, intra = ||S_Q||^2 / n_Q^2
and inter = <S_Q, S_P> / (n_Q n_P).

  copy            out.copy_(hidden) into a preallocated buffer: one read and one
                  write of the input's bytes (the memory-bound floor)
  full_matrix     the released scorer's method: per prompt, the m x m fp32 cosine
                  matrix, then block means (sliced correctly); only for
                  T <= --full-matrix-max-tokens
  torch, cpp, triton, cuda    rlsignals' backends (cpp on the CPU; triton and cuda
                  on CUDA; triton's CPU interpreter is not timed: it runs one
                  program at a time and says nothing about a GPU)
  baselines (pure torch, fp32 accumulation, F.normalize's eps and no overflow
  rescue, i.e. less work than rlsignals does):
  torch_loop      per prompt and block: F.normalize(h[a:b].float()).sum(0)
  torch_index_add F.normalize(hidden.float()), then index_add_ by block id
  torch_chunked_index_add   rows CHUNK at a time into one preallocated fp32
                  buffer, normalised in place, index_add_ by block id
  torch_chunked_matmul      CHUNK rows into the buffer, then one GEMM with the
                  one-hot block matrix weighted by 1/||h_i|| (normalise and sum
                  in one product)
  torch_compile   torch.compile (inductor, static shapes) of torch_index_add;
                  its compile time is recorded as compile_s, outside the timing

All methods but full_matrix are timed interleaved (bench/common.py's
time_interleaved), so load changes hit them alike. readme_rows (for
bench/readme_table.py): per compiled rlsignals backend and dtype, the largest
case run, against the fastest baseline of that case and the copy.

Usage: python bench/angle_stats.py [--device cpu|cuda] [--quick] [--max-tokens N]
           [--full-matrix-max-tokens N] [--note TEXT] [--out DIR]
Writes bench/results/angle_stats-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    RESULTS_DIR,
    peak_memory_bytes,
    pin_glibc_mmap_threshold,
    print_table,
    readme_row,
    time_interleaved,
    write_results,
)

import rlsignals
from rlsignals.ops.reference import angle_stats_reference
from rlsignals.ops.unit_sums import EPS

PREFIX = 160
QUESTION = (64, 1024)
CHUNK = 512
FULL_CASES = [(dtype, d, t) for dtype in (torch.bfloat16, torch.float32) for d in (2048, 4096)
              for t in (4096, 65536, 1 << 20)]
QUICK_CASES = [(torch.bfloat16, 2048, 4096), (torch.float32, 4096, 4096)]
BASELINES = ("torch_loop", "torch_index_add", "torch_chunked_index_add", "torch_chunked_matmul", "torch_compile")
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-4}


class Case:
    """A pack of prompts: hidden [T, d]; cu [B + 1] and prefix [B] int64 as angle_stats takes them;
    offsets [2B + 1] the block bounds (block 2b = prefix of prompt b, block 2b + 1 = its question)."""

    def __init__(self, dtype: torch.dtype, d: int, total: int, device: torch.device):
        gen = torch.Generator().manual_seed(0)
        lengths: list[int] = []
        while sum(lengths) < total:
            lengths.append(PREFIX + int(torch.randint(QUESTION[0], QUESTION[1] + 1, (1,), generator=gen)))
        lengths[-1] -= sum(lengths) - total
        if lengths[-1] <= PREFIX and len(lengths) > 1:  # no question left in the last prompt: merge it
            lengths[-2] += lengths.pop()
        self.dtype, self.d, self.total, self.device = dtype, d, total, device
        self.lengths = lengths
        self.cu = torch.tensor([0, *lengths], device=device).cumsum(0)
        self.prefix = torch.full((len(lengths),), min(PREFIX, total - 1), device=device)
        self.offsets = torch.cat([torch.stack([self.cu[:-1], self.cu[:-1] + self.prefix], 1).flatten(), self.cu[-1:]])
        dev_gen = torch.Generator(device=device).manual_seed(0)
        common = 0.5 * torch.randn(d, device=device, generator=dev_gen)  # a shared direction: cosines near 0.2
        self.hidden = torch.empty(total, d, device=device, dtype=dtype)
        for start in range(0, total, 1 << 16):
            rows = min(1 << 16, total - start)
            self.hidden[start:start + rows] = torch.randn(rows, d, device=device, generator=dev_gen) + common

    @property
    def bytes(self) -> int:
        return self.hidden.numel() * self.hidden.element_size()

    def describe(self) -> str:
        dtype = {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(self.dtype, str(self.dtype))
        tokens = f"{self.total >> 20}M" if self.total % (1 << 20) == 0 else (
            f"{self.total >> 10}k" if self.total % 1024 == 0 else str(self.total))
        return (f"{dtype}, d = {self.d}, T = {tokens} tokens: {len(self.lengths)} prompts of "
                f"{min(self.lengths)}-{max(self.lengths)} tokens, {PREFIX}-token shared prefix")

    def block_ids(self) -> torch.Tensor:
        """Block of each row, int64 [T] (what a user computes per call)."""
        rows = torch.arange(self.total, device=self.device)
        return torch.searchsorted(self.offsets, rows, right=True) - 1

    def finish(self, sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(intra, inter) fp32 [B] from the block sums of unit rows [2B, d]."""
        sum_p, sum_q = sums[0::2].double(), sums[1::2].double()
        n_p = self.prefix.double()
        n_q = self.cu.diff().double() - n_p
        return ((sum_q.square().sum(1) / (n_q * n_q)).float(), ((sum_q * sum_p).sum(1) / (n_q * n_p)).float())


def full_matrix_method(case: Case) -> tuple[list[float], list[float]]:
    cu, prefix = case.cu.tolist(), case.prefix.tolist()
    intra, inter = [], []
    for b, p in enumerate(prefix):
        u = F.normalize(case.hidden[cu[b]:cu[b + 1]].float(), dim=1, eps=EPS)
        cos = u @ u.T
        intra.append(cos[p:, p:].mean().item())
        inter.append(cos[p:, :p].mean().item())
    return intra, inter


def torch_loop(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    bounds = case.offsets.tolist()
    sums = torch.stack([F.normalize(case.hidden[a:b].float(), dim=1, eps=EPS).sum(0)
                        for a, b in zip(bounds[:-1], bounds[1:])])
    return case.finish(sums)


def index_add_sums(hidden: torch.Tensor, block: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """sums[r] = sum of the unit rows of hidden [T, d] whose block[i] = r; fp32 [num_blocks, d]."""
    rows = F.normalize(hidden.float(), dim=1, eps=EPS)
    return torch.zeros(num_blocks, hidden.shape[1], device=hidden.device).index_add_(0, block, rows)


def torch_index_add(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    return case.finish(index_add_sums(case.hidden, case.block_ids(), case.offsets.numel() - 1))


def chunked(case: Case, use_matmul: bool) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """torch_chunked_index_add / torch_chunked_matmul over one preallocated fp32 buffer [CHUNK, d]."""
    buf = torch.empty(CHUNK, case.d, device=case.device)
    norms = torch.empty(CHUNK, device=case.device)
    columns = torch.arange(CHUNK, device=case.device)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        block = case.block_ids()
        sums = torch.zeros(case.offsets.numel() - 1, case.d, device=case.device)
        firsts = block[::CHUNK].tolist()
        lasts = block[CHUNK - 1::CHUNK].tolist() + [int(block[-1])]
        for c, start in enumerate(range(0, case.total, CHUNK)):
            rows = min(CHUNK, case.total - start)
            x, inv, own = buf[:rows], norms[:rows], block[start:start + rows]
            x.copy_(case.hidden[start:start + rows])
            torch.linalg.vector_norm(x, dim=1, out=inv)
            inv.clamp_min_(EPS).reciprocal_()
            if use_matmul:
                lo, hi = firsts[c], lasts[c] + 1
                weights = torch.zeros(hi - lo, rows, device=case.device)
                weights[own - lo, columns[:rows]] = inv
                sums[lo:hi].addmm_(weights, x)
            else:
                sums.index_add_(0, own, x.mul_(inv[:, None]))
        return case.finish(sums)

    return run


def compiled_index_add(case: Case) -> tuple[Callable[[], tuple[torch.Tensor, torch.Tensor]], float]:
    """torch_compile for this case, compiled now: (the method, compile seconds)."""
    compiled = torch.compile(index_add_sums, dynamic=False)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        return case.finish(compiled(case.hidden, case.block_ids(), case.offsets.numel() - 1))

    start = time.perf_counter()
    run()
    _sync(case.device)
    return run, time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def extra_bytes(method: str, case: Case) -> int:
    """Rough memory a method needs beyond the input and the copy's buffer."""
    fp32 = case.total * case.d * 4
    return {"torch": 3 * fp32, "torch_index_add": 2 * fp32}.get(method, 0)  # torch_compile: fused, ~0


def methods_for(case: Case, backends: list[str], full_matrix_max_tokens: int, budget: int,
                compile_s: dict) -> tuple[dict, dict]:
    """({method: fn} to run, {method: reason} not run). Compiles torch_compile (into compile_s)."""
    out = torch.empty_like(case.hidden)
    out.zero_()  # touched now, so the copy pays no first-touch page faults

    def make_compiled() -> Callable:
        fn, compile_s[case.describe()] = compiled_index_add(case)
        return fn

    makers: dict[str, Callable[[], Callable]] = {
        "copy": lambda: (lambda: out.copy_(case.hidden)),
        **{name: (lambda name=name: lambda: rlsignals.angle_stats(case.hidden, case.cu, case.prefix, backend=name))
           for name in backends},
        "torch_loop": lambda: (lambda: torch_loop(case)),
        "torch_index_add": lambda: (lambda: torch_index_add(case)),
        "torch_chunked_index_add": lambda: chunked(case, use_matmul=False),
        "torch_chunked_matmul": lambda: chunked(case, use_matmul=True),
        "torch_compile": make_compiled,
    }
    methods, not_run = {}, {}
    for name, make in makers.items():
        need = 2 * case.bytes + extra_bytes(name, case)
        if need > budget:
            not_run[name] = f"needs about {need / 2**30:.0f} GiB, budget {budget / 2**30:.0f} GiB"
        else:
            methods[name] = make()
    if case.total <= full_matrix_max_tokens:
        methods["full_matrix"] = lambda: full_matrix_method(case)
    else:
        not_run["full_matrix"] = f"T > --full-matrix-max-tokens={full_matrix_max_tokens}"
    return methods, not_run


def check(name: str, result, case: Case, reference) -> None:
    """Exit with a message if a method's (intra, inter) differ from the reference."""
    intra, inter = (result.intra, result.inter) if hasattr(result, "intra") else result
    got = torch.stack([torch.as_tensor(intra).cpu(), torch.as_tensor(inter).cpu()])
    err = (got - reference).abs().max().item()
    if not err <= ATOL[case.dtype]:
        sys.exit(f"{name} differs from the reference by {err:.2e} (atol {ATOL[case.dtype]:.0e}) on {case.describe()}")


def run_case(case: Case, backends: list[str], min_seconds: float, full_matrix_max_tokens: int, budget: int,
             compile_s: dict) -> list[dict]:
    methods, not_run = methods_for(case, backends, full_matrix_max_tokens, budget, compile_s)
    ref = angle_stats_reference(case.hidden, case.cu.cpu(), case.prefix.cpu())
    reference = torch.stack([ref.intra.cpu(), ref.inter.cpu()])
    for name, fn in methods.items():
        if name != "copy":
            check(name, fn(), case, reference)
    base = {"op": "angle_stats", "T": case.total, "d": case.d, "B": len(case.lengths),
            "dtype": str(case.dtype).replace("torch.", ""), "bytes": case.bytes, "case": case.describe()}
    fast = {k: v for k, v in methods.items() if k != "full_matrix"}
    # no warm-up call: each method has just run once, for the check
    timings = time_interleaved(fast, case.device, min_seconds=min_seconds, warmup=False)
    if "full_matrix" in methods:
        timings["full_matrix"] = time_interleaved({"f": methods["full_matrix"]}, case.device, min_seconds=0.0,
                                                  min_reps=1, warmup=False)["f"]
    records = [{**base, "method": name, "kind": kind(name), **timing,
                "gb_per_s": case.bytes / timing["median_ms"] / 1e6} for name, timing in timings.items()]
    by_name = {r["method"]: r["median_ms"] for r in records}
    best = min((n for n in BASELINES if n in by_name), key=by_name.__getitem__, default=None)
    for r in records:
        r["vs_copy"] = r["median_ms"] / by_name["copy"]
        r["best_baseline"] = best
        r["speedup_vs_best_baseline"] = by_name[best] / r["median_ms"] if best else None
        r["speedup_vs_full_matrix"] = by_name["full_matrix"] / r["median_ms"] if "full_matrix" in by_name else None
        if r["method"] == "torch_compile":
            r["compile_s"] = compile_s[case.describe()]
    records += [{**base, "method": name, "kind": kind(name), "not_run": why} for name, why in not_run.items()]
    return records


def kind(method: str) -> str:
    if method in BASELINES:
        return "baseline"
    return {"copy": "floor", "full_matrix": "released"}.get(method, "rlsignals")


def _faster(speedup: float) -> str:
    return f"{speedup:.2f}x faster than" if speedup >= 1 else f"{1 / speedup:.2f}x slower than"


def _ms(ms: float) -> str:
    return f"{ms / 1e3:.2f} s" if ms >= 1e3 else f"{ms:.3g} ms"


def readme_rows(records: list[dict], backends: list[str], quick: bool) -> list[dict]:
    """Per compiled backend and dtype: its largest case (largest T*d) against that case's fastest baseline."""
    rows = []
    timed = [r for r in records if "median_ms" in r]
    for backend in (b for b in backends if b != "torch"):
        for dtype in dict.fromkeys(r["dtype"] for r in timed):
            mine = [r for r in timed if r["method"] == backend and r["dtype"] == dtype and r["best_baseline"]]
            if not mine:
                continue
            r = max(mine, key=lambda r: r["T"] * r["d"])
            same = {s["method"]: s for s in timed if s["case"] == r["case"]}
            best = same[r["best_baseline"]]
            ratios = sorted(s["speedup_vs_best_baseline"] for s in mine)
            spread = (f" (over all {len(mine)} {dtype} cases: {ratios[0]:.2f}-{ratios[-1]:.2f}x)"
                      if len(mine) > 1 else "")
            full = (f"; {r['speedup_vs_full_matrix']:.0f}x faster than the released full-matrix method"
                    if r.get("speedup_vs_full_matrix") else "")
            compile_note = f" (first call, compiling: {best['compile_s']:.1f} s)" if "compile_s" in best else ""
            others = ", ".join(f"{n} {_ms(same[n]['median_ms'])}" for n in BASELINES
                               if n in same and n != best["method"])
            rows.append(readme_row(
                f"`angle_stats`, {backend} backend" + (" (--quick smoke run)" if quick else ""), r["case"],
                f"{_ms(r['median_ms'])}: {_faster(r['speedup_vs_best_baseline'])} the fastest pure-torch "
                f"baseline ({best['method']}){spread}; {r['vs_copy']:.2f}x the time of one copy of the input{full}",
                f"{best['method']} {_ms(best['median_ms'])}{compile_note}; other baselines: {others}; "
                f"copy {_ms(same['copy']['median_ms'])}"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full-matrix-max-tokens", type=int, default=65536,
                        help="run the full-matrix method only on packs of at most this many tokens")
    parser.add_argument("--quick", action="store_true", help="two small cases (bf16 and fp32, T = 4096)")
    parser.add_argument("--max-tokens", type=int, default=1 << 20, help="leave out the cases with more tokens")
    parser.add_argument("--note", help="a remark on how it was run (e.g. the machine's load), kept in the JSON")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON (default bench/results)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch._dynamo.config.recompile_limit = 64  # one compile per case shape
    live = [name for name, (ok, _) in rlsignals.available_backends().items() if ok]
    wanted = ("torch", "cpp") if device.type == "cpu" else ("torch", "triton", "cuda")
    backends = [b for b in wanted if b in live]
    cases = [c for c in (QUICK_CASES if args.quick else FULL_CASES) if c[2] <= args.max_tokens]
    budget = int(0.8 * _free_bytes(device))
    records, compile_s = [], {}
    for dtype, d, total in cases:
        need = 2 * total * d * dtype.itemsize
        if need > budget:
            records.append({"op": "angle_stats", "T": total, "d": d, "dtype": str(dtype).replace("torch.", ""),
                            "method": "all", "not_run": f"input and copy need {need / 2**30:.0f} GiB, "
                                                        f"budget {budget / 2**30:.0f} GiB"})
            continue
        print(f"timing T={total} d={d} {dtype} ...", file=sys.stderr, flush=True)
        case = Case(dtype, d, total, device)
        records += run_case(case, backends, 0.1 if args.quick else 1.0, args.full_matrix_max_tokens, budget,
                            compile_s)
        del case
    if device.type == "cpu":
        pin_glibc_mmap_threshold()
    for dtype, d, total in cases:
        timed = [r for r in records if (r["T"], r["d"], r["dtype"]) == (total, d, str(dtype).replace("torch.", ""))
                 and "median_ms" in r]
        if not timed:
            continue
        print(f"peak memory T={total} d={d} {dtype} ...", file=sys.stderr, flush=True)
        case = Case(dtype, d, total, device)
        methods, _ = methods_for(case, backends, args.full_matrix_max_tokens, budget, {})
        for r in timed:
            r["peak_mb"] = peak_memory_bytes(methods[r["method"]], device) / 2**20
        del case, methods
    print_table(records, [("T", "T", "d"), ("d", "d", "d"), ("dtype", "dtype", "s"), ("B", "B", "d"),
                          ("method", "method", "s"), ("median_ms", "median ms", ".3f"), ("p20_ms", "p20", ".3f"),
                          ("p80_ms", "p80", ".3f"), ("peak_mb", "peak MB", ".1f"), ("gb_per_s", "GB/s", ".1f"),
                          ("vs_copy", "x copy", ".2f"), ("speedup_vs_best_baseline", "vs best base", ".2f"),
                          ("speedup_vs_full_matrix", "vs full", ".0f")])
    rows = readme_rows(records, backends, args.quick)
    for row in rows:
        print(f"readme: {row['what']} | {row['case']} | {row['result']} | {row['baseline']}")
    path = write_results("angle_stats", device, records,
                         {"backends": backends, "baselines": list(BASELINES), "quick": args.quick, "note": args.note,
                          "compile_s": compile_s, "readme_rows": rows}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
