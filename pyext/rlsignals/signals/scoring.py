"""Score every prompt of a dataset with the angle signal, at prefill.

For each prompt, rendered as [prefix | question | suffix] (see prompts.py),
one forward pass of the model up to the hooked module (default: the input of
the last decoder layer's mlp.up_proj) gives hidden states h; then

    intra = mean_{i, j in question} cos(h_i, h_j)
    inter = mean_{i in question, j in prefix} cos(h_i, h_j)
    score = intra_weight * intra + inter_weight * inter

(the paper: weights 1 and 1; the released code: 1 and 8). ``mode="released"``
swaps intra/inter for the released scorer's quantities (``released.py``: flawed,
for comparison only).

Cost: every prompt shares its prefix (system prompt, few-shot turns), so by
default (``prefix_cache``) each distinct prefix runs once (``lm.prefix.SharedPrefix``
stopped at the hook, with its unit-row sum S_P) and each question runs only its own
tokens on top of that cache. Prompts are sorted by length and batched under a
token budget to keep padding small (``batching.py``); the forward stops at the hook
and the padded batch is reduced in place (``reduce.py``: padding and suffix rows are
ignored). ``score_dataset`` streams results to a partial file (``io.partial``), so an
interrupted run resumes where it stopped; under torchrun each rank scores a shard and
rank 0 merges. Every prompt is encoded and checked before the first forward, so a bad
prompt fails before any progress is shown.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlsignals.io.distributed import barrier, rank_and_world
from rlsignals.io.models import load_model
from rlsignals.io.partial import fingerprint, partial_path, read_partial, read_rows, record_failure, start_partial
from rlsignals.io.tables import check_table_path, write_table
from rlsignals.lm.capture import StopForward, capture_input, resolve_module
from rlsignals.lm.prefix import SharedPrefix
from rlsignals.signals.batching import (
    EncodedPrompt,
    batch_inputs,
    default_batch_tokens,
    encode_prompts,
    group_by_prefix,
    plan_batches,
)
from rlsignals.signals.config import ScoreConfig
from rlsignals.signals.prompts import PromptTemplate, load_few_shot, load_rows
from rlsignals.signals.reduce import SpanSums, add_sums, angle_stats_from_sums, prefix_question_sums, span_unit_sums
from rlsignals.signals.released import released_angle


@dataclasses.dataclass
class ScoredPrefix:
    """A shared prefix run once up to the hooked module: its keys/values (``prefix``) and
    the unit-row sums S_P of its hidden states there (``sums``, K = 1)."""

    prefix: SharedPrefix
    sums: SpanSums

    @property
    def length(self) -> int:
        return self.prefix.length

    @property
    def ids(self) -> tuple[int, ...]:
        return self.prefix.ids


def run_prefix(model: nn.Module, module: nn.Module, ids: Sequence[int], backend: str = "auto") -> ScoredPrefix:
    """Run ``ids`` (batch 1) up to ``module``; call under inference_mode/no_grad."""
    captured: list[SpanSums] = []
    prefix = SharedPrefix.run(model, ids, stop_at=module, on_hidden=lambda hidden: captured.append(
        span_unit_sums(hidden[0], torch.tensor([0]), torch.tensor([len(ids)]), backend)))
    return ScoredPrefix(prefix, captured[0])


def score_batch(model: nn.Module, module: nn.Module, batch: Sequence[EncodedPrompt], config: ScoreConfig,
                pad_id: int, prefix: ScoredPrefix | None = None) -> list[dict[str, Any]]:
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
    inputs, pads, width = batch_inputs(model, batch, prefix.prefix if prefix is not None else None,
                                       config.padding_side, pad_id)
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


@dataclasses.dataclass
class ScoringPlan:
    """What ``score_prompts`` will run: the encoded prompts and, per prefix group (the
    prefix ids, () when prompts run whole), its batches as positions into ``encoded``."""

    encoded: list[EncodedPrompt]
    groups: list[tuple[tuple[int, ...], list[list[int]]]]
    module: nn.Module
    pad_id: int

    def __len__(self) -> int:
        return len(self.encoded)


def plan_scoring(model: nn.Module, template: PromptTemplate, prompts: Sequence[str], config: ScoreConfig,
                 indices: Sequence[int] | None = None) -> ScoringPlan:
    """Encode and check every prompt (a bad module, split or length raises here, before any
    forward) and plan its batches."""
    indices = list(range(len(prompts))) if indices is None else list(indices)
    _, module = resolve_module(model, config.module)
    max_length = config.max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None)
    encoded = encode_prompts(template, prompts, indices, config, max_length)
    pad_id = template.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else (template.tokenizer.eos_token_id or 0)
    hidden_size = getattr(getattr(model, "config", None), "hidden_size", None) or 1024  # 1024: an unknown width
    batch_tokens = config.batch_tokens or default_batch_tokens(next(model.parameters()).device, hidden_size)
    cached = config.prefix_cache and config.mode == "exact"
    groups = group_by_prefix(encoded) if cached else {(): list(range(len(encoded)))}
    planned = []
    for prefix_ids, members in groups.items():
        lengths = [len(encoded[i].ids) - len(prefix_ids) for i in members]
        planned.append((prefix_ids, [[members[i] for i in batch]
                                     for batch in plan_batches(lengths, batch_tokens, config.max_batch_size)]))
    return ScoringPlan(encoded, planned, module, pad_id)


def run_plan(model: nn.Module, plan: ScoringPlan, config: ScoreConfig) -> Iterator[list[dict[str, Any]]]:
    """Yield the score rows of each planned batch (in length order within a prefix group)."""
    for prefix_ids, batches in plan.groups:
        with torch.inference_mode():
            prefix = run_prefix(model, plan.module, prefix_ids, config.backend) if prefix_ids else None
        for positions in batches:
            yield score_batch(model, plan.module, [plan.encoded[i] for i in positions], config, plan.pad_id, prefix)


def score_prompts(model: nn.Module, template: PromptTemplate, prompts: Sequence[str], config: ScoreConfig,
                  indices: Sequence[int] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Yield the score rows of each batch (in length order) for the given prompts.

    With ``config.prefix_cache`` (and mode "exact") the prefix of each group of
    prompts runs once (``run_prefix``) and every batch runs only the tokens after
    it; otherwise every batch runs whole prompts. Every prompt is checked first."""
    yield from run_plan(model, plan_scoring(model, template, prompts, config, indices), config)


