"""The demo's testbed on a real pretrained model and real data: SmolLM2-135M-Instruct on
SVAMP's arithmetic (the bare expressions of SVAMP's word problems, "What is 290 / 2?"),
prepared once by ``rlsignals setup-real`` (``rlsignals.io.packaged``).

The task was chosen by measuring before choosing (bench/real_model.py --task-choice,
bench/results/real_model-task-choice-cpu.json): the model starts well between 0 and 1
there, while it solves almost none of the word problems. The prompt is the chat template
with two worked turns that restate the expression ("What is 3 + 5?" -> "3 + 5 = 8"); the
reward is the last integer of the reply (``trainer.rewards``); SFT trains on
"<expression> = <answer>". Training rows are the 506 problems of svamp-arith-train,
held-out rows the 256 of svamp-arith-test.
"""

from __future__ import annotations

from rlsignals.demo.testbed import Testbed
from rlsignals.io.errors import UserError
from rlsignals.io.tables import read_table

FEW_SHOT = ({"role": "user", "content": "What is 3 + 5?"}, {"role": "assistant", "content": "3 + 5 = 8"},
            {"role": "user", "content": "What is 9 - 2?"}, {"role": "assistant", "content": "9 - 2 = 7"})
MAX_NEW_TOKENS = 12


def smollm2(cache_dir: str | None = None, train_prompts: int | None = None, eval_prompts: int | None = None,
            dtype: str = "float32") -> Testbed:
    """SmolLM2-135M-Instruct on SVAMP's arithmetic (module docstring); the first ``train_prompts``
    / ``eval_prompts`` rows of each split when given (the splits are seeded at setup)."""
    from rlsignals.io.models import load_model
    from rlsignals.io.packaged import find_ready
    from rlsignals.signals.prompts import PromptTemplate
    from rlsignals.trainer.rewards import resolve_reward

    assets = find_ready(cache_dir)
    if assets is None:
        raise UserError("the real model and data are not set up here: run `rlsignals setup-real` (or make real) "
                        "first")
    model, tokenizer = load_model(assets.model, dtype=dtype, device="cpu")
    train = read_table(assets.data["svamp-arith-train"], "data")[:train_prompts]
    held_out = read_table(assets.data["svamp-arith-test"], "data")[:eval_prompts]
    return Testbed(name="smollm2-svamp-arith", model=model, tokenizer=tokenizer,
                   template=PromptTemplate(tokenizer, few_shot=list(FEW_SHOT)), train=train, held_out=held_out,
                   verify=resolve_reward("last_integer"), reply=lambda row: f"{row['expression']} = {row['answer']}",
                   max_new_tokens=MAX_NEW_TOKENS)
