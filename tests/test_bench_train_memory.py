"""bench/train_memory.py: its verdicts and noise figure on synthetic results, and (slow) one real
configuration run end to end in its own process, as the benchmark runs it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPT = BENCH / "train_memory.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_train_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def result(side: str, batch: int, micro: int, peak_gb: float, tokens_per_s: float = 10.0, gen_gb: float = 1.0,
           model: str = "qwen2.5-0.5b-2l") -> dict:
    return {"side": side, "model": model, "batch": batch, "micro": micro, "micro_label": micro,
            "gradient_checkpointing": False, "peak_bytes": peak_gb * 1e9, "bound_bytes": 4e9, "parameters": 1e8,
            "tokens_per_s": tokens_per_s, "peak_generation_bytes": gen_gb * 1e9}


def test_verdicts_compare_batches_bound_and_trl(bench):
    results = [result("ours", 16, 4, 3.0, 20.0, 1.0), result("ours", 32, 4, 3.5, 22.0, 1.4),
               result("trl", 16, 4, 3.2, 15.0), result("trl", 32, 4, 3.4, 25.0)]
    found = {(v["target"].split(" ")[0], v.get("batch")): v for v in bench.verdicts(results, [16, 32])}
    assert found[("peak", None)]["verdict"] == "missed"  # 3.5 / 3.0 > 1.10
    assert found[("peak", 16)]["verdict"] == "met" and found[("peak", 32)]["verdict"] == "met"  # <= 4 GB
    assert found[("vs", 16)]["verdict"] == "met"  # lower peak, higher speed
    assert found[("vs", 32)]["memory"] == "missed" and found[("vs", 32)]["speed"] == "missed"
    spread, = bench.generation_spread(results[:1] + results[2:] + [result("ours", 16, 2, 3.0, gen_gb=1.3)])
    assert spread["batch"] == 16 and spread["spread_bytes"] == pytest.approx(0.3e9)


@pytest.mark.slow
def test_one_configuration_runs_end_to_end(tmp_path):
    out = tmp_path / "train_memory.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--sides", "ours", "--micro", "2",
                           "--global-batches", "4", "--output", str(out)], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    payload = json.loads(out.read_text())
    record, = payload["results"]
    assert record["side"] == "ours" and record["batch"] == 4 and record["micro"] == 2
    assert 0 < record["peak_bytes"] < 8e9 and record["tokens_per_s"] > 0 and record["tokens"] > 0
    assert payload["command"].startswith("python bench/train_memory.py --quick")
