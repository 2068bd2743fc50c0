"""Score every prompt of a dataset with the angle signal, at prefill.

For each prompt, rendered as [prefix | question | suffix] (see prompts.py),
one forward pass of the model up to the hooked module (default: the input of
the last decoder layer's mlp.up_proj) gives hidden states h; then

    intra = mean_{i, j in question} cos(h_i, h_j)
    inter = mean_{i in question, j in prefix} cos(h_i, h_j)
    score = intra_weight * intra + inter_weight * inter

(the paper: weights 1 and 1; the released code: 1 and 8). ``mode="released"``
swaps intra/inter for the released scorer's quantities (``released_angle``:
flawed, for comparison only).

Cost: every prompt shares its prefix (system prompt, few-shot turns), so by
default (``prefix_cache``) each distinct prefix runs once (``prefix_cache.py``:
its unit-row sum S_P and key/value cache) and each question runs only its own
tokens on top of that cache. Prompts are sorted by length and batched under a
token budget to keep padding small; the forward stops at the hook and the
padded batch is reduced in place (``reduce.py``: padding and suffix rows are
ignored). Results stream to a partial file, so an interrupted run resumes
where it stopped. Under torchrun each rank scores a shard and rank 0 merges.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlsignals.io.distributed import barrier, rank_and_world
from rlsignals.io.errors import UserError
from rlsignals.io.tables import check_table_path, read_jsonl_tolerant, write_table
from rlsignals.signals.capture import StopForward, capture_input, resolve_module
from rlsignals.signals.prefix_cache import PrefixState, run_prefix
from rlsignals.signals.prompts import PromptTemplate, TemplateBounds, load_few_shot, load_rows
from rlsignals.signals.reduce import add_sums, angle_stats_from_sums, prefix_question_sums

SCORE_MODES = ("exact", "released")
# Default tokens per forward pass (bench/score_dataset.py --sweep batch_tokens, results in
# bench/results/score_dataset_sweep-cpu.json). On the CPU a batch is best kept to about 2^21
# activation elements (tokens x d), within [1024, 16384] tokens: larger batches lose to cache
# misses in the MLP's element-wise ops (d = 512, cached prefix: 8192 tokens ran 2.4x slower than
# 4096), and this rule's pick was within about 10% of the sweep's best at d = 256 ... 4096.
# On CUDA, large batches fill the device (not yet measured on one).
CPU_BATCH_ELEMENTS = 1 << 21
CPU_BATCH_TOKENS_RANGE = (1024, 16384)
CUDA_BATCH_TOKENS = 16384
# Fixed cost of one forward pass in tokens, for plan_batches' trade-off between padding and
# more, smaller batches (on the CPU a pass of a few hundred tokens runs at nearly full speed).
BATCH_COST_TOKENS = 64


def released_angle(hidden: torch.Tensor, prefix_len: int, suffix_len: int) -> tuple[float, float]:
    """The released GAIN-RL scorer's (intra, inter) of one prompt's hidden states
    [m, d], reproduced as it computes them, flaws included (comparison only).

    It forms the m x m cosine matrix C (fp32), zeroes the entries above the first
    superdiagonal (j > i + 1: the tril mask keeps one future token), then slices
    rows twice: A = C[P:m-S] (P = prefix_len, S = suffix_len; the released code
    hard-codes P = 110, S = 6), intra = mean of A[P:len(A)-S], inter = mean of
    A[:P], each mean over ALL m columns, zeroed entries included. So "intra" is
    rows 2P .. m-2S-1 against every token and "inter" rows P .. 2P-1 against
    every token, not the question/question and question/prefix blocks; intra is
    NaN whenever the question (with the suffix) has at most P + S tokens. Its
    score is intra + 8 * inter (``inter_weight=8``)."""
    m = hidden.shape[0]
    if prefix_len < 0 or not 0 < suffix_len < m:
        raise ValueError(f"released_angle needs prefix_len >= 0 and 0 < suffix_len < m={m}, got "
                         f"{prefix_len}, {suffix_len}")
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
    cos = torch.tril(unit @ unit.T, diagonal=1)
    rows = cos[prefix_len:m - suffix_len]
    return float(rows[prefix_len:rows.shape[0] - suffix_len].mean()), float(rows[:prefix_len].mean())


@dataclasses.dataclass
class ScoreConfig:
    """Options of a scoring run (all have working defaults)."""

    module: str | None = None          # hooked module; default: last layer's mlp.up_proj
    intra_weight: float = 1.0
    inter_weight: float = 1.0          # the released code used 8
    batch_tokens: int | None = None    # padded tokens per forward pass; None: default_batch_tokens
    max_batch_size: int = 64
    max_length: int | None = None      # default: the model's max_position_embeddings
    on_long: str = "error"             # "error" or "truncate" (drops question tokens from the end)
    prefix_tokens: int | None = None   # explicit split; default: detected from the template
    suffix_tokens: int | None = None
    padding_side: str = "right"
    exclude_diagonal: bool = False
    backend: str = "auto"
    mode: str = "exact"                # "exact" or "released" (see released_angle; comparison only)
    prefix_cache: bool = True          # run each shared prefix once, then only the questions (mode "exact")

    def __post_init__(self) -> None:
        if self.mode not in SCORE_MODES:
            raise ValueError(f"mode must be one of {SCORE_MODES}, got {self.mode!r}")
        if self.on_long not in ("error", "truncate"):
            raise ValueError(f"on_long must be 'error' or 'truncate', got {self.on_long!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if (self.batch_tokens is not None and self.batch_tokens < 1) or self.max_batch_size < 1:
            raise ValueError(f"batch_tokens and max_batch_size must be >= 1, got {self.batch_tokens} and "
                             f"{self.max_batch_size}")


@dataclasses.dataclass
class EncodedPrompt:
    index: int
    ids: list[int]
    prefix_len: int
    question_end: int
    truncated: bool


def encode_prompts(template: PromptTemplate, prompts: Sequence[str], indices: Sequence[int],
                   config: ScoreConfig, max_length: int | None) -> list[EncodedPrompt]:
    bounds = None if config.prefix_tokens is not None and config.suffix_tokens is not None \
        else TemplateBounds.detect(template)
    encoded, truncated = [], 0
    for index, prompt in zip(indices, prompts):
        ids = template.token_ids(prompt)
        prefix_len, question_end = bounds.split(ids) if bounds else (0, len(ids))
        if config.prefix_tokens is not None:
            prefix_len = config.prefix_tokens
        if config.suffix_tokens is not None:
            question_end = len(ids) - config.suffix_tokens
        if not 0 <= prefix_len <= question_end <= len(ids):
            raise ValueError(f"prompt {index}: prefix ({prefix_len} tokens) and suffix "
                             f"({len(ids) - question_end} tokens) do not fit its {len(ids)} tokens")
        excess = len(ids) - max_length if max_length else 0
        if excess > 0:
            if config.on_long == "error":
                raise ValueError(f"prompt {index} has {len(ids)} tokens, more than the model's context of "
                                 f"{max_length}; pass on_long='truncate' (--on-long truncate) to cut its question")
            if excess > question_end - prefix_len:
                raise ValueError(f"prompt {index}: the prefix and suffix alone ({len(ids) - question_end + prefix_len}"
                                 f" tokens) exceed the model's context of {max_length}")
            ids = ids[:question_end - excess] + ids[question_end:]
            question_end -= excess
            truncated += 1
        encoded.append(EncodedPrompt(index, ids, prefix_len, question_end, excess > 0))
    if truncated:
        warnings.warn(f"{truncated} prompt(s) longer than the model's context ({max_length} tokens) had their "
                      "question truncated", RuntimeWarning, stacklevel=2)
    return encoded


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int,
                 batch_cost_tokens: int = BATCH_COST_TOKENS) -> list[list[int]]:
    """Positions grouped into batches of similar length, padding and batch count traded off.

    Sorted by length, the positions are cut into contiguous batches that minimise
    sum over batches of (size x longest length + batch_cost_tokens): the padded
    tokens computed plus a fixed cost per forward pass, in tokens. A batch holds at
    most max_batch_size prompts and size x longest <= batch_tokens (a prompt longer
    than that runs alone). Exact, by dynamic programming: O(n x max_batch_size).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    best = [0.0] + [math.inf] * len(order)  # best[j]: cost of batching the first j
    cut = [0] * (len(order) + 1)            # cut[j]: where the last batch of that best plan starts
    for j in range(1, len(order) + 1):
        longest = sorted_lengths[j - 1]
        for i in range(j - 1, max(j - max_batch_size, 0) - 1, -1):
            size = j - i
            if size > 1 and size * longest > batch_tokens:
                break
            cost = best[i] + size * longest + batch_cost_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], len(order)
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def default_batch_tokens(device: torch.device, hidden_size: int) -> int:
    """Tokens per forward pass when ScoreConfig.batch_tokens is None: CUDA_BATCH_TOKENS on
    CUDA; on the CPU CPU_BATCH_ELEMENTS / hidden_size, a power of two inside
    CPU_BATCH_TOKENS_RANGE (d = 256: 8192, 1024: 2048, 4096: 1024)."""
    if device.type == "cuda":
        return CUDA_BATCH_TOKENS
    low, high = CPU_BATCH_TOKENS_RANGE
    tokens = 1 << max(CPU_BATCH_ELEMENTS // max(hidden_size, 1), 1).bit_length() - 1
    return min(max(tokens, low), high)


def batch_inputs(model: nn.Module, batch: Sequence[EncodedPrompt], prefix: PrefixState | None, padding_side: str,
                 pad_id: int) -> tuple[dict[str, Any], list[int], int]:
    """The model's keyword arguments for one forward of ``batch`` (on the model's device),
    each row's padding in front of its tokens, and the row width.

    Without ``prefix`` the whole prompts run; with it only the tokens after the prefix,
    at positions |P|, |P|+1, ..., on its cache (whose columns the attention mask keeps).
    Layout per row: [pads | tokens] (left) or [tokens | pads] (right).
    """
    device = _model_device(model)
    offset = prefix.length if prefix is not None else 0
    width = max(len(p.ids) - offset for p in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    pads = [width - len(p.ids) + offset if padding_side == "left" else 0 for p in batch]
    for row, (p, pad) in enumerate(zip(batch, pads)):
        input_ids[row, pad:pad + len(p.ids) - offset] = torch.tensor(p.ids[offset:])
        mask[row, pad:pad + len(p.ids) - offset] = 1
    position_ids = offset + (mask.cumsum(1) - 1).clamp_min(0)
    cache = prefix.cache(model, len(batch)) if prefix is not None else None
    attention_mask = torch.cat([torch.ones(len(batch), offset, dtype=torch.long), mask], 1) if cache is not None \
        else mask
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
              "position_ids": position_ids.to(device), "past_key_values": cache, "use_cache": cache is not None}
    return inputs, pads, width


def score_batch(model: nn.Module, module: nn.Module, batch: Sequence[EncodedPrompt], config: ScoreConfig,
                pad_id: int, prefix: PrefixState | None = None) -> list[dict[str, Any]]:
    """One forward pass up to ``module``; the angle signal of each prompt of the batch.

    Without ``prefix`` the whole prompts run. With it (every prompt of the batch
    starts with ``prefix.ids`` and has prefix_len == prefix.length) only the
    tokens after the prefix run, on top of its cache, at positions |P|, |P|+1, ...;
    S_P comes from the prefix's sums (inputs: ``batch_inputs``).
    """
    offset = prefix.length if prefix is not None else 0
    if prefix is not None and config.mode == "released":
        raise ValueError("mode 'released' reads every prompt's full hidden states: score it without a cached prefix")
    if prefix is not None and any(p.prefix_len != offset or tuple(p.ids[:offset]) != prefix.ids for p in batch):
        raise ValueError("every prompt of a batch scored with a cached prefix must start with exactly that prefix")
    inputs, pads, width = batch_inputs(model, batch, prefix, config.padding_side, pad_id)
    starts = torch.arange(len(batch)) * width + torch.tensor(pads)
    splits = starts + torch.tensor([p.prefix_len - offset for p in batch])
    ends = starts + torch.tensor([p.question_end - offset for p in batch])
    captured: dict[str, torch.Tensor] = {}

    def on_hidden(hidden: torch.Tensor) -> None:
        if config.mode == "released":
            released = [released_angle(hidden[row, pad:pad + len(p.ids)], p.prefix_len, len(p.ids) - p.question_end)
                        for row, (p, pad) in enumerate(zip(batch, pads))]
            captured["intra"], captured["inter"] = (torch.tensor(v, dtype=torch.float64) for v in zip(*released))
            return
        prefix_sums, question_sums = prefix_question_sums(hidden, starts, splits, ends, config.backend)
        if prefix is not None:
            prefix_sums = add_sums(prefix_sums, prefix.sums)
        stats = angle_stats_from_sums(prefix_sums, question_sums, exclude_diagonal=config.exclude_diagonal)
        captured["intra"], captured["inter"] = stats.intra.cpu(), stats.inter.cpu()

    with torch.inference_mode(), capture_input(module, on_hidden):
        try:
            model(**inputs)
        except StopForward:
            pass
    if "intra" not in captured:
        raise RuntimeError("the forward pass never reached the hooked module")
    rows = []
    for p, intra, inter in zip(batch, captured["intra"].tolist(), captured["inter"].tolist()):
        rows.append({"index": p.index, "intra": intra, "inter": inter,
                     "score": config.intra_weight * intra + config.inter_weight * inter,
                     "prompt_tokens": len(p.ids), "prefix_tokens": p.prefix_len,
                     "question_tokens": p.question_end - p.prefix_len, "truncated": p.truncated})
    return rows


def group_by_prefix(encoded: Sequence[EncodedPrompt]) -> dict[tuple[int, ...], list[int]]:
    """Positions of the prompts grouped by their prefix tokens (usually one group;
    a tokenizer that merges a template token with a question's first characters
    gives that prompt a shorter prefix), largest group first."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for position, p in enumerate(encoded):
        groups.setdefault(tuple(p.ids[:p.prefix_len]), []).append(position)
    return dict(sorted(groups.items(), key=lambda item: -len(item[1])))


def score_prompts(model: nn.Module, template: PromptTemplate, prompts: Sequence[str], config: ScoreConfig,
                  indices: Sequence[int] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Yield the score rows of each batch (in length order) for the given prompts.

    With ``config.prefix_cache`` (and mode "exact") the prefix of each group of
    prompts runs once (``prefix_cache.run_prefix``) and every batch runs only the
    tokens after it; otherwise every batch runs whole prompts."""
    indices = list(range(len(prompts))) if indices is None else list(indices)
    _, module = resolve_module(model, config.module)
    max_length = config.max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None)
    encoded = encode_prompts(template, prompts, indices, config, max_length)
    pad_id = template.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else (template.tokenizer.eos_token_id or 0)
    hidden_size = getattr(getattr(model, "config", None), "hidden_size", None) or 1024  # 1024: an unknown width
    batch_tokens = config.batch_tokens or default_batch_tokens(_model_device(model), hidden_size)
    cached = config.prefix_cache and config.mode == "exact"
    groups = group_by_prefix(encoded) if cached else {(): list(range(len(encoded)))}
    for prefix_ids, members in groups.items():
        with torch.inference_mode():
            prefix = run_prefix(model, module, prefix_ids, config.backend) if prefix_ids else None
        lengths = [len(encoded[i].ids) - len(prefix_ids) for i in members]
        for positions in plan_batches(lengths, batch_tokens, config.max_batch_size):
            yield score_batch(model, module, [encoded[members[i]] for i in positions], config, pad_id, prefix)


