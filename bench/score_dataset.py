"""Benchmark prefill scoring of a dataset: rlsignals against the public
reference procedure, and the hook's overhead against a plain forward.

  reference   the released scorer's procedure: one prompt per forward pass,
              the whole model (every layer and the lm_head), the hooked input
              kept (fp32) for every prompt until the end, then a full m x m
              cosine matrix per prompt (sliced correctly)
  rlsignals   score_batch over length-sorted batches: the forward stops at the
              hook, angle_stats runs on the padded batch in place
  forward     the same batches and the same early stop, hook doing nothing:
              the cost of the layers alone (overhead = rlsignals / forward - 1)

Models have random weights (no hub here): --preset cpu is a small Llama
(d = 512, 8 layers); --preset gpu is Qwen2-0.5B's architecture in bf16.
Usage: python bench/score_dataset.py [--preset cpu|gpu] [--prompts N]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from common import peak_memory_bytes, pin_glibc_mmap_threshold, print_table, write_results

from rlsignals.signals.capture import StopForward, capture_input, resolve_module
from rlsignals.signals.scoring import EncodedPrompt, ScoreConfig, plan_batches, score_batch

PRESETS = {
    "cpu": dict(arch="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4, vocab_size=32000, prompts=128, prefix=160, question=(16, 160)),
    "gpu": dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, prompts=1000, prefix=400, question=(16, 400)),
}


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
    suffix = [5, 6, 7]
    prompts = []
    for i in range(count):
        q = int(torch.randint(*preset["question"], (1,), generator=gen))
        question = torch.randint(100, preset["vocab_size"], (q,), generator=gen).tolist()
        prompts.append(EncodedPrompt(i, prefix + question + suffix, len(prefix), len(prefix) + q, False))
    return prompts


def reference_procedure(model, module, prompts, device) -> list[tuple[float, float]]:
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


def batched(model, module, prompts, config, with_stats: bool):
    batches = plan_batches([len(p.ids) for p in prompts], config.batch_tokens, config.max_batch_size)
    if with_stats:
        return [row for b in batches for row in score_batch(model, module, [prompts[i] for i in b], config, 0)]
    device = next(model.parameters()).device

    def stop(_hidden):
        return None

    with torch.inference_mode(), capture_input(module, stop):
        for b in batches:
            width = max(len(prompts[i].ids) for i in b)
            ids = torch.zeros(len(b), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(b):
                ids[row, :len(prompts[i].ids)] = torch.tensor(prompts[i].ids)
                mask[row, :len(prompts[i].ids)] = 1
            try:
                model(input_ids=ids.to(device), attention_mask=mask.to(device),
                      position_ids=(mask.cumsum(1) - 1).clamp_min(0).to(device), use_cache=False)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    device = torch.device("cuda" if args.preset == "gpu" else "cpu")
    model = make_model(preset, device)
    _, module = resolve_module(model, None)
    prompts = make_prompts(preset, args.prompts or preset["prompts"])
    config = ScoreConfig(batch_tokens=args.batch_tokens)
    methods = {
        "reference": lambda: reference_procedure(model, module, prompts, device),
        "rlsignals": lambda: batched(model, module, prompts, config, True),
        "forward": lambda: batched(model, module, prompts, config, False),
    }
    batched(model, module, prompts[:8], config, True)  # warm-up
    results, records = {}, []
    for name, fn in methods.items():
        print(f"timing {name} ...", file=sys.stderr, flush=True)
        results[name], seconds = timed(fn, device)
        records.append({"op": "score_dataset", "method": name, "preset": args.preset, "prompts": len(prompts),
                        "tokens": sum(len(p.ids) for p in prompts), "seconds": seconds,
                        "prompts_per_s": len(prompts) / seconds})
    if device.type == "cpu":
        pin_glibc_mmap_threshold()
    for r in records:
        print(f"peak memory {r['method']} ...", file=sys.stderr, flush=True)
        r["peak_mb"] = peak_memory_bytes(methods[r["method"]], device) / 2**20
    by_name = {r["method"]: r for r in records}
    ours = {row["index"]: row for row in results["rlsignals"]}
    diffs = [max(abs(ours[i]["intra"] - ref[0]), abs(ours[i]["inter"] - ref[1]))
             for i, ref in enumerate(results["reference"])]
    for r in records:
        r["speedup_vs_reference"] = by_name["reference"]["seconds"] / r["seconds"]
    ours = by_name["rlsignals"]
    ours["hook_overhead_vs_forward"] = ours["seconds"] / by_name["forward"]["seconds"] - 1
    by_name["rlsignals"]["max_abs_diff_vs_reference"] = max(diffs)
    print_table(records, [("method", "method", "s"), ("prompts", "prompts", "d"), ("seconds", "seconds", ".2f"),
                          ("prompts_per_s", "prompts/s", ".1f"), ("peak_mb", "peak MB", ".0f"),
                          ("speedup_vs_reference", "vs reference", ".1f")])
    print(f"hook + angle_stats overhead vs plain forward: {by_name['rlsignals']['hook_overhead_vs_forward']:+.1%}; "
          f"max |score difference| vs reference: {max(diffs):.2e}")
    path = write_results("score_dataset", device, records, {"preset": {k: v for k, v in preset.items()}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
