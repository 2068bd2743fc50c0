"""Pre-train the demo's tiny Llama on the arithmetic task (the shipped model
in ``rlsignals/demo/assets/model`` was made by this script).

    python -m rlsignals.demo.pretrain --out DIR [--steps N] [--seed S] [--threads T]

What it does, all seeded and deterministic on CPU for a given thread count:

1. builds the character tokenizer (tokenizer.py) and a LlamaForCausalLM of
   ~1.1M parameters (hidden 128, 4 layers, 4 heads, MLP 512, untied
   embeddings, 256 positions);
2. trains on chat conversations in the demo's format: the system turn, then
   either the demo's fixed few-shot turns and one problem (``--p-fixed`` of
   them: the exact prompt + reply the demo uses), or ``--turns`` random
   problems as consecutive user/assistant turns; every reply
   ``"= {answer}<|im_end|>"`` is scored (each earlier turn is then a few-shot
   example for the later ones), nothing else is. Problems are drawn fresh
   every step from a stream seeded by ``--seed``, levels weighted by
   ``--level-weights`` (easier levels more often). A reply to a drawn problem
   restates the problem first (``task.echo_reply``) with probability
   ``--p-echo``: a format habit that ``verify`` does not credit and that RL
   unlearns within a few dozen steps, as real RL first fixes formats. The
   system turn, shared by all, runs once per batch (``rlsignals.lm.prefix``: exact,
   and cheaper);
   ``--slip-rates`` (per level) makes a trained reply state
   ``task.slip_answer`` (the answer + 10) instead; ``--init DIR`` continues
   from a saved model (the shipped model is two stages: see task.py);
3. stops after ``--steps`` steps (AdamW, linear warm-up, cosine decay to
   ``--final-lr-frac`` of the peak), chosen so that the model is only
   part-way there: easy levels mostly solved, hard ones rarely, leaving RL
   something to learn. Ending at 30% of the peak rate (not ~0) leaves the
   model stable under further Adam updates at ~1e-4 (RL, SFT); one cooled
   to 1e-4 collapsed under RL updates at that rate;
4. measures greedy accuracy per difficulty (HF ``generate``, left padding) on
   a held-out set (``generate_dataset(n, seed=HELDOUT_SEED)``) and the mean
   accuracy of temperature-1 samples, and writes the model, the tokenizer and
   ``pretrain_info.json`` (settings, timings, accuracies) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlsignals.demo import task
from rlsignals.demo.tokenizer import EOS, build_tokenizer
from rlsignals.io.atomic import write_json_atomic
from rlsignals.lm.prefix import pad_right, prefix_logits
from rlsignals.trainer.loss import answer_loss

HELDOUT_SEED = 20240
MODEL_DIMS = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 4, "max_position_embeddings": 256}


def build_model(tokenizer, seed: int = 0, **dims: int):
    """A freshly initialised LlamaForCausalLM sized for ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), **{**MODEL_DIMS, **dims}, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        rope_theta=10000.0, attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _ids(encoded: Any) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def prefix_ids(tokenizer, system_only: bool = False) -> list[int]:
    """Token ids of the shared prefix: the system turn and (unless system_only)
    the few-shot turns; the demo prompt is this prefix + the problem's turn."""
    msgs = task.messages("x")[:1 if system_only else -1]
    return _ids(tokenizer.apply_chat_template(msgs, tokenize=True))


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of the full demo prompt, ending with the generation prompt."""
    return _ids(tokenizer.apply_chat_template(task.messages(prompt), tokenize=True, add_generation_prompt=True))


def encode_turns(tokenizer, turns: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of consecutive (problem, reply text) chat turns, as rendered
    by the chat template after the system turn; the mask is 1 on each reply and
    its closing <|im_end|>, and 0 elsewhere."""
    ids: list[int] = []
    mask: list[int] = []
    for problem, reply in turns:
        for text, m in ((f"<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n", 0),
                        (reply + EOS, 1), ("\n", 0)):
            part = _ids(tokenizer(text, add_special_tokens=False))
            ids += part
            mask += [m] * len(part)
    return ids, mask