def add_ranks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows sorted by dataset index, each with its rank by score (0 = highest; NaN scores last)."""
    rows = sorted(rows, key=lambda r: r["index"])
    by_score = sorted(rows, key=lambda r: (math.isnan(r["score"]), -r["score"] if not math.isnan(r["score"]) else 0,
                                           r["index"]))
    for rank, row in enumerate(by_score):
        row["rank"] = rank
    return rows


def _fingerprint(**parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


HUB_PREFIX = "hub:"
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_model_source(model: str | Path) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether it is a local folder). A local
    folder must hold config.json, weights and a tokenizer; a Hub model is only
    used when asked for explicitly as ``hub:org/name``, so a mistyped path never
    goes to the network."""
    text = str(model)
    if text.startswith(HUB_PREFIX):
        repo = text[len(HUB_PREFIX):]
        if not repo:
            raise UserError(f"model {text!r}: expected a Hub id after {HUB_PREFIX!r}, e.g. hub:Qwen/Qwen2.5-0.5B")
        return repo, False
    path = Path(text).expanduser()
    if not path.is_dir():
        found = "no such folder" if not path.exists() else "a file, not a folder"
        raise UserError(f"model {text!r}: {found}; expected a local transformers model folder (a path that is not "
                        f"a folder is never sent to the Hugging Face Hub; ask for a Hub model explicitly: "
                        f"--model {HUB_PREFIX}org/name)")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; expected a transformers model folder (config.json, weights, "
                        "tokenizer)")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise UserError(f"{path}: holds no weights (expected model.safetensors, sharded *.safetensors or "
                        "pytorch_model*.bin)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{path}: holds no tokenizer (expected one of {', '.join(TOKENIZER_FILES)}); save it "
                        "there with tokenizer.save_pretrained")
    return str(path), True


