"""Settings of prompt handling and scoring (imports nothing heavy: commands build their
flags from these fields, ``rlsignals.settings``).

``PromptOptions``: how dataset rows become prompts, shared by score, train and pilot.
``ContextOptions``: what happens to a prompt longer than the model's context (score and
train alike). ``ScoreConfig``: the options of a scoring run.
"""

from __future__ import annotations

import dataclasses

from rlsignals.ops import BACKEND_CHOICES
from rlsignals.settings import option, whole_number

SCORE_MODES = ("exact", "released")
ON_LONG = ("error", "truncate")
PADDING_SIDES = ("right", "left")


@dataclasses.dataclass
class PromptOptions:
    """How a dataset row becomes the token ids of a prompt (``signals.prompts.PromptTemplate``)."""

    prompt_field: str = option("prompt", "the dataset column holding the prompt")
    system_prompt: str | None = option(None, "system prompt of every prompt (chat template)")
    few_shot: str | None = option(None, ".json/.jsonl of few-shot turns: chat messages or question/answer pairs")
    use_chat_template: bool = option(True, "render prompts with the tokenizer's chat template (else plain text)",
                                     flag="chat_template")


@dataclasses.dataclass
class ContextOptions:
    """Prompts longer than the model's context."""

    max_length: int | None = option(None, "longest prompt in tokens (default: the model's context; for train, "
                                          "less the completion's max_new_tokens)", parse=whole_number(1))
    on_long: str = option("error", "a longer prompt: error, or truncate its question from the end",
                          choices=ON_LONG)


@dataclasses.dataclass
class ScoreConfig(ContextOptions):
    """Options of a scoring run (all have working defaults)."""

    module: str | None = option(None, "hooked module (default: the input of the last decoder layer's mlp.up_proj)")
    intra_weight: float = option(1.0, "weight of intra in the score")
    inter_weight: float = option(1.0, "weight of inter in the score (the released code used 8)")
    batch_tokens: int | None = option(None, "padded tokens per forward pass (default: 16384 on a GPU; on the CPU "
                                            "about 2M / hidden size)", parse=whole_number(1))
    max_batch_size: int = option(64, "prompts per forward pass at most", parse=whole_number(1))
    prefix_tokens: int | None = option(None, "explicit shared-prefix length in tokens (default: detected from the "
                                             "template)", parse=whole_number(0))
    suffix_tokens: int | None = option(None, "explicit trailing-template length in tokens", parse=whole_number(0))
    padding_side: str = option("right", "padding of a batch", choices=PADDING_SIDES)
    exclude_diagonal: bool = option(False, "leave the pairs i = j out of intra")
    backend: str = option("auto", "kernel backend of the angle ops", choices=BACKEND_CHOICES)
    mode: str = option("exact", "released: the released scorer's (flawed) quantities, for comparison only",
                       choices=SCORE_MODES)
    prefix_cache: bool = option(True, "run each shared prefix once, then only the questions (else every prompt "
                                      "whole; the scores agree to fp32 rounding)")

    def __post_init__(self) -> None:
        if self.mode not in SCORE_MODES:
            raise ValueError(f"mode must be one of {SCORE_MODES}, got {self.mode!r}")
        if self.on_long not in ON_LONG:
            raise ValueError(f"on_long must be 'error' or 'truncate', got {self.on_long!r}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if (self.batch_tokens is not None and self.batch_tokens < 1) or self.max_batch_size < 1:
            raise ValueError(f"batch_tokens and max_batch_size must be >= 1, got {self.batch_tokens} and "
                             f"{self.max_batch_size}")
