"""``rlsignals train``: an RL run from a config file (TOML or JSON), flags over it.

    rlsignals train run.toml --steps 200 --lr 2e-5
    torchrun --nproc_per_node 4 -m rlsignals train run.toml

Every key of the config (``config.TrainConfig``) is also a flag (``--prompts-per-step
32``). The config, the dataset, the scores file and the reward are checked
before any model loads; a problem is one line on stderr and exit status 2. The
run writes ``output_dir/metrics.jsonl`` (one line per step), checkpoints
``output_dir/checkpoint-<step>/`` (whole HF folders) and resumes from the newest
one. With ``sampler = "gain_rl"`` and no scores file, the prompts are scored at
the start with the starting model (``signals.scoring.score_prompts``, split over
the ranks) and the scores kept in ``output_dir/scores.jsonl`` for a resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

from rlsignals.trainer.config import (
    FIELDS,
    HINTS,
    ConfigError,
    Inputs,
    TrainConfig,
    check_inputs,
    load_config,
    type_name,
)

SCORES_FILE = "scores.jsonl"


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """The ``train`` subcommand: a config file, one flag per config key, and ``--debug``."""
    parser = subparsers.add_parser("train",
                                   help="an RL run (GRPO-style) from a config file; torchrun for data parallel",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="a .toml or .json file of settings (keys below)")
    keys = parser.add_argument_group("settings (override the config file)")
    for name in FIELDS:
        keys.add_argument(f"--{name.replace('_', '-')}", dest=f"set_{name}", metavar=name.upper(),
                          help=f"({type_name(HINTS[name])})")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    parser.set_defaults(func=run_train)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    return {name: getattr(args, f"set_{name}") for name in FIELDS if getattr(args, f"set_{name}", None) is not None}


def _load_policy(config: TrainConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlsignals.trainer.parallel import device_for_rank

    tokenizer = AutoTokenizer.from_pretrained(config.model)
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=getattr(torch, config.dtype))
    return model.to(device_for_rank()), tokenizer


def _start_scores(config: TrainConfig, inputs: Inputs, model, template, parallel) -> list[float]:
    """The GAIN-RL order: the scores file, the scores of an earlier start of this run, or
    scored now with the starting model (each rank a share; rank 0 keeps them)."""
    from rlsignals.io.tables import read_table, write_table
    from rlsignals.signals.scoring import ScoreConfig, score_prompts

    if inputs.scores is not None:
        return inputs.scores
    kept = Path(config.output_dir) / SCORES_FILE
    if kept.is_file():
        return [float(r["score"]) for r in sorted(read_table(kept, "scores"), key=lambda r: r["index"])]
    mine = list(range(parallel.rank, len(inputs.rows), parallel.world))
    score_config = ScoreConfig(module=config.angle_module, intra_weight=config.intra_weight,
                               inter_weight=config.inter_weight)
    rows = [r for batch in score_prompts(model, template, [inputs.rows[i][config.prompt_field] for i in mine],
                                         score_config, mine) for r in batch]
    rows = sorted((r for part in parallel.all_gather(rows) for r in part), key=lambda r: r["index"])
    if parallel.rank == 0:
        write_table(rows, kept)
    parallel.barrier()
    return [r["score"] for r in rows]


def train_from_config(config: TrainConfig, inputs: Inputs, parallel) -> list[dict]:
    """Build everything from a checked config and run it; returns the step records."""
    from rlsignals.signals.prompts import PromptTemplate, TemplateBounds, load_few_shot
    from rlsignals.trainer.live_angles import LiveAngles
    from rlsignals.trainer.loop import RLConfig, RLTrainer
    from rlsignals.trainer.rollout import hf_rollouts

    model, tokenizer = _load_policy(config)
    few_shot = load_few_shot(config.few_shot) if config.few_shot else []
    template = PromptTemplate(tokenizer, config.system_prompt, few_shot, config.use_chat_template)
    cache: dict[int, list[int]] = {}
    by_id = {id(row): i for i, row in enumerate(inputs.rows)}

    def render(row: dict) -> list[int]:
        key = by_id[id(row)]
        if key not in cache:
            cache[key] = template.token_ids(row[config.prompt_field])
        return cache[key]

    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    scores = _start_scores(config, inputs, model, template, parallel) if config.sampler == "gain_rl" else None
    live = LiveAngles(model, TemplateBounds.detect(template).split, module=config.angle_module,
                      intra_weight=config.intra_weight, inter_weight=config.inter_weight) \
        if config.live_angles else None
    rollout = hf_rollouts
    if config.rollout == "vllm":
        from rlsignals.trainer.vllm_rollout import VLLMRollout

        rollout = VLLMRollout(config.model, seed=config.seed, **config.vllm_options)
    rl = RLConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(RLConfig)})
    trainer = RLTrainer(model, tokenizer, inputs.rows, render, inputs.reward, rl, config.output_dir, scores=scores,
                        rollout=rollout, parallel=parallel, live_angles=live)
    if config.tracker:  # on every rank, made after wrapping: under FSDP it tracks the row slabs of the shards
        from rlsignals.trainer.tracker import Rank1Tracker

        trainer.hooks.append(Rank1Tracker(trainer.model, config.tracker_every,
                                          Path(config.output_dir) / "rank1_base.safetensors"))
    return trainer.train(resume=config.resume, progress=config.progress)


def run_train(args: argparse.Namespace) -> int:
    """Check the config and inputs (one-line errors, exit 2), then train (exit 0)."""
    from rlsignals.trainer.loop import NonFiniteLossError
    from rlsignals.trainer.parallel import Parallel

    started = time.perf_counter()
    debug = getattr(args, "debug", False) or os.environ.get("RLSIGNALS_DEBUG", "") not in ("", "0")
    try:
        config = load_config(args.config, _overrides(args))
        parallel = Parallel.start(config.parallel)
        inputs = check_inputs(config, parallel.world)
    except ConfigError as exc:
        if debug:
            raise
        print(f"rlsignals train: error: {exc}", file=sys.stderr)
        return 2
    try:
        history = train_from_config(config, inputs, parallel)
    except (NonFiniteLossError, ValueError) as exc:
        if debug:
            raise
        print(f"rlsignals train: error: {exc}", file=sys.stderr)
        return 1
    if parallel.rank == 0:
        last = history[-1] if history else {}
        print(f"rlsignals train: {len(history)} steps on {parallel.world} process(es) ({parallel.kind}) in "
              f"{time.perf_counter() - started:.0f} s; last reward {last.get('reward', float('nan')):.3f}; "
              f"metrics and checkpoints in {config.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlsignals")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