def load_model(model: str | Path | nn.Module, tokenizer: Any = None, device: str = "auto", dtype: str = "auto"):
    """A transformers causal LM and its tokenizer, on the chosen device. A string or
    path is a local folder, or ``hub:org/name`` for a Hub model (``resolve_model_source``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    rank_device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    device = rank_device if device == "auto" else device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r}: this torch ({torch.__version__}) sees no CUDA device; use cpu")
    torch_dtype = (torch.bfloat16 if device.startswith("cuda") else torch.float32) if dtype == "auto" \
        else getattr(torch, dtype)
    if isinstance(model, (str, Path)):
        source, local = resolve_model_source(model)
        try:
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(source, local_files_only=local)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=local)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{source}: transformers cannot load it as a causal LM: {first}") from exc
    elif tokenizer is None:
        raise ValueError("pass the tokenizer together with a model object")
    return model.to(device).eval(), tokenizer


def _read_partial(partial: Path, fingerprint: str, restart: bool) -> dict[int, dict]:
    """Rows already scored by an earlier run with the same settings (index -> row).
    The partial file of a run that failed (its header records the error) is
    discarded when the settings changed; that of an interrupted run is kept and
    the rerun refused, so its results are never lost silently."""
    if restart or not partial.exists():
        return {}
    try:
        lines = iter(read_jsonl_tolerant(partial))
        header = next(lines, None)
        kept = list(lines) if isinstance(header, dict) and header.get("rlsignals_partial") == fingerprint else []
    except json.JSONDecodeError as exc:
        raise UserError(f"{partial}: a line is not valid JSON ({exc.msg}); delete it or pass restart=True "
                        "(--restart)") from None
    if not isinstance(header, dict) or "rlsignals_partial" not in header:
        raise UserError(f"{partial}: not a partial file of `rlsignals score`; move it away or pass restart=True "
                        "(--restart)")
    if header["rlsignals_partial"] == fingerprint:
        return {row["index"]: row for row in kept}
    if header.get("failed"):
        warnings.warn(f"{partial}: discarding the partial results of a failed run with other settings "
                      f"({header['failed']})", RuntimeWarning, stacklevel=3)
        return {}
    raise UserError(f"{partial} holds results of an interrupted run with other settings; rerun with those settings "
                    "to resume it, or pass restart=True (--restart) to discard them")


def _record_failure(partial: Path, fingerprint: str, exc: Exception) -> None:
    """Mark the partial file as that of a failed run (or remove it when it holds no row),
    so a rerun with corrected settings replaces it instead of refusing it."""
    try:
        rows = list(read_jsonl_tolerant(partial))[1:] if partial.exists() else []
        if not rows:
            partial.unlink(missing_ok=True)
            return
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        write_table([{"rlsignals_partial": fingerprint, "failed": reason}, *rows], partial)
    except (OSError, ValueError):  # the original error is the one to report
        pass


def score_dataset(model: str | Path | nn.Module, data: str | Path, out: str | Path, *, tokenizer: Any = None,
                  prompt_field: str = "prompt", system_prompt: str | None = None,
                  few_shot: str | Path | None = None, use_chat_template: bool = True,
                  config: ScoreConfig | None = None, ordered_data: str | Path | None = None,
                  device: str = "auto", dtype: str = "auto", restart: bool = False,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Score a dataset file and write one row per prompt (index, intra, inter,
    score, token counts, rank) to ``out`` (.jsonl/.json/.csv/.parquet).

    Resumable: rows stream to ``<out>.partial[.rankR].jsonl``; a rerun with the
    same settings skips the prompts already scored (``restart=True`` starts over).
    A run that fails records it in that file's header: a rerun with other settings
    then replaces it (an interrupted run's file is never replaced silently).
    ``ordered_data``: also write the dataset's rows sorted by rank, with the score
    columns added (for trainers that read data in file order, e.g. verl >= 0.8
    with shuffle off). Returns the rows (on every rank).
    """
    from tqdm.auto import tqdm

    config = config or ScoreConfig()
    out = check_table_path(out)
    if ordered_data is not None:
        ordered_data = check_table_path(ordered_data)
    rows = load_rows(data, prompt_field)
    rank, world = rank_and_world()
    model_id = str(model) if isinstance(model, (str, Path)) else type(model).__name__
    model, tokenizer = load_model(model, tokenizer, device, dtype)
    template = PromptTemplate(tokenizer, system_prompt, load_few_shot(few_shot) if few_shot else [], use_chat_template)
    fingerprint = _fingerprint(model=model_id, data=str(data), rows=len(rows), prompt_field=prompt_field,
                               system=system_prompt, few_shot=template.few_shot, chat=template.use_chat_template,
                               config=dataclasses.asdict(config), world=world)

    partial = out.with_name(out.name + (f".partial.rank{rank}.jsonl" if world > 1 else ".partial.jsonl"))
    done = _read_partial(partial, fingerprint, restart)
    resolve_module(model, config.module)  # a bad module fails here, before anything is written
    mine = [i for i in range(rank, len(rows), world) if i not in done]
    # (re)write the partial file whole: the header and the rows kept, without a line an interruption cut off
    write_table([{"rlsignals_partial": fingerprint}, *done.values()], partial)
    try:
        with partial.open("a") as sink, tqdm(total=len(mine), desc="scoring prompts", unit="prompt",
                                             disable=not progress or rank != 0) as bar:
            for batch_rows in score_prompts(model, template, [rows[i][prompt_field] for i in mine], config, mine):
                sink.writelines(json.dumps(row) + "\n" for row in batch_rows)
                sink.flush()
                bar.update(len(batch_rows))

        barrier(world)
        partials = [out.with_name(out.name + f".partial.rank{r}.jsonl") for r in range(world)] if world > 1 \
            else [partial]
        scored = add_ranks([row for path in partials for row in list(read_jsonl_tolerant(path))[1:]])
        if rank == 0:
            write_table(scored, out)
            if ordered_data is not None:
                extra = ("intra", "inter", "score", "rank")
                write_table([{**rows[r["index"]], **{k: r[k] for k in extra}}
                             for r in sorted(scored, key=lambda r: r["rank"])], ordered_data)
    except Exception as exc:
        _record_failure(partial, fingerprint, exc)
        raise
    barrier(world)
    if rank == 0:
        for path in partials:
            path.unlink(missing_ok=True)
    return scored
