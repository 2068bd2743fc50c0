"""``rlsignals train``: an RL run from a config file (TOML or JSON), flags over it.

    rlsignals train run.toml --steps 200 --lr 2e-5
    torchrun --nproc_per_node 4 -m rlsignals train run.toml

Every key of the config (``config.TrainConfig``) is also a flag (``--prompts-per-step
32``). Before the model's weights load, the config, the dataset, the scores file and the
reward are checked, ``output_dir`` is taken under the one output rule
(``rlsignals.io.outputs``: a new or empty folder, or one of an earlier `rlsignals train`,
locked while the run writes it; what a failed run wrote stays for a resume), and every
prompt is rendered and fitted to the context (``max_length`` / ``on_long``, as in
`rlsignals score`); a problem is one line on stderr.
The run writes ``output_dir/metrics.jsonl`` (one line per step), checkpoints
``output_dir/checkpoint-<step>/`` (whole HF folders) and resumes from the newest one.
With ``sampler = "gain_rl"`` and no scores file, the prompts are scored at the start with
the starting model (split over the ranks) and kept in ``output_dir/scores.jsonl`` for a
resume.
"""

from __future__ import annotations

import time
from pathlib import Path

from rlsignals.io.errors import UserError
from rlsignals.settings import narrow
from rlsignals.trainer.config import Inputs, RLConfig, TrainConfig, check_inputs, read_scores

SCORES_FILE = "scores.jsonl"


def _start_scores(config: TrainConfig, inputs: Inputs, model, template, parallel) -> list[float]:
    """The GAIN-RL order: the scores file, the scores of an earlier start of this run, or
    scored now with the starting model (each rank a share; rank 0 keeps them)."""
    from rlsignals.io.distributed import barrier
    from rlsignals.io.tables import write_table
    from rlsignals.signals.config import ScoreConfig
    from rlsignals.signals.scoring import score_prompts

    if inputs.scores is not None:
        return inputs.scores
    kept = Path(config.output_dir) / SCORES_FILE
    if kept.is_file():
        return read_scores(kept, len(inputs.rows))
    mine = list(range(parallel.rank, len(inputs.rows), parallel.world))
    score_config = ScoreConfig(module=config.angle_module, intra_weight=config.intra_weight,
                               inter_weight=config.inter_weight, max_length=config.max_length,
                               on_long=config.on_long)
    rows = [r for batch in score_prompts(model, template, [inputs.rows[i][config.prompt_field] for i in mine],
                                         score_config, mine) for r in batch]
    rows = sorted((r for part in parallel.all_gather(rows) for r in part), key=lambda r: r["index"])
    if parallel.rank == 0:
        write_table(rows, kept)
    barrier(parallel.world)
    return [r["score"] for r in rows]


def encode_rows(config: TrainConfig, rows: list[dict], template, context: int | None) -> list[list[int]]:
    """Every row's prompt token ids, fitted to ``max_length`` (default: the model's context less
    ``max_new_tokens``) as `rlsignals score` fits them (``prompts.fit_context``)."""
    import warnings

    from rlsignals.signals.prompts import TemplateBounds, fit_context

    if config.max_length is not None:
        limit, text = config.max_length, f"max_length ({config.max_length})"
    elif context:
        limit = context - config.max_new_tokens
        text = f"the {limit} that fit the model's context of {context} less max_new_tokens ({config.max_new_tokens})"
        if limit < 1:
            raise UserError(f"max_new_tokens ({config.max_new_tokens}) leaves no room for a prompt in the model's "
                            f"context of {context} tokens")
    else:
        limit, text = None, None
    split = TemplateBounds.detect(template).split
    encoded, truncated = [], 0
    for index, row in enumerate(rows):
        ids = template.token_ids(row[config.prompt_field])
        ids, _, cut = fit_context(ids, *split(ids), limit, config.on_long, index, text)
        encoded.append(ids)
        truncated += cut
    if truncated:
        warnings.warn(f"{truncated} prompt(s) longer than {text} had their question truncated", RuntimeWarning,
                      stacklevel=2)
    return encoded


