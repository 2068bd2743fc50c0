"""The end-to-end demo (``make demo`` / ``rlsignals demo``), on the embedded
model and task, on a laptop CPU.

1. Score the training prompts by angle signal (prefill, the paper's hook).
2. RL (GRPO, rollouts from HF generate, verifiable reward) from the same start
   with GAIN-RL sampling and with uniform sampling; greedy accuracy on a held-out
   set every ``eval_every`` steps; checkpoints at the same steps.
3. On the uniform run (plain RL): the rank-1 trajectory of the updates over its
   checkpoints (``rlsignals rank1``); extrapolation from the early checkpoints
   (AlphaRL, linear-in-step, two-point) to the final step; the rank-1 model of
   the final update; the update-geometry report; and how soon each probe prompt
   was learned against its angle signal.
4. A short SFT run from the same start, for the bf16 sparsity of its update.
5. One table (printed, and in demo.json), plots beside it.

Everything printed is measured in this run; nothing is assumed to hold.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlsignals.io.checkpoints import Checkpoint, select_matrices
from rlsignals.demo import task
from rlsignals.demo.assets import load_default_model
from rlsignals.demo.sft import sft
from rlsignals.rank1.extrapolate import extrapolate
from rlsignals.geometry.metrics import bf16_changed
from rlsignals.rank1.track import rank1_model, track_rank1
from rlsignals.geometry.report import diff_report
from rlsignals.signals import PromptTemplate, ScoreConfig, score_prompts
from rlsignals.trainer.evaluate import greedy_correct
from rlsignals.trainer.loop import RLConfig, RLTrainer


@dataclasses.dataclass
class DemoConfig:
    train_prompts: int = 384
    eval_prompts: int = 128
    probe_prompts: int = 128      # training prompts whose greedy answer is checked along the uniform run
    steps: int = 60
    prompts_per_step: int = 32
    generations: int = 8
    lr: float = 1e-4              # Adam; 3e-4 degrades the embedded model (measured while building it)
    eval_every: int = 10
    fit_until: float = 0.4        # extrapolate from the checkpoints up to this fraction of the run
    sft_steps: int = 20
    sft_batch: int = 16
    # GAIN-RL's released settings, as fractions of its ~7.5k-prompt dataset (sigma 1000,
    # n 500, adj_max 1000 ranks), scaled to this pool: at 384 prompts the absolute values
    # would throw mu to the last rank within a few steps
    sigma_fraction: float = 0.13
    step_fraction: float = 0.067  # n
    max_step_fraction: float = 0.13  # adj_max
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoConfig:
        """A reduced size, for the test suite: every number of the table, in a minute or two."""
        return cls(train_prompts=32, eval_prompts=16, probe_prompts=16, steps=4, prompts_per_step=4,
                   generations=4, eval_every=2, fit_until=1.0, sft_steps=2, sft_batch=4)


class Evaluator:
    """RLTrainer hook: greedy accuracy on the held-out rows (and, optionally, which
    probe rows are answered right) every ``every`` steps."""

    def __init__(self, model, tokenizer, render, eval_rows, probe_rows, every: int):
        self.model, self.tokenizer, self.render = model, tokenizer, render
        self.eval_rows, self.probe_rows, self.every = eval_rows, probe_rows, every
        self.curve: list[tuple[int, float]] = []
        self.probe: list[tuple[int, list[float]]] = []

    def evaluate(self, step: int) -> None:
        correct = greedy_correct(self.model, self.tokenizer, self.eval_rows, self.render, _verify,
                                 max_new_tokens=task.MAX_NEW_TOKENS)
        self.curve.append((step, float(np.mean(correct))))
        if self.probe_rows:
            self.probe.append((step, greedy_correct(self.model, self.tokenizer, self.probe_rows, self.render, _verify,
                                                    max_new_tokens=task.MAX_NEW_TOKENS)))

    def __call__(self, trainer, record: dict) -> None:
        if trainer.step % self.every == 0:
            self.evaluate(trainer.step)
            record["eval_accuracy"] = self.curve[-1][1]


def _verify(text: str, row: dict) -> float:
    return task.verify(text, row["answer"])


def _accuracy(model, tokenizer, render, rows) -> float:
    return float(np.mean(greedy_correct(model, tokenizer, rows, render, _verify, max_new_tokens=task.MAX_NEW_TOKENS)))


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, acc in curve if acc >= target), None)


def learned_step(probe: list[tuple[int, list[float]]], never: int) -> list[float]:
    """Per probe row: the first evaluated step at which it is answered right (rows right
    at step 0 are left out: NaN); ``never`` when it never is."""
    first = []
    for i in range(len(probe[0][1])):
        if probe[0][1][i] >= 1:
            first.append(math.nan)
            continue
        first.append(next((float(step) for step, right in probe[1:] if right[i] >= 1), float(never)))
    return first


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    keep = [i for i in range(len(x)) if math.isfinite(x[i]) and math.isfinite(y[i])]
    if len(keep) < 3 or len({x[i] for i in keep}) < 2 or len({y[i] for i in keep}) < 2:
        return math.nan  # undefined: too few rows, or one side constant
    return float(spearmanr([x[i] for i in keep], [y[i] for i in keep]).statistic)


def bf16_sparsity(before: Checkpoint, after: Checkpoint) -> float:
    """Fraction of the decoder matrices' entries unchanged in bf16."""
    changed = total = 0
    for name in select_matrices(before):
        mask = bf16_changed(before.get(name), after.get(name))
        changed += int(mask.sum())
        total += mask.numel()
    return 1.0 - changed / total