def add_ranks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows sorted by dataset index, each with its rank by score (0 = highest; NaN scores last)."""
    rows = sorted(rows, key=lambda r: r["index"])
    by_score = sorted(rows, key=lambda r: (math.isnan(r["score"]), -r["score"] if not math.isnan(r["score"]) else 0,
                                           r["index"]))
    for rank, row in enumerate(by_score):
        row["rank"] = rank
    return rows


def score_dataset(model: str | Path | nn.Module, data: str | Path, out: str | Path, *, tokenizer: Any = None,
                  prompt_field: str = "prompt", system_prompt: str | None = None,
                  few_shot: str | Path | None = None, use_chat_template: bool = True,
                  config: ScoreConfig | None = None, ordered_data: str | Path | None = None,
                  device: str = "auto", dtype: str = "auto", restart: bool = False,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Score a dataset file and write one row per prompt (index, intra, inter,
    score, token counts, rank) to ``out`` (.jsonl/.json/.csv/.parquet).

    Resumable: rows stream to ``<out>.partial[.rankR].jsonl`` (``io.partial``); a rerun
    with the same settings skips the prompts already scored (``restart=True`` starts
    over). ``ordered_data``: also write the dataset's rows sorted by rank, with the score
    columns added (for trainers that read data in file order, e.g. verl >= 0.8 with
    shuffle off). Returns the rows (on every rank).
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
    key = fingerprint(model=model_id, data=str(data), rows=len(rows), prompt_field=prompt_field,
                      system=system_prompt, few_shot=template.few_shot, chat=template.use_chat_template,
                      config=dataclasses.asdict(config), world=world)
    partial = partial_path(out, rank, world)
    done = read_partial(partial, key, restart)
    mine = [i for i in range(rank, len(rows), world) if i not in done]
    plan = plan_scoring(model, template, [rows[i][prompt_field] for i in mine], config, mine)  # checks every prompt
    start_partial(partial, key, list(done.values()))
    try:
        with partial.open("a") as sink, tqdm(total=len(mine), desc="scoring prompts", unit="prompt",
                                             disable=not progress or rank != 0) as bar:
            for batch_rows in run_plan(model, plan, config):
                sink.writelines(json.dumps(row) + "\n" for row in batch_rows)
                sink.flush()
                bar.update(len(batch_rows))

        barrier(world)
        partials = [partial_path(out, r, world) for r in range(world)]
        scored = add_ranks([row for path in partials for row in read_rows(path)])
        if rank == 0:
            write_table(scored, out)
            if ordered_data is not None:
                extra = ("intra", "inter", "score", "rank")
                write_table([{**rows[r["index"]], **{k: r[k] for k in extra}}
                             for r in sorted(scored, key=lambda r: r["rank"])], ordered_data)
    except Exception as exc:
        record_failure(partial, key, exc)
        raise
    barrier(world)
    if rank == 0:
        for path in partials:
            path.unlink(missing_ok=True)
    return scored
