"""Score every prompt of a dataset with the angle signal, at prefill.

For each prompt, rendered as [prefix | question | suffix] (see prompts.py),
one forward pass of the model up to the hooked module (default: the input of
the last decoder layer's mlp.up_proj) gives hidden states h; then

    intra = mean_{i, j in question} cos(h_i, h_j)
    inter = mean_{i in question, j in prefix} cos(h_i, h_j)
    score = intra_weight * intra + inter_weight * inter

(the paper: weights 1 and 1; the released code: 1 and 8). Prompts are sorted by
length and batched under a token budget to keep padding small; the padded
batch is scored in place by ``angle_stats_spans`` (padding and suffix rows are
ignored), and the forward stops at the hook. Results stream to a partial file,
so an interrupted run resumes where it stopped. Under torchrun each rank scores
a shard and rank 0 merges.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from rlsignals.io.distributed import barrier, rank_and_world
from rlsignals.ops.angle import angle_stats_spans
from rlsignals.signals.capture import StopForward, capture_input, resolve_module
from rlsignals.signals.prompts import PromptTemplate, TemplateBounds, load_few_shot, load_rows
from rlsignals.io.tables import check_table_path, read_jsonl_tolerant, write_table


@dataclasses.dataclass
class ScoreConfig:
    """Options of a scoring run (all have working defaults)."""

    module: str | None = None          # hooked module; default: last layer's mlp.up_proj
    intra_weight: float = 1.0
    inter_weight: float = 1.0          # the released code used 8
    batch_tokens: int = 16384          # padded tokens per forward pass
    max_batch_size: int = 64
    max_length: int | None = None      # default: the model's max_position_embeddings
    on_long: str = "error"             # "error" or "truncate" (drops question tokens from the end)
    prefix_tokens: int | None = None   # explicit split; default: detected from the template
    suffix_tokens: int | None = None
    padding_side: str = "right"
    exclude_diagonal: bool = False
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.on_long not in ("error", "truncate"):
            raise ValueError(f"on_long must be 'error' or 'truncate', got {self.on_long!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.batch_tokens < 1 or self.max_batch_size < 1:
            raise ValueError("batch_tokens and max_batch_size must be >= 1")


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


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Positions grouped into batches of similar length: sorted by length, a batch
    grows while (its longest length x its size) <= batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < max_batch_size and lengths[i] * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def score_batch(model: nn.Module, module: nn.Module, batch: Sequence[EncodedPrompt], config: ScoreConfig,
                pad_id: int) -> list[dict[str, Any]]:
    """One forward pass up to ``module``; the angle signal of each prompt of the batch."""
    device = _model_device(model)
    width = max(len(p.ids) for p in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    pads = [width - len(p.ids) if config.padding_side == "left" else 0 for p in batch]
    for row, (p, pad) in enumerate(zip(batch, pads)):
        input_ids[row, pad:pad + len(p.ids)] = torch.tensor(p.ids)
        mask[row, pad:pad + len(p.ids)] = 1
    position_ids = (mask.cumsum(1) - 1).clamp_min(0)
    base = torch.arange(len(batch)) * width + torch.tensor(pads)
    starts = base
    splits = base + torch.tensor([p.prefix_len for p in batch])
    ends = base + torch.tensor([p.question_end for p in batch])
    captured: dict[str, torch.Tensor] = {}

    def on_hidden(hidden: torch.Tensor) -> None:
        stats = angle_stats_spans(hidden.reshape(-1, hidden.shape[-1]), starts, splits, ends,
                                  exclude_diagonal=config.exclude_diagonal, backend=config.backend)
        captured["intra"], captured["inter"] = stats.intra.cpu(), stats.inter.cpu()

    with torch.inference_mode(), capture_input(module, on_hidden):
        try:
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                  position_ids=position_ids.to(device), use_cache=False)
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


def score_prompts(model: nn.Module, template: PromptTemplate, prompts: Sequence[str], config: ScoreConfig,
                  indices: Sequence[int] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Yield the score rows of each batch (in length order) for the given prompts."""
    indices = list(range(len(prompts))) if indices is None else list(indices)
    _, module = resolve_module(model, config.module)
    max_length = config.max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None)
    encoded = encode_prompts(template, prompts, indices, config, max_length)
    pad_id = template.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else (template.tokenizer.eos_token_id or 0)
    for positions in plan_batches([len(p.ids) for p in encoded], config.batch_tokens, config.max_batch_size):
        yield score_batch(model, module, [encoded[i] for i in positions], config, pad_id)


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


def load_model(model: str | Path | nn.Module, tokenizer: Any = None, device: str = "auto", dtype: str = "auto"):
    """A transformers causal LM and its tokenizer, on the chosen device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rank_device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    device = rank_device if device == "auto" else device
    torch_dtype = (torch.bfloat16 if device.startswith("cuda") else torch.float32) if dtype == "auto" \
        else getattr(torch, dtype)
    if isinstance(model, (str, Path)):
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
    elif tokenizer is None:
        raise ValueError("pass the tokenizer together with a model object")
    return model.to(device).eval(), tokenizer


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
    done: dict[int, dict] = {}
    if partial.exists() and not restart:
        lines = iter(read_jsonl_tolerant(partial))
        header = next(lines, None)
        if header != {"rlsignals_partial": fingerprint}:
            raise ValueError(f"{partial} holds results of a run with other settings; delete it or pass restart=True "
                             "(--restart)")
        done = {row["index"]: row for row in lines}
    mine = [i for i in range(rank, len(rows), world) if i not in done]
    # (re)write the partial file whole: the header and the rows kept, without a line an interruption cut off
    partial.parent.mkdir(parents=True, exist_ok=True)
    write_table([{"rlsignals_partial": fingerprint}, *done.values()], partial)
    with partial.open("a") as sink, tqdm(total=len(mine), desc="scoring prompts", unit="prompt",
                                         disable=not progress or rank != 0) as bar:
        for batch_rows in score_prompts(model, template, [rows[i][prompt_field] for i in mine], config, mine):
            sink.writelines(json.dumps(row) + "\n" for row in batch_rows)
            sink.flush()
            bar.update(len(batch_rows))

    barrier(world)
    partials = [out.with_name(out.name + f".partial.rank{r}.jsonl") for r in range(world)] if world > 1 else [partial]
    scored = add_ranks([row for path in partials for row in list(read_jsonl_tolerant(path))[1:]])
    if rank == 0:
        write_table(scored, out)
        if ordered_data is not None:
            extra = ("intra", "inter", "score", "rank")
            write_table([{**rows[r["index"]], **{k: r[k] for k in extra}}
                         for r in sorted(scored, key=lambda r: r["rank"])], ordered_data)
    barrier(world)
    if rank == 0:
        for path in partials:
            path.unlink(missing_ok=True)
    return scored