def training_reply(rng: random.Random, problem: str, answer: Any, p_echo: float, p_slip: float = 0.0) -> str:
    """The reply trained on: ``"= {answer}"``; with probability p_slip the answer
    is replaced by ``task.slip_answer(answer)`` (right answer + 10); then, with
    probability p_echo, the problem is restated first (see task.echo_reply)."""
    if rng.random() < p_slip:
        answer = task.slip_answer(answer)
    return task.echo_reply(problem, answer) if rng.random() < p_echo else task.format_answer(answer)


def training_sequence(tokenizer, rng: random.Random, turns: int, level_weights: Sequence[float],
                      p_fixed: float, p_echo: float = 0.0,
                      slip_rates: Sequence[float] | None = None) -> tuple[list[int], list[int]]:
    """One training conversation after the system turn: either the demo's fixed
    few-shot turns and one problem (probability p_fixed), or ``turns`` random
    problems. Every reply is scored, so each problem in a conversation serves
    as a few-shot example for the later ones and as a training target. Each
    reply to a drawn problem restates it with probability p_echo and states the
    slipped answer with probability ``slip_rates[level - 1]`` (the fixed
    few-shot replies never do either)."""
    rates = slip_rates or [0.0] * len(task.DIFFICULTIES)

    def reply(row: dict[str, Any]) -> str:
        return training_reply(rng, row["prompt"], row["answer"], p_echo, rates[row["difficulty"] - 1])

    if rng.random() < p_fixed:
        row = sample_training_rows(rng, 1, level_weights)[0]
        pairs = [(q, task.format_answer(a)) for q, a in task.EXAMPLES]
        pairs.append((row["prompt"], reply(row)))
    else:
        pairs = [(r["prompt"], reply(r)) for r in sample_training_rows(rng, turns, level_weights)]
    return encode_turns(tokenizer, pairs)


def sample_training_rows(rng: random.Random, n: int, level_weights: Sequence[float]) -> list[dict[str, Any]]:
    levels = rng.choices(task.DIFFICULTIES, weights=level_weights, k=n)
    return [task.make_problem(rng, level) for level in levels]