def _renderer(rows: list[dict], prompts: list[list[int]]):
    """row -> its encoded prompt (rows are the dataset's own dicts)."""
    by_id = {id(row): i for i, row in enumerate(rows)}
    return lambda row: prompts[by_id[id(row)]]


def train_from_config(config: TrainConfig, inputs: Inputs, parallel) -> list[dict]:
    """Build everything from a checked config and run it; returns the step records."""
    from transformers import AutoConfig, AutoTokenizer

    from rlsignals.io.models import load_model, quiet_transformers
    from rlsignals.signals.prompts import PromptTemplate, TemplateBounds, load_few_shot
    from rlsignals.trainer.evaluate import Evaluation
    from rlsignals.trainer.live_angles import LiveAngles
    from rlsignals.trainer.loop import RLTrainer
    from rlsignals.trainer.rollout import hf_rollouts

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    few_shot = load_few_shot(config.few_shot) if config.few_shot else []
    template = PromptTemplate(tokenizer, config.system_prompt, few_shot, config.use_chat_template)
    context = getattr(AutoConfig.from_pretrained(config.model), "max_position_embeddings", None)
    render = _renderer(inputs.rows, encode_rows(config, inputs.rows, template, context))
    evaluation = None
    if inputs.eval_rows is not None:
        evaluation = Evaluation(tokenizer, inputs.eval_rows,
                                _renderer(inputs.eval_rows, encode_rows(config, inputs.eval_rows, template, context)),
                                inputs.reward, every=config.eval_every, max_new_tokens=config.max_new_tokens)
    model, _ = load_model(config.model, tokenizer, "auto", config.dtype)
    scores = _start_scores(config, inputs, model, template, parallel) if config.sampler == "gain_rl" else None
    live = LiveAngles(model, TemplateBounds.detect(template).split, module=config.angle_module,
                      intra_weight=config.intra_weight, inter_weight=config.inter_weight) \
        if config.live_angles else None
    rollout = hf_rollouts
    if config.rollout == "vllm":
        from rlsignals.trainer.vllm_rollout import VLLMRollout

        rollout = VLLMRollout(config.model, seed=config.seed, **config.vllm_options)
    trainer = RLTrainer(model, tokenizer, inputs.rows, render, inputs.reward, narrow(config, RLConfig),
                        config.output_dir, scores=scores, rollout=rollout, parallel=parallel, live_angles=live,
                        hooks=[evaluation] if evaluation is not None else [])
    if config.tracker:  # on every rank, made after wrapping: under FSDP it tracks the row slabs of the shards
        from rlsignals.trainer.tracker import Rank1Tracker

        trainer.hooks.append(Rank1Tracker(trainer.model, config.tracker_every,
                                          Path(config.output_dir) / "rank1_base.safetensors",
                                          jump_at=config.jump_at, jump_target=config.jump_target,
                                          jump_ahead=config.jump_ahead, jump_update=config.jump_update,
                                          accuracy_key=config.tracker_accuracy, evaluation=evaluation))
    return trainer.train(resume=config.resume, progress=config.progress)


def run(config: TrainConfig) -> int:
    """Check the inputs and the output folder, then train (exit 0)."""
    from rlsignals.io.outputs import incremental_output
    from rlsignals.trainer.parallel import Parallel

    started = time.perf_counter()
    parallel = Parallel.start(config.parallel)
    inputs = check_inputs(config, parallel.world)
    with incremental_output(config.output_dir, "train", config.overwrite, resume=config.resume,
                            keep_on_failure=True, flag="output_dir"):
        history = train_from_config(config, inputs, parallel)
    if parallel.rank == 0:
        last = history[-1] if history else {}
        print(f"rlsignals train: {len(history)} steps on {parallel.world} process(es) ({parallel.kind}) in "
              f"{time.perf_counter() - started:.0f} s; last reward {last.get('reward', float('nan')):.3f}; "
              f"metrics and checkpoints in {config.output_dir}")
    return 0
