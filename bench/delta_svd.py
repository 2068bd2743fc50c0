"""Benchmark delta_svd (top-1 singular triplet of W1 - W0) against what AlphaRL runs
(a full fp32 torch.linalg.svd per matrix) and the randomized baselines tuned to the
same accuracy.

Cases: 7B-like shapes (q/k/v/o 4096x4096, gate/up 11008x4096, down 4096x11008,
GQA k/v 1024x4096) as bf16 layer stacks W0 [B, m, n] ~ N(0, 0.02^2) and
W1 = bf16(W0 + dW), dW = a planted low-rank update (sigma_2/sigma_1 = 0.9, then a
geometric tail, 16 terms) plus dense noise holding 10% of ||dW||_F^2, entries of a few
bf16 ULPs of W0 and more. One "flat" case plants only noise: no cheap certificate can
be tight there (ops/svd_bound.py); it shows what the honest bound and the iteration cap
cost (one matrix, compiled backends only: 64 passes each).

Methods (times per matrix; stacks timed whole and divided by B):
  linalg_svd    torch.linalg.svd(W1.float() - W0.float()), fp32, all factors: AlphaRL.
                Timed on one matrix per shape (tens of seconds each on a 2-core CPU).
  svd_lowrank   torch.svd_lowrank(dW, q=16, niter) on the fp32 stack, niter the
                smallest of a ladder that reaches sigma_1 relative error <= 1e-4.
  sklearn       sklearn randomized_svd(dW, 1, n_oversamples=15, n_iter) per matrix,
                n_iter tuned the same way.
  delta_svd/<backend>   rlsignals.delta_svd(W1, W0, k=1, tol=1e-4), each live backend
                (Triton only on a GPU: its CPU interpreter is for tests).
  delta_svd/<backend>+warm   the next checkpoint W2 (W1 plus a small step),
                init = the basis of W1's result.
  pass/<backend>   one fused pass Y = dW X, Z = dW^T Y (X: 16 columns), fp32.
  read          sum() of W0 and W1: reading both matrices once.
The reference sigma_1 is delta_svd's with tol=1e-9 (its certificate bounds its own
error). Errors are relative errors of sigma_1 (max over the stack).

Usage: python bench/delta_svd.py [--device cpu|cuda] [--quick] [--stack 4] [--threads N]
Writes bench/results/delta_svd-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import print_table, time_call, write_results

import rlsignals
from rlsignals.ops.delta_products import delta_gram_product, product_available

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (1024, 4096)]
QUICK_SHAPES = [(1024, 1024), (2048, 512)]
TARGET = 1e-4
LOWRANK_NITERS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
SKLEARN_NITERS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]


NOISE_STD = 5e-4  # about 4 bf16 ULPs of a weight of 0.02
SPECTRUM = [1.0, 0.9] + [0.5 * 0.75 ** i for i in range(14)]  # times s; the noise holds 10% of ||dW||_F^2


def planted_update(num: int, m: int, n: int, flat: bool, gen: torch.Generator) -> torch.Tensor:
    """fp32 [num, m, n]: sum_i s*SPECTRUM[i] u_i v_i^T + N(0, NOISE_STD^2) (noise only if flat)."""
    d = NOISE_STD * torch.randn(num, m, n, generator=gen)
    if flat:
        return d
    sig = torch.tensor(SPECTRUM)
    s = (9 * NOISE_STD ** 2 * m * n / float(sig.square().sum())) ** 0.5  # low-rank mass = 9x the noise's
    u = torch.linalg.qr(torch.randn(num, m, len(SPECTRUM), generator=gen)).Q
    v = torch.linalg.qr(torch.randn(num, n, len(SPECTRUM), generator=gen)).Q
    return d + (u * (s * sig)) @ v.mT


def planted_stack(num: int, m: int, n: int, *, flat: bool, seed: int, device: torch.device):
    """(W0, W1, W2) bf16 [num, m, n]: W1 = W0 + update, W2 = W1 + 0.05 * another update."""
    gen = torch.Generator().manual_seed(seed)
    w0 = (0.02 * torch.randn(num, m, n, generator=gen)).to(torch.bfloat16)
    w1 = (w0.float() + planted_update(num, m, n, flat, gen)).to(torch.bfloat16)
    w2 = (w1.float() + 0.05 * planted_update(num, m, n, flat, gen)).to(torch.bfloat16)
    return w0.to(device), w1.to(device), w2.to(device)


def rel_err(s1: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((s1.double().cpu() - ref).abs() / ref).max())


def tune(run, ladder):
    """Smallest ladder value whose sigma_1 error is <= TARGET, with its error (else the last)."""
    for value in ladder:
        err = run(value)
        if err <= TARGET:
            return value, err
    return value, err


def bench_case(m: int, n: int, num: int, flat: bool, device: torch.device, backends: list[str],
               skip_linalg: bool) -> list[dict]:
    w0, w1, w2 = planted_stack(num, m, n, flat=flat, seed=m + n, device=device)
    case = {"m": m, "n": n, "B": num, "dtype": "bfloat16", "spectrum": "flat" if flat else "low-rank+noise",
            "bytes_per_matrix": 2 * m * n * 2}
    ref = rlsignals.delta_svd(w1, w0, 1, tol=1e-9, max_iters=200)
    ref_s1 = ref.S[:, 0].double().cpu()
    case["ref_err_bound"] = float(ref.err_bound.max())
    records = []

    def record(method: str, timing: dict, per: int, **extra) -> dict:
        rec = {**case, "method": method, **{k: v / per for k, v in timing.items() if k.endswith("_ms")},
               "reps": timing["reps"], **extra}
        records.append(rec)
        print(f"  {method:24s} {rec['median_ms']:10.1f} ms/matrix  {extra}", flush=True)
        return rec

    record("read", time_call(lambda: (w0.sum(), w1.sum()), device), num)
    if not skip_linalg:
        dw = w1[0].float() - w0[0].float()
        t0 = time.perf_counter()
        s = torch.linalg.svd(dw, full_matrices=False).S
        elapsed = (time.perf_counter() - t0) * 1e3
        record("linalg_svd", {"median_ms": elapsed, "p20_ms": elapsed, "p80_ms": elapsed, "reps": 1}, 1,
               err=rel_err(s[:1], ref_s1[:1]))
        del dw

    def lowrank(niter: int):
        dw = w1.float() - w0.float()
        return torch.svd_lowrank(dw, q=16, niter=niter)

    niter, err = tune(lambda q: rel_err(lowrank(q)[1][:, 0], ref_s1), LOWRANK_NITERS)
    record("svd_lowrank", time_call(lambda: lowrank(niter), device, min_seconds=2, max_reps=5), num,
           niter=niter, err=err)

    if device.type == "cpu":
        from sklearn.utils.extmath import randomized_svd

        def sk(n_iter: int):
            out = []
            for b in range(num):
                dw = (w1[b].float() - w0[b].float()).numpy()
                out.append(randomized_svd(dw, 1, n_oversamples=15, n_iter=n_iter, random_state=0)[1][0])
            return torch.tensor(out)

        n_iter, err = tune(lambda q: rel_err(sk(q), ref_s1), SKLEARN_NITERS)
        record("sklearn", time_call(lambda: sk(n_iter), device, min_seconds=2, max_reps=5), num,
               n_iter=n_iter, err=err)

    x = torch.linalg.qr(torch.randn(num, n, 16, dtype=torch.float64)).Q.float().contiguous().to(device)
    members = torch.arange(num)
    for backend in backends:
        out = rlsignals.delta_svd(w1, w0, 1, tol=TARGET, backend=backend)
        timing = time_call(lambda: rlsignals.delta_svd(w1, w0, 1, tol=TARGET, backend=backend), device,
                           min_seconds=2, max_reps=5)
        record(f"delta_svd/{backend}", timing, num, iters=int(out.iters.max()), err=rel_err(out.S[:, 0], ref_s1),
               err_bound=float(out.err_bound.max()))
        ref2 = rlsignals.delta_svd(w2, w0, 1, tol=1e-9, max_iters=200).S[:, 0].double().cpu()
        warm = rlsignals.delta_svd(w2, w0, 1, tol=TARGET, init=out.basis, backend=backend)
        timing = time_call(lambda: rlsignals.delta_svd(w2, w0, 1, tol=TARGET, init=out.basis, backend=backend),
                           device, min_seconds=2, max_reps=5)
        record(f"delta_svd/{backend}+warm", timing, num, iters=int(warm.iters.max()),
               err=rel_err(warm.S[:, 0], ref2), err_bound=float(warm.err_bound.max()))
        record(f"pass/{backend}", time_call(lambda: delta_gram_product(w1, w0, x, members, backend), device), num)
    return records


def add_ratios(records: list[dict]) -> None:
    """Speed-ups against linalg_svd and svd_lowrank, and pass time / read time, per case."""
    def key(r):
        return (r["m"], r["n"], r["spectrum"])

    base = {(key(r), r["method"]): r["median_ms"] for r in records}
    for r in records:
        if r["method"].startswith("delta_svd/"):
            for name in ("linalg_svd", "svd_lowrank", "sklearn"):
                if (key(r), name) in base:
                    r[f"x_vs_{name}"] = base[(key(r), name)] / r["median_ms"]
        if r["method"].startswith("pass/"):
            r["x_read"] = r["median_ms"] / base[(key(r), "read")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes, no linalg.svd of big matrices")
    parser.add_argument("--stack", type=int, default=4, help="matrices per layer stack")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for every method (1 gives stable ratios on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backends = [b for b in ("torch", "cpp", "triton", "cuda")
                if product_available(b)[0] and (b != "triton" or device.type == "cuda")
                and (b != "cpp" or device.type == "cpu") and (b != "cuda" or device.type == "cuda")]
    shapes = QUICK_SHAPES if args.quick else SHAPES
    records = []
    for (m, n) in shapes:
        print(f"{m}x{n} bf16, stack of {args.stack}, low-rank + noise", flush=True)
        records += bench_case(m, n, args.stack, False, device, backends, skip_linalg=False)
    m, n = shapes[0]
    print(f"{m}x{n} bf16, one matrix, flat (noise only): every method runs to its cap", flush=True)
    compiled = [b for b in backends if b != "torch"] or backends
    records += bench_case(m, n, 1, True, device, compiled, skip_linalg=True)
    add_ratios(records)
    print_table(records, [("m", "m", "d"), ("n", "n", "d"), ("spectrum", "spectrum", "s"), ("method", "method", "s"),
                          ("median_ms", "ms/matrix", ".1f"), ("iters", "iters", "d"), ("niter", "niter", "d"),
                          ("n_iter", "n_iter", "d"), ("err", "sigma1 err", ".1e"), ("err_bound", "bound", ".1e"),
                          ("x_vs_linalg_svd", "x linalg", ".0f"), ("x_vs_svd_lowrank", "x lowrank", ".1f"),
                          ("x_vs_sklearn", "x sklearn", ".1f"), ("x_read", "pass/read", ".2f")])
    path = write_results("delta_svd", device, records, {"target_sigma1_rel_err": TARGET, "stack": args.stack})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
