"""Shared benchmark harness: timing, peak memory, machine facts, JSON output.

Timings are medians (with p20/p80) of repeated calls after a warm-up; CUDA
calls are synchronised. time_interleaved times several functions in alternating
rounds, so that they share whatever load the machine has. Peak memory is the
extra memory a call needs: on CUDA torch.cuda.max_memory_allocated; on the CPU
the peak resident set size, sampled every 0.2 ms while the call runs, above the
size before it. Call ``pin_glibc_mmap_threshold()`` after all timings and before
measuring CPU memory: it makes glibc return blocks of 64 KiB and more to the OS
at once, so freed memory is not reused unseen (and page faults then cost more,
which is why timings come first).
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def pin_glibc_mmap_threshold() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: blocks >= 64 KiB are mmapped and unmapped on free
        libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD
        libc.malloc_trim(0)  # give back what the timing runs left in the heap
    except OSError:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, min_seconds: float = 1.0,
              max_reps: int = 50, min_reps: int = 3) -> dict:
    """Median / p20 / p80 time in ms of one fn() call (one warm-up call first).

    CPU: wall time of each call. CUDA: each rep times a batch of back-to-back calls
    between CUDA events (at least ~2 ms of work per batch) and divides by the batch
    size, so launch and synchronisation overhead do not decide a microsecond-scale
    kernel's figure.
    """
    return time_interleaved({"fn": fn}, device, min_seconds=min_seconds, max_reps=max_reps, min_reps=min_reps)["fn"]


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, *, min_seconds: float = 1.0,
                     max_reps: int = 50, min_reps: int = 3, warmup: bool = True) -> dict[str, dict]:
    """time_call's figures for each of several functions, timed in rounds.

    After one warm-up call each (warmup=False: the caller has just called each),
    every round times one rep (a batch of calls on CUDA) of every function in turn,
    so a change in machine load during the run falls on all of them alike. Rounds
    go on until min_reps, then until max_reps or until about min_seconds per
    function have passed.
    """
    inner = {}
    for name, fn in fns.items():
        if warmup:
            fn()
            _sync(device)
        inner[name] = 1
        if device.type == "cuda":
            t0 = time.perf_counter()
            fn()
            _sync(device)
            inner[name] = max(1, min(1000, int(2e-3 / max(time.perf_counter() - t0, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_reps or (rounds < max_reps and time.perf_counter() - start < min_seconds * len(fns)):
        for name, fn in fns.items():
            times[name].append(_timed_batch(fn, device, inner[name]) / inner[name])
        rounds += 1
    out = {}
    for name, ts in times.items():
        quantiles = statistics.quantiles(ts, n=10, method="inclusive") if len(ts) >= 2 else [ts[0]] * 9
        out[name] = {"median_ms": statistics.median(ts), "p20_ms": quantiles[1], "p80_ms": quantiles[7],
                     "reps": len(ts), "calls_per_rep": inner[name]}
    return out


def _timed_batch(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """ms for ``calls`` back-to-back calls of fn()."""
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Extra memory needed by one call of fn()."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _rss_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, _rss_bytes()) - before


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip() or None
    except OSError:
        commit = None
    from rlsignals import __version__

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {_cpu_model()}",
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "rlsignals": __version__,
        "git_commit": commit,
    }


def device_tag(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace("NVIDIA ", "").replace(" ", "-")
    return "cpu"


def write_results(op: str, device: torch.device, records: list[dict], extra: dict | None = None,
                  results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{op}-{device_tag(device)}.json"
    payload = {"op": op, "machine": machine_info(device), **(extra or {}), "results": records}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def readme_row(what: str, case: str, result: str, baseline: str) -> dict:
    """One entry of a results JSON's top-level "readme_rows" (bench/readme_table.py makes the
    README's table from them): what was measured, on which case, the figure with the fastest
    baseline named and the ratio to it, and that baseline's own figure."""
    return {"what": what, "case": case, "result": result, "baseline": baseline}


def print_table(records: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec); missing values print as '-'."""
    headers = [h for _, h, _ in columns]
    rows = [[("-" if r.get(k) is None else format(r[k], f)) for k, _, f in columns] for r in records]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
