"""Benchmark prefill scoring of a dataset: the released procedure, whole-prompt
forwards, and the shared prefix run once; plus a sweep of the batch size.

Methods (one run, same prompts, same model):
  released        the released scorer's procedure: one prompt per forward pass,
                  the whole model (every layer and the lm_head), the hooked input
                  kept (fp32) for every prompt until the end, then a full m x m
                  cosine matrix per prompt (sliced correctly)
  full            score_batch over length-sorted batches of whole prompts
                  (ScoreConfig(prefix_cache=False)): stops at the hook
  full_forward    the same batches and early stop, the hook doing nothing
  cached          score_prompts' default: the prefix runs once (its sums and
                  key/value cache), batches run the question tokens only
  cached_forward  the same question batches on the same cached prefix, the hook
                  doing nothing (the bare forward the cached scorer is held to)

Scores of `cached` (right and left padding) are checked against `full`
(|difference| <= 1e-5 in fp32) and `released` against `full`. Models have
random weights (no hub here); prompts are random tokens: a shared prefix (a
few-shot block), questions of random length, a 6-token suffix. The prefix runs
once per run, so `cached` includes it (its time is also reported alone): over
a real dataset (thousands of prompts) it vanishes.

  python bench/score_dataset.py --preset gainrl1000-d1024      # one preset
  python bench/score_dataset.py --preset all-cpu               # every CPU preset
  python bench/score_dataset.py --preset gpu                   # Qwen2-0.5B shape, bf16, CUDA
  python bench/score_dataset.py --sweep batch_tokens           # widths 256..4096
  python bench/score_dataset.py --quick [...]                  # tiny counts, < 1 min
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
from common import peak_memory_bytes, pin_glibc_mmap_threshold, print_table, readme_row, write_results

from rlsignals.lm.capture import StopForward, capture_input, resolve_module
from rlsignals.signals.batching import EncodedPrompt, batch_inputs, default_batch_tokens, plan_batches
from rlsignals.signals.config import ScoreConfig
from rlsignals.signals.scoring import run_prefix, score_batch

SUFFIX = [5, 6, 7, 8, 9, 10]


def llama(d: int, ff: int, layers: int, heads: int, kv: int, **rest) -> dict:
    return dict(arch="llama", hidden_size=d, intermediate_size=ff, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, vocab_size=32000, **rest)


PRESETS = {
    "cpu": llama(512, 1408, 8, 8, 4, prompts=64, prefix=160, question=(16, 160)),
    "gainrl300-d512": llama(512, 1408, 8, 8, 4, prompts=64, prefix=300, question=(30, 150)),
    "gainrl300-d1024": llama(1024, 2816, 8, 16, 4, prompts=64, prefix=300, question=(30, 150)),
    "gainrl1000-d512": llama(512, 1408, 8, 8, 4, prompts=64, prefix=1000, question=(30, 150)),
    "gainrl1000-d1024": llama(1024, 2816, 8, 16, 4, prompts=64, prefix=1000, question=(30, 150)),
    "qwen2-gainrl300-d512": {**llama(512, 1408, 8, 8, 4, prompts=64, prefix=300, question=(30, 150)),
                             "arch": "qwen2"},
    "gpu": dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, prompts=1000, prefix=1000, question=(30, 150)),
}
CPU_PRESETS = [name for name in PRESETS if name != "gpu"]
SWEEP_WIDTHS = (256, 512, 1024, 2048, 4096)
SWEEP_BATCH_TOKENS = (512, 1024, 2048, 4096, 8192, 16384)


def make_model(preset: dict, device: torch.device) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size")
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if preset["arch"] == "llama" else (Qwen2Config,
                                                                                                Qwen2ForCausalLM)
    torch.manual_seed(0)
    model = model_cls(config_cls(**{k: preset[k] for k in keys}, max_position_embeddings=4096))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return model.to(device=device, dtype=dtype).eval()


def make_prompts(preset: dict, count: int) -> list[EncodedPrompt]:
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(100, preset["vocab_size"], (preset["prefix"],), generator=gen).tolist()
    prompts = []
    for i in range(count):
        q = int(torch.randint(*preset["question"], (1,), generator=gen))
        question = torch.randint(100, preset["vocab_size"], (q,), generator=gen).tolist()
        prompts.append(EncodedPrompt(i, prefix + question + SUFFIX, len(prefix), len(prefix) + q, False))
    return prompts


def released_procedure(model, module, prompts, device) -> list[tuple[float, float]]:
    kept = []
    with torch.inference_mode(), torch.autocast(device.type, enabled=False):
        for p in prompts:
            handle = module.register_forward_pre_hook(lambda _m, args: kept.append(args[0][0].float().clone()))
            try:
                model(input_ids=torch.tensor([p.ids], device=device), use_cache=False)
            finally:
                handle.remove()
        out = []
        for p, h in zip(prompts, kept):
            u = F.normalize(h, dim=1)
            cos = u @ u.T
            q = slice(p.prefix_len, p.question_end)
            out.append((cos[q, q].mean().item(), cos[q, :p.prefix_len].mean().item()))
    return out


def scored(model, module, prompts, config: ScoreConfig, cached: bool, bare: bool):
    """Rows of every prompt (index order), or None when ``bare``: the hook then only
    stops the forward. ``cached``: the prefix runs once (timed) and batches run the rest."""
    offset = prompts[0].prefix_len if cached else 0
    with torch.inference_mode():
        prefix = run_prefix(model, module, prompts[0].ids[:offset], config.backend) if cached else None
    batches = plan_batches([len(p.ids) - offset for p in prompts], config.batch_tokens, config.max_batch_size)
    if not bare:
        rows = [row for b in batches for row in score_batch(model, module, [prompts[i] for i in b], config, 0,
                                                            prefix)]
        return sorted(rows, key=lambda r: r["index"])
    with torch.inference_mode(), capture_input(module, lambda _hidden: None):
        for b in batches:
            inputs, _, _ = batch_inputs(model, [prompts[i] for i in b], prefix.prefix if prefix else None,
                                        config.padding_side, 0)
            try:
                model(**inputs)
            except StopForward:
                pass
    return None


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def max_diff(rows_a, rows_b) -> float:
    return max(max(abs(a["intra"] - b["intra"]), abs(a["inter"] - b["inter"])) for a, b in zip(rows_a, rows_b))


def padded_fraction(prompts, config: ScoreConfig, offset: int) -> float:
    lengths = [len(p.ids) - offset for p in prompts]
    batches = plan_batches(lengths, config.batch_tokens, config.max_batch_size)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return padded / sum(lengths) - 1


def run_preset(name: str, args) -> tuple[list[dict], list[dict]]:
    preset = PRESETS[name]
    device = torch.device("cuda" if name == "gpu" else "cpu")
    model = make_model(preset, device)
    _, module = resolve_module(model, None)
    count = args.prompts or (8 if args.quick else preset["prompts"])
    prompts = make_prompts(preset, count)
    batch_tokens = args.batch_tokens or default_batch_tokens(device, preset["hidden_size"])
    config = ScoreConfig(batch_tokens=batch_tokens)
    left = ScoreConfig(batch_tokens=batch_tokens, padding_side="left")
    methods = {
        "released": lambda: released_procedure(model, module, prompts, device),
        "full": lambda: scored(model, module, prompts, config, cached=False, bare=False),
        "full_forward": lambda: scored(model, module, prompts, config, cached=False, bare=True),
        "cached": lambda: scored(model, module, prompts, config, cached=True, bare=False),
        "cached_forward": lambda: scored(model, module, prompts, config, cached=True, bare=True),
    }
    scored(model, module, prompts[:4], config, cached=True, bare=False)  # warm-up
    results, seconds = {}, {}
    # scorer and its bare forward interleaved over repeats (the minimum of each), so load on
    # a shared machine shifts both alike
    for _ in range(args.repeats):
        for method, fn in methods.items():
            print(f"[{name}] timing {method} ...", file=sys.stderr, flush=True)
            results[method], took = timed(fn, device)
            seconds[method] = min(seconds.get(method, float("inf")), took)
    cached_left = scored(model, module, prompts, left, cached=True, bare=False)
    with torch.inference_mode():  # the one-off part of `cached`, reported on its own
        _, prefix_seconds = timed(partial(run_prefix, model, module, prompts[0].ids[:preset["prefix"]]), device)
    peaks = {}
    if not args.quick:
        if device.type == "cpu":
            pin_glibc_mmap_threshold()  # after every timing (see common.py)
        for method in ("full", "cached"):
            print(f"[{name}] peak memory {method} ...", file=sys.stderr, flush=True)
            peaks[method] = peak_memory_bytes(methods[method], device) / 2**20
    full_rows = results["full"]
    exact_diff = max(max_diff(results["cached"], full_rows), max_diff(cached_left, full_rows))
    released_diff = max(max(abs(r["intra"] - ref[0]), abs(r["inter"] - ref[1]))
                        for r, ref in zip(full_rows, results["released"]))
    tokens = sum(len(p.ids) for p in prompts)
    records = []
    for method, took in seconds.items():
        records.append({"op": "score_dataset", "preset": name, "method": method, "arch": preset["arch"],
                        "d": preset["hidden_size"], "layers": preset["num_hidden_layers"], "prefix": preset["prefix"],
                        "question": list(preset["question"]), "prompts": count, "tokens": tokens,
                        "batch_tokens": batch_tokens, "dtype": str(next(model.parameters()).dtype),
                        "seconds": took, "prompts_per_s": count / took,
                        "speedup_vs_released": seconds["released"] / took, "peak_mb": peaks.get(method)})
    by = {r["method"]: r for r in records}
    by["full"]["overhead_vs_bare"] = seconds["full"] / seconds["full_forward"] - 1
    by["cached"]["overhead_vs_bare"] = seconds["cached"] / seconds["cached_forward"] - 1
    by["cached"]["max_abs_diff_vs_full"] = exact_diff
    by["cached"]["prefix_seconds"] = prefix_seconds
    by["cached"]["prompts_per_s_after_prefix"] = count / max(seconds["cached"] - prefix_seconds, 1e-9)
    by["cached"]["padded_token_fraction"] = padded_fraction(prompts, config, preset["prefix"])
    by["full"]["max_abs_diff_vs_released"] = released_diff
    case = (f"{preset['arch']} d={preset['hidden_size']}, {preset['num_hidden_layers']} layers, "
            f"prefix {preset['prefix']}, questions {preset['question'][0]}-{preset['question'][1]}, "
            f"{count} prompts, {by['cached']['dtype'].replace('torch.', '')}, {device.type}")
    rows = [
        readme_row("score: prefix run once vs released batch-1 procedure", case,
                   f"{by['cached']['prompts_per_s']:.2f} prompts/s ({by['cached']['speedup_vs_released']:.1f}x "
                   f"released, the prefix's one run of {prefix_seconds:.2f} s included; "
                   f"{by['cached']['prompts_per_s_after_prefix'] / by['released']['prompts_per_s']:.1f}x without it, "
                   f"as over a dataset of thousands of prompts)",
                   f"released: {by['released']['prompts_per_s']:.2f} prompts/s"),
        readme_row("score: prefix run once vs whole-prompt batches", case,
                   f"{by['cached']['prompts_per_s']:.2f} prompts/s "
                   f"({seconds['full'] / seconds['cached']:.1f}x full)",
                   f"full (no prefix cache): {by['full']['prompts_per_s']:.2f} prompts/s"),
        readme_row("score: overhead of hook + reduce over the bare forward", case,
                   f"{by['cached']['overhead_vs_bare']:+.1%} (cached), {by['full']['overhead_vs_bare']:+.1%} (full)",
                   f"bare forward with the cached prefix: {seconds['cached_forward']:.2f} s"),
        readme_row("score: max |intra/inter - full forward|, left and right padding", case,
                   f"{exact_diff:.1e}", "full forward scores"),
    ]
    return records, rows


def run_sweep(args) -> tuple[list[dict], list[dict]]:
    """For each width: the released procedure once, then the scorer (cached and full)
    at every batch size. Fewer layers than the presets (the cost per layer decides)."""
    records, cpu = [], torch.device("cpu")
    widths = args.widths or ((256, 1024) if args.quick else SWEEP_WIDTHS)
    budgets = (1024, 4096) if args.quick else SWEEP_BATCH_TOKENS
    for d in widths:
        preset = llama(d, int(2.75 * d) // 64 * 64, args.sweep_layers, max(d // 64, 1), max(d // 256, 1),
                       prefix=300, question=(30, 150))
        count = args.prompts or (4 if args.quick else max(8, 48 * 512 // max(d, 512)))
        model = make_model(preset, cpu)
        _, module = resolve_module(model, None)
        prompts = make_prompts(preset, count)
        scored(model, module, prompts[:2], ScoreConfig(batch_tokens=1024), cached=True, bare=False)  # warm-up
        print(f"[sweep d={d}] released ...", file=sys.stderr, flush=True)
        _, released = timed(partial(released_procedure, model, module, prompts, cpu), cpu)
        for budget in budgets:
            for cached in (True, False):
                _, took = timed(partial(scored, model, module, prompts, ScoreConfig(batch_tokens=budget), cached,
                                        bare=False), cpu)
                records.append({"op": "score_dataset_sweep", "d": d, "layers": args.sweep_layers, "prompts": count,
                                "batch_tokens": budget, "path": "cached" if cached else "full", "seconds": took,
                                "released_seconds": released, "speedup_vs_released": released / took})
                print(f"[sweep d={d}] batch_tokens={budget} cached={cached}: {took:.2f} s, "
                      f"{released / took:.2f}x released ({released:.2f} s)", file=sys.stderr, flush=True)
    rows = []
    for path in ("cached", "full"):
        for d in widths:
            mine = [r for r in records if r["d"] == d and r["path"] == path]
            best = max(mine, key=lambda r: r["speedup_vs_released"])
            default = default_batch_tokens(cpu, d)
            at_default = next((r for r in mine if r["batch_tokens"] == default), None)
            rows.append(readme_row(f"score ({path}): batch_tokens sweep", f"llama d={d}, {args.sweep_layers} layers, "
                                   f"prefix 300, questions 30-150, {mine[0]['prompts']} prompts, fp32, cpu",
                                   f"best batch_tokens {best['batch_tokens']} ({best['speedup_vs_released']:.2f}x "
                                   f"released); default {default}: "
                                   + (f"{at_default['speedup_vs_released']:.2f}x" if at_default else "not swept"),
                                   f"released: {mine[0]['released_seconds']:.2f} s"))
    return records, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=[*PRESETS, "all-cpu"], default=None,
                        help="default: gpu when CUDA is available, else cpu")
    parser.add_argument("--sweep", choices=["batch_tokens"], default=None)
    parser.add_argument("--widths", type=int, nargs="+", default=None, help="sweep: hidden sizes")
    parser.add_argument("--sweep-layers", type=int, default=2, help="sweep: decoder layers of each model")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: the scorer's device default")
    parser.add_argument("--repeats", type=int, default=1, help="timing rounds (the minimum is kept)")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run in under a minute")
    parser.add_argument("--no-write", action="store_true", help="print the table only (no JSON in bench/results)")
    args = parser.parse_args()
    if args.sweep:
        records, rows = run_sweep(args)
        print_table(records, [("d", "d", "d"), ("batch_tokens", "batch_tokens", "d"), ("path", "path", "s"),
                              ("seconds", "seconds", ".2f"), ("released_seconds", "released s", ".2f"),
                              ("speedup_vs_released", "vs released", ".2f")])
        if not args.no_write:
            print(f"wrote {write_results('score_dataset_sweep', torch.device('cpu'), records, {'readme_rows': rows})}")
        return 0
    names = CPU_PRESETS if args.preset == "all-cpu" else [args.preset or ("gpu" if torch.cuda.is_available()
                                                                            else "cpu")]
    if args.quick and args.preset is None:
        names = ["gainrl300-d512"]
    records, rows = [], []
    for name in names:
        got, got_rows = run_preset(name, args)
        records += got
        rows += got_rows
    print_table(records, [("preset", "preset", "s"), ("method", "method", "s"), ("prompts", "prompts", "d"),
                          ("seconds", "seconds", ".2f"), ("prompts_per_s", "prompts/s", ".2f"),
                          ("speedup_vs_released", "vs released", ".1f"), ("overhead_vs_bare", "vs bare", "+.1%"),
                          ("peak_mb", "peak MB", ".0f"),
                          ("max_abs_diff_vs_full", "|diff| vs full", ".1e")])
    device = torch.device("cuda" if names == ["gpu"] else "cpu")
    tag = "score_dataset" if len(names) > 1 or args.preset is None else f"score_dataset_{names[0]}"
    if not args.no_write:
        path = write_results(tag, device, records, {"readme_rows": rows, "presets": {n: PRESETS[n] for n in names}})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
