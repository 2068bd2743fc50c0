"""Benchmark the live angle signal's cost against an RL step of the demo model.

One trainer with ``live_angles`` and one without, from the same start, taking
turns for ``--steps`` steps each (after one warm-up step) of the demo's RL settings
(32 prompts x 8 completions, 8 new tokens, HF generate). Per step:

  step_ms        wall time of ``train_step`` (rollouts, rewards, forward, backward, update)
  live_ms        time inside ``LiveAngles.compute`` (packing + fused angle_stats)
                 plus the forward pre-hook's calls (a detached view per call)

overhead = median(live_ms) / median(step_ms of the run without live angles);
the difference of the two runs' median step times is given too, but on a shared
machine it is dominated by noise.
Usage: python bench/train_step.py [--steps N] [--prompts P] [--generations G]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from common import print_table, readme_row, write_results

from rlsignals.demo import task
from rlsignals.demo.assets import load_default_model
from rlsignals.ops.backends import resolve_backend
from rlsignals.signals import PromptTemplate, TemplateBounds
from rlsignals.trainer.live_angles import LiveAngles
from rlsignals.trainer.loop import RLConfig, RLTrainer


class TimedLiveAngles(LiveAngles):
    """LiveAngles that adds up the time spent in its hook and in compute, per step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds = 0.0
        self.per_step: list[float] = []
        inner = self.module.register_forward_pre_hook  # time the hook's own calls as well

        def timed_register(hook):
            def timed(module, args):
                t0 = time.perf_counter()
                hook(module, args)
                self.seconds += time.perf_counter() - t0
            return inner(timed)

        self.module.register_forward_pre_hook = timed_register

    def compute(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = super().compute(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.per_step.append(self.seconds * 1e3)
        self.seconds = 0.0
        return out


def make_trainer(live: bool, args, out_dir: str) -> tuple[RLTrainer, TimedLiveAngles | None]:
    torch.manual_seed(0)
    model, tokenizer = load_default_model()
    template = PromptTemplate(tokenizer, task.SYSTEM_PROMPT, task.FEW_SHOT)
    rows = task.generate_dataset(args.prompts * 4, seed=1)
    angles = TimedLiveAngles(model, TemplateBounds.detect(template).split) if live else None
    config = RLConfig(steps=args.steps + 1, prompts_per_step=args.prompts, generations=args.generations,
                      max_new_tokens=task.MAX_NEW_TOKENS, lr=1e-4)
    trainer = RLTrainer(model, tokenizer, rows, lambda row: template.token_ids(row["prompt"]),
                        lambda text, row: task.verify(text, row["answer"]), config, out_dir, live_angles=angles)
    return trainer, angles


def timed_step(trainer: RLTrainer) -> float:
    t0 = time.perf_counter()
    trainer.train_step()
    return (time.perf_counter() - t0) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--generations", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain, _ = make_trainer(False, args, f"{tmp}/plain")
        live, angles = make_trainer(True, args, f"{tmp}/live")
        plain_steps, live_steps = [], []
        for _ in range(args.steps + 1):  # alternate, so that the machine's load hits both alike
            plain_steps.append(timed_step(plain))
            live_steps.append(timed_step(live))
        plain_steps, live_steps, live_ms = plain_steps[1:], live_steps[1:], angles.per_step[1:]

    def q(xs, i):
        return statistics.quantiles(xs, n=10)[i] if len(xs) >= 2 else xs[0]

    record = {"model": "demo (Llama, d=128, 4 layers)", "angle_backend": resolve_backend("auto", torch.device("cpu")),
              "prompts": args.prompts, "generations": args.generations,
              "max_new_tokens": task.MAX_NEW_TOKENS, "steps": args.steps,
              "step_ms_median": statistics.median(plain_steps), "step_ms_p20": q(plain_steps, 1),
              "step_ms_p80": q(plain_steps, 7), "step_live_ms_median": statistics.median(live_steps),
              "live_ms_median": statistics.median(live_ms), "live_ms_p20": q(live_ms, 1),
              "live_ms_p80": q(live_ms, 7), "live_ms_max": max(live_ms),
              "overhead": statistics.median(live_ms) / statistics.median(plain_steps),
              "overhead_max": max(live_ms) / min(plain_steps),
              "step_ratio_live_vs_plain": statistics.median(live_steps) / statistics.median(plain_steps)}
    print_table([record], [("step_ms_median", "step ms", ".0f"), ("step_live_ms_median", "step+live ms", ".0f"),
                           ("live_ms_median", "live ms", ".2f"), ("live_ms_max", "live max ms", ".2f"),
                           ("overhead", "overhead", ".3%"), ("overhead_max", "worst", ".3%")])
    row = readme_row("live angle signal in `rlsignals train`",
                     f"demo model (Llama, d = 128, 4 layers), {args.prompts} prompts x {args.generations} completions, "
                     f"{args.steps} steps",
                     f"{record['live_ms_median']:.2f} ms per step = {record['overhead']:.2%} of a step "
                     f"(worst {record['overhead_max']:.2%})",
                     f"the same RL step without it: {record['step_ms_median']:.0f} ms (median)")
    path = write_results("train_step", torch.device("cpu"), [record],
                         {"note": "live_ms is measured inside the step, so machine load inflates both alike",
                          "readme_rows": [row]})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
