"""What the demo runs on: a ``Testbed`` is a model with its tokenizer, how a row becomes a
prompt, the training and held-out rows, a verifier, the reply length, and the reply an SFT
run trains on. ``embedded`` is the shipped ~1.1M-parameter model on the synthetic
arithmetic task (task.py); a real pretrained model and data set plug in the same way
(``rlsignals.demo.real``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlsignals.demo import task
from rlsignals.demo.assets import load_default_model
from rlsignals.signals.prompts import PromptTemplate


@dataclasses.dataclass
class Testbed:
    """rows are dicts (train, held_out); ``verify(completion, row)`` is 1 for a right reply;
    ``reply(row)`` the text an SFT run trains the model to answer."""

    name: str
    model: Any
    tokenizer: Any
    template: PromptTemplate
    train: list[dict]
    held_out: list[dict]
    verify: Callable[[str, dict], float]
    reply: Callable[[dict], str]
    max_new_tokens: int
    _cache: dict[int, list[int]] = dataclasses.field(default_factory=dict, repr=False)

    def render(self, row: dict) -> list[int]:
        """The prompt token ids of a row (kept: rows are rendered once)."""
        key = id(row)
        if key not in self._cache:
            self._cache[key] = self.template.token_ids(row["prompt"])
        return self._cache[key]

    def load(self, folder: str | Path):
        """A checkpoint folder (an extrapolated or rank-1 model) as a model like the testbed's."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder, dtype=self.model.dtype).eval()


def embedded(train_prompts: int, eval_prompts: int, levels: tuple[int, ...], seed: int) -> Testbed:
    """The shipped model on the arithmetic task: ``train_prompts`` and ``eval_prompts`` problems of
    the given levels, seeded (the same seed gives the same problems)."""
    model, tokenizer = load_default_model()
    return Testbed(
        name="embedded", model=model, tokenizer=tokenizer,
        template=PromptTemplate(tokenizer, system_prompt=task.SYSTEM_PROMPT, few_shot=task.FEW_SHOT),
        train=task.generate_dataset(train_prompts, seed=1000 * seed + 1, difficulties=tuple(levels)),
        held_out=task.generate_dataset(eval_prompts, seed=1000 * seed + 2, difficulties=tuple(levels)),
        verify=lambda text, row: task.verify(text, row["answer"]), reply=lambda row: task.format_answer(row["answer"]),
        max_new_tokens=task.MAX_NEW_TOKENS)