@torch.no_grad()
def generate_replies(model, tokenizer, prompts: Sequence[str], *, batch_size: int = 64,
                     max_new_tokens: int = task.MAX_NEW_TOKENS, do_sample: bool = False,
                     num_return_sequences: int = 1, seed: int = 0) -> list[list[str]]:
    """Replies (decoded, special tokens dropped) for each prompt, via HF generate with left padding."""
    model.eval()
    tokenizer.padding_side = "left"
    if do_sample:
        torch.manual_seed(seed)
    out: list[list[str]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        texts = [tokenizer.apply_chat_template(task.messages(p), tokenize=False, add_generation_prompt=True)
                 for p in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                             temperature=1.0 if do_sample else None, top_p=None, top_k=None,
                             num_return_sequences=num_return_sequences,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        replies = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [replies[i:i + num_return_sequences] for i in range(0, len(replies), num_return_sequences)]
    return out


def evaluate(model, tokenizer, rows: Sequence[dict[str, Any]], *, do_sample: bool = False, num_samples: int = 1,
             batch_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """Accuracy overall and per difficulty (mean of ``verify`` over rows and samples)."""
    replies = generate_replies(model, tokenizer, [r["prompt"] for r in rows], batch_size=batch_size,
                               do_sample=do_sample, num_return_sequences=num_samples, seed=seed)
    per: dict[int, list[float]] = defaultdict(list)
    for row, reps in zip(rows, replies):
        per[int(row["difficulty"])] += [task.verify(r, row["answer"]) for r in reps]
    scores = [s for v in per.values() for s in v]
    return {"overall": sum(scores) / max(len(scores), 1),
            "by_difficulty": {str(d): sum(v) / len(v) for d, v in sorted(per.items())},
            "n_by_difficulty": {str(d): len(v) // num_samples for d, v in sorted(per.items())}}


def lr_at(step: int, steps: int, lr: float, warmup: int, final_frac: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=args.seed)
    init_info = None
    if args.init:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32)
        info_file = Path(args.init) / "pretrain_info.json"
        init_info = json.loads(info_file.read_text()) if info_file.exists() else None
    n_params = sum(p.numel() for p in model.parameters())
    prefix = prefix_ids(tokenizer, system_only=True)
    check = encode_turns(tokenizer, [(q, task.format_answer(a)) for q, a in task.EXAMPLES] + [("1 + 2", "= 3")])[0]
    rendered = _ids(tokenizer.apply_chat_template(task.messages("1 + 2") + [
        {"role": "assistant", "content": task.format_answer(3)}], tokenize=True))
    if prefix + check != rendered:
        raise RuntimeError("encode_turns does not reproduce the chat template's rendering")
    rng = random.Random(args.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    heldout = task.generate_dataset(args.eval_n, seed=HELDOUT_SEED)
    history = []
    start = time.perf_counter()
    bar = tqdm(range(args.steps), desc="pretrain", unit="step")
    ema = None
    for step in bar:
        model.train()
        seqs, masks = zip(*(training_sequence(tokenizer, rng, args.turns, args.level_weights, args.p_fixed,
                                              args.p_echo, args.slip_rates)
                            for _ in range(args.batch_size)))
        ids, attn = pad_right(seqs, tokenizer.pad_token_id)
        loss_mask, _ = pad_right(masks, 0)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, args.final_lr_frac)
        loss = answer_loss(prefix_logits(model, prefix, ids, attn), ids, loss_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            acc = evaluate(model, tokenizer, heldout[:args.eval_every_n])
            history.append({"step": step + 1, "loss": ema, "greedy": acc["by_difficulty"], "overall": acc["overall"]})
            bar.write(f"step {step + 1}: loss {ema:.3f} greedy {acc['overall']:.3f} {acc['by_difficulty']}")
    train_s = time.perf_counter() - start
    model.eval()
    greedy = evaluate(model, tokenizer, heldout)
    sampled = evaluate(model, tokenizer, heldout, do_sample=True, num_samples=args.eval_samples, seed=args.seed)
    import transformers

    info = {
        "script": "python -m rlsignals.demo.pretrain",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "model": {"class": "LlamaForCausalLM", **MODEL_DIMS, "vocab_size": len(tokenizer), "parameters": n_params,
                  "dtype": "float32"},
        "task": {"system_prompt": task.SYSTEM_PROMPT, "few_shot": task.FEW_SHOT, "levels": {
            str(k): [f"{op} {da}x{db} digits" for op, da, db in v] for k, v in task.LEVELS.items()},
            "reply_format": "= {answer}<|im_end|>", "max_new_tokens": task.MAX_NEW_TOKENS,
            "prefix_tokens": len(prefix_ids(tokenizer))},
        "train_wall_s": round(train_s, 1), "threads": args.threads, "final_loss_ema": ema,
        "heldout": {"seed": HELDOUT_SEED, "n": len(heldout), "greedy": greedy,
                    f"sampled_t1_x{args.eval_samples}": sampled},
        "history": history,
        "init": init_info,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json_atomic(out / "pretrain_info.json", info)
    print(f"saved to {out}: {n_params} parameters, {train_s:.0f}s, greedy {greedy['overall']:.3f} "
          f"{greedy['by_difficulty']}, sampled {sampled['overall']:.3f} {sampled['by_difficulty']}")
    return info


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rlsignals.demo.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write the model, tokenizer and pretrain_info.json")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16, help="conversations per step")
    p.add_argument("--turns", type=int, default=4, help="problems per random conversation")
    p.add_argument("--p-fixed", type=float, default=0.25,
                   help="fraction of conversations that use the demo's fixed few-shot prefix")
    p.add_argument("--p-echo", type=float, default=0.35,
                   help="probability that a trained reply restates the problem first (a habit RL can unlearn)")
    p.add_argument("--slip-rates", type=float, nargs=len(task.DIFFICULTIES), default=None,
                   help="per level, probability that a trained reply states task.slip_answer (answer + 10) "
                        "instead of the answer (default: never)")
    p.add_argument("--init", default=None,
                   help="continue from this saved model (a second stage); its pretrain_info.json is kept under 'init'")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--final-lr-frac", type=float, default=0.3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--level-weights", type=float, nargs=len(task.DIFFICULTIES), default=[2.0, 2.0, 2.0, 1.0, 1.0],
                   help="sampling weight of each difficulty level in training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-n", type=int, default=500, help="held-out problems for the final accuracy")
    p.add_argument("--eval-samples", type=int, default=4, help="temperature-1 samples per held-out problem")
    p.add_argument("--eval-every", type=int, default=250, help="steps between quick evaluations (0: none)")
    p.add_argument("--eval-every-n", type=int, default=100)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