def _plots(out: Path, results: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, style in (("gain_rl", "-o"), ("uniform", "-s")):
        steps, acc = zip(*results["arms"][arm]["curve"])
        axes[0].plot(steps, acc, style, label=f"{arm} sampling")
    axes[0].axhline(results["target_accuracy"], color="gray", ls=":", label="target")
    for name, acc in results["extrapolation"]["accuracy"].items():
        axes[0].scatter([results["config"]["steps"]], [acc], marker="x", label=f"extrapolated: {name}")
    axes[0].set_xlabel("RL step")
    axes[0].set_ylabel("greedy accuracy (held-out)")
    axes[0].legend(fontsize=7)
    axes[0].set_title("accuracy against steps", fontsize=9)
    probe = results["angle_vs_learning"]
    never = results["config"]["steps"] + results["config"]["eval_every"]
    x = [s for s, t in zip(probe["scores"], probe["learned_step"]) if math.isfinite(t)]
    y = [t for t in probe["learned_step"] if math.isfinite(t)]
    axes[1].scatter(x, y, s=12)
    axes[1].set_xlabel("angle score (intra + inter)")
    axes[1].set_ylabel(f"first step answered right ({never} = never)")
    axes[1].set_title(f"angle signal vs how soon learned (Spearman {probe['spearman']:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=110)
    plt.close(fig)
    return ["demo.png"]


def run_demo(out_dir: str | Path, config: DemoConfig | None = None, progress: bool = True) -> dict[str, Any]:
    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model0, tokenizer = load_default_model()
    template = PromptTemplate(tokenizer, system_prompt=task.SYSTEM_PROMPT, few_shot=task.FEW_SHOT)
    cache: dict[str, list[int]] = {}

    def render(row: dict) -> list[int]:
        if row["id"] not in cache:
            cache[row["id"]] = template.token_ids(row["prompt"])
        return cache[row["id"]]

    train = task.generate_dataset(cfg.train_prompts, seed=cfg.seed + 1)
    held_out = task.generate_dataset(cfg.eval_prompts, seed=cfg.seed + 2)
    probe = train[:cfg.probe_prompts]
    base = out / "base"
    model0.save_pretrained(base)
    tokenizer.save_pretrained(base)

    print("1/5 scoring the training prompts by angle signal ...", flush=True)
    t = time.perf_counter()
    scored = {r["index"]: r for batch in score_prompts(model0, template, [r["prompt"] for r in train], ScoreConfig())
              for r in batch}
    scores = [scored[i]["score"] for i in range(len(train))]
    score_seconds = time.perf_counter() - t
    acc0 = _accuracy(model0, tokenizer, render, held_out)

    arms: dict[str, dict] = {}
    for n, arm in enumerate(("gain_rl", "uniform")):
        print(f"{2 + n}/5 RL with {arm} sampling ...", flush=True)
        model = copy.deepcopy(model0)
        evaluator = Evaluator(model, tokenizer, render, held_out, probe if arm == "uniform" else [], cfg.eval_every)
        evaluator.curve.append((0, acc0))
        if arm == "uniform":
            evaluator.probe.append((0, greedy_correct(model, tokenizer, probe, render, _verify,
                                                      max_new_tokens=task.MAX_NEW_TOKENS)))
        options = {"sigma_fraction": cfg.sigma_fraction, "n": cfg.step_fraction * len(train),
                   "adj_max": cfg.max_step_fraction * len(train)} if arm == "gain_rl" else {}
        rl = RLConfig(steps=cfg.steps, prompts_per_step=cfg.prompts_per_step, generations=cfg.generations,
                      max_new_tokens=task.MAX_NEW_TOKENS, lr=cfg.lr, sampler=arm, sampler_options=options,
                      save_every=cfg.eval_every, seed=cfg.seed)
        t = time.perf_counter()
        trainer = RLTrainer(model, tokenizer, train, render, _verify, rl, out / arm,
                            scores=scores, hooks=[evaluator])
        history = trainer.train(progress=progress)
        arms[arm] = {"curve": evaluator.curve, "seconds": time.perf_counter() - t,
                     "final_accuracy": evaluator.curve[-1][1], "train_reward_last": history[-1]["reward"],
                     "probe": evaluator.probe, "model": model}

    print("4/5 rank-1 trajectory, extrapolation, rank-1 model, update geometry ...", flush=True)
    uniform = arms["uniform"]
    checkpoints = [out / "uniform" / f"checkpoint-{s}" for s, _ in uniform["curve"][1:]]
    traj = track_rank1(base, checkpoints, out / "trajectory", progress=progress)
    accuracy = dict(uniform["curve"][1:])
    fit_steps = [s for s in accuracy if s <= max(cfg.fit_until * cfg.steps, 2 * cfg.eval_every)]
    final_step, final_acc = uniform["curve"][-1]
    extrapolated = {}
    for name, kwargs in (("alpharl", dict(method="alpharl", target_accuracy=final_acc, update="replace")),
                         ("alpharl_released", dict(method="alpharl", target_accuracy=final_acc)),
                         ("linear_step", dict(method="linear_step", target_step=final_step)),
                         ("two_point", dict(method="two_point", target_step=final_step))):
        try:
            path = extrapolate(base, traj, out / f"extrapolated-{name}", accuracy=accuracy,
                               accuracy_path="(demo eval curve)", fit_steps=fit_steps, **kwargs)
        except ValueError as exc:  # e.g. accuracy did not move over the fitted steps
            extrapolated[name] = f"not fitted: {exc}"
            continue
        model, _ = load_default_model()
        model.load_state_dict(_state(Checkpoint(path)))
        extrapolated[name] = _accuracy(model, tokenizer, render, held_out)
    rank1 = rank1_model(base, traj, out / "rank1-model")
    r1_model, _ = load_default_model()
    r1_model.load_state_dict(_state(Checkpoint(rank1)))
    rank1_acc = _accuracy(r1_model, tokenizer, render, held_out)
    report = diff_report(base, checkpoints[-1], out / "report", k=16, max_iters=32, progress=False)

    print("5/5 SFT from the same start, for comparison ...", flush=True)
    sft_model = copy.deepcopy(model0)
    sft(sft_model, tokenizer, train, render, steps=cfg.sft_steps, batch_size=cfg.sft_batch, lr=cfg.lr, seed=cfg.seed,
        progress=progress)
    sft_model.save_pretrained(out / "sft")
    sparsity = {"rl": bf16_sparsity(Checkpoint(base), Checkpoint(checkpoints[-1])),
                "sft": bf16_sparsity(Checkpoint(base), Checkpoint(out / "sft"))}

    never = cfg.steps + cfg.eval_every
    learned = learned_step(uniform["probe"], never)
    probe_scores = scores[:cfg.probe_prompts]
    best = max(arms["gain_rl"]["final_accuracy"], arms["uniform"]["final_accuracy"])
    target = acc0 + 0.5 * (best - acc0)
    results = {
        "config": dataclasses.asdict(cfg),
        "start_accuracy": acc0,
        "target_accuracy": target,
        "score_seconds": score_seconds,
        "arms": {arm: {k: v for k, v in a.items() if k not in ("model", "probe")} | {"steps_to_target":
                 steps_to(a["curve"], target)} for arm, a in arms.items()},
        "extrapolation": {"fit_steps": fit_steps, "final_step": final_step, "final_accuracy": final_acc,
                          "accuracy": {k: v for k, v in extrapolated.items() if isinstance(v, float)},
                          "not_fitted": {k: v for k, v in extrapolated.items() if not isinstance(v, float)},
                          "mean_pls_r2": _mean_r2(out / "extrapolated-alpharl")},
        "rank1": {"accuracy": rank1_acc, "full_accuracy": final_acc,
                  "gain_recovered": (rank1_acc - acc0) / (final_acc - acc0) if final_acc != acc0 else math.nan,
                  "mean_rank1_energy": float(np.nanmean([m["rank1_energy"] for m in report["modules"].values()]))},
        "bf16_sparsity": sparsity,
        "angle_vs_learning": {"scores": probe_scores, "learned_step": learned,
                              "spearman": spearman(probe_scores, learned)},
    }
    results["plots"] = _plots(out, results)
    results["seconds"] = time.perf_counter() - started
    (out / "demo.json").write_text(json.dumps(results, indent=1) + "\n")
    print(format_table(results))
    print(f"\nplots: {out / 'demo.png'}, update geometry: {out / 'report' / 'index.html'}, numbers: {out / 'demo.json'}")
    return results


def _state(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    return {name: ckpt.get(name) for name in ckpt.names()}


def _mean_r2(folder: Path) -> float | None:
    info = folder / "extrapolation.json"
    return json.loads(info.read_text()).get("mean_r2") if info.exists() else None


def format_table(r: dict) -> str:
    def acc(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) and math.isfinite(v) else "-"

    cfg = r["config"]
    lines = [f"\nrlsignals demo: {cfg['steps']} RL steps x {cfg['prompts_per_step']} prompts x {cfg['generations']} "
             f"samples, held-out greedy accuracy ({r['seconds']:.0f} s in all; scoring {cfg['train_prompts']}"
             f" prompts took {r['score_seconds']:.1f} s)", "",
             f"{'':44}{'GAIN-RL':>13}{'uniform':>13}"]
    curves = {arm: dict(r["arms"][arm]["curve"]) for arm in ("gain_rl", "uniform")}
    for step in sorted(curves["uniform"]):
        lines.append(f"  accuracy at step {step:<27}{acc(curves['gain_rl'].get(step)):>13}{acc(curves['uniform'][step]):>13}")
    reach = {arm: r["arms"][arm]["steps_to_target"] for arm in curves}
    lines.append(f"  steps to reach {r['target_accuracy']:.3f} (halfway to the best){'':4}"
                 + "".join(f"{'not reached' if reach[arm] is None else reach[arm]:>13}" for arm in ("gain_rl", "uniform")))
    ex = r["extrapolation"]
    lines += ["", f"  extrapolated from steps {ex['fit_steps']} to step {ex['final_step']} (uniform run, final accuracy "
                  f"{acc(ex['final_accuracy'])}):"]
    for name, value in ex["accuracy"].items():
        share = value / ex["final_accuracy"] if ex["final_accuracy"] else math.nan
        lines.append(f"    {name:<24} accuracy {acc(value)}  ({share:.0%} of the final)")
    for name, why in ex["not_fitted"].items():
        lines.append(f"    {name:<24} {why}")
    r1 = r["rank1"]
    lines += [f"  rank-1 model (W0 + ||dW|| u1 v1^T) accuracy {acc(r1['accuracy'])} vs full update {acc(r1['full_accuracy'])}"
              f" (gain recovered {r1['gain_recovered']:.0%}; mean sigma1^2/||dW||^2 {r1['mean_rank1_energy']:.2f})",
              f"  bf16 entries unchanged: RL update {r['bf16_sparsity']['rl']:.1%}, SFT update "
              f"{r['bf16_sparsity']['sft']:.1%}",
              f"  angle signal vs step first answered right (probe prompts): Spearman "
              f"{r['angle_vs_learning']['spearman']:.2f} (negative = high angle learnt sooner)"]
    return "\n".join(lines)
