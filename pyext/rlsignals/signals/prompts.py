"""Dataset rows, prompt rendering, and the exact shared-prefix / trailing-template split.

A prompt renders to token ids  [ prefix | question | suffix ]:
  prefix   = system prompt, few-shot turns and the template tokens before the
             question: identical for every prompt (the paper's P);
  question = the tokens of the prompt itself (the paper's Q);
  suffix   = the template tokens after it (e.g. "<|im_end|>\\n<|im_start|>assistant\\n").

The split is found from token ids, for any tokenizer: the template is rendered
with two probe questions that share no first or last character, and the
longest common prefix / suffix of the two renderings are the template's prefix
and suffix ids. Each real prompt's prefix length is then its common prefix with
those ids (shorter when the tokenizer merges a template token with the
question's first characters), and likewise for the suffix. Unlike the longest
common prefix of the dataset itself, this never swallows question words that
happen to open every prompt. Both lengths can also be given explicitly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rlsignals.io.errors import UserError
from rlsignals.io.tables import read_table

PROBES = ("x", "Quantum 12345 ?!")


def load_rows(path: str | Path, prompt_field: str = "prompt") -> list[dict[str, Any]]:
    """Rows of a .jsonl/.json/.csv/.parquet file: at least one, each with a non-empty string prompt."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such data file (expected .jsonl/.json/.csv/.parquet with one prompt per row)")
    rows = read_table(path, "data")
    if not rows:
        raise UserError(f"{path}: holds no rows; expected one prompt per row in field {prompt_field!r}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or prompt_field not in row:
            raise ValueError(f"{path}: row {i} has no {prompt_field!r} field "
                             f"(fields: {sorted(row) if isinstance(row, dict) else type(row).__name__}); "
                             "choose the field with --prompt-field")
        if not isinstance(row[prompt_field], str) or not row[prompt_field].strip():
            raise ValueError(f"{path}: row {i} has an empty or non-string {prompt_field!r}")
    return rows


def load_few_shot(path: str | Path) -> list[dict[str, str]]:
    """Few-shot turns from .json/.jsonl: chat messages ({"role", "content"}) or
    question/answer pairs ({"prompt"|"question", "answer"|"response"|"completion"})."""
    path = Path(path)
    items = read_table(path, "few-shot")
    messages: list[dict[str, str]] = []
    for i, item in enumerate(items):
        if "role" in item and "content" in item:
            messages.append({"role": item["role"], "content": item["content"]})
            continue
        question = item.get("prompt", item.get("question"))
        answer = item.get("answer", item.get("response", item.get("completion")))
        if question is None or answer is None:
            raise ValueError(f"{path}: few-shot item {i} is neither a chat message nor a question/answer pair")
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


@dataclasses.dataclass
class PromptTemplate:
    """How a prompt becomes token ids: the tokenizer's chat template (system
    prompt, few-shot turns, the question as the last user turn, generation
    prompt), or plain text when ``use_chat_template`` is False or the
    tokenizer has none."""

    tokenizer: Any
    system_prompt: str | None = None
    few_shot: list[dict[str, str]] = dataclasses.field(default_factory=list)
    use_chat_template: bool = True

    def __post_init__(self) -> None:
        if self.use_chat_template and not getattr(self.tokenizer, "chat_template", None):
            self.use_chat_template = False

    def token_ids(self, prompt: str) -> list[int]:
        if self.use_chat_template:
            messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
            messages += self.few_shot + [{"role": "user", "content": prompt}]
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        parts = [self.system_prompt] if self.system_prompt else []
        parts += [f"{m['role']}: {m['content']}" for m in self.few_shot]
        return list(self.tokenizer("\n\n".join(parts + [prompt]))["input_ids"])


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclasses.dataclass(frozen=True)
class TemplateBounds:
    """Token ids of the shared prefix and of the trailing template tokens."""

    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]

    @classmethod
    def detect(cls, template: PromptTemplate) -> TemplateBounds:
        a, b = (template.token_ids(p) for p in PROBES)
        prefix = _common_prefix_len(a, b)
        suffix = _common_prefix_len(a[::-1], b[::-1])
        suffix = min(suffix, min(len(a), len(b)) - prefix)
        return cls(tuple(a[:prefix]), tuple(a[len(a) - suffix:]))

    def split(self, ids: list[int]) -> tuple[int, int]:
        """(prefix length, question end) of one rendered prompt."""
        prefix = _common_prefix_len(ids, list(self.prefix_ids))
        suffix = min(_common_prefix_len(ids[::-1], list(self.suffix_ids[::-1])), len(ids) - prefix)
        return prefix, len(ids) - suffix


def fit_context(ids: list[int], prefix_len: int, question_end: int, max_length: int | None, on_long: str,
                index: int, limit: str | None = None) -> tuple[list[int], int, bool]:
    """(ids, question_end, truncated) of prompt ``index`` (prefix ids[:prefix_len], question up
    to question_end) fitted to ``max_length`` tokens: unchanged when it fits; with on_long
    "truncate" the question loses tokens from its end; UserError (one line) with "error",
    or when the prefix and the trailing template alone do not fit. ``limit`` says what the
    limit is in that line (default: "the model's context of <max_length>")."""
    excess = len(ids) - max_length if max_length else 0
    if excess <= 0:
        return ids, question_end, False
    limit = limit or f"the model's context of {max_length}"
    if on_long == "error":
        raise UserError(f"prompt {index} has {len(ids)} tokens, more than {limit}; pass on_long='truncate' "
                        "(--on-long truncate) to cut its question")
    if excess > question_end - prefix_len:
        raise UserError(f"prompt {index}: the prefix and suffix alone ({len(ids) - question_end + prefix_len} "
                        f"tokens) exceed {limit}")
    return ids[:question_end - excess] + ids[question_end:], question_end - excess, True
