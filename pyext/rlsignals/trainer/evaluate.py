"""Greedy evaluation: the share of held-out rows whose greedy completion the verifier accepts.

``greedy_correct`` scores rows once; ``Evaluation`` is an ``RLTrainer`` hook that does it
every ``every`` steps (and on request), keeping each evaluation's per-row results (for
intervals that resample the rows) and logging ``eval_accuracy`` in the step's record.
Under data parallelism every rank evaluates its share of the rows on the whole-weight
policy and the results are gathered, so every rank sees the same figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rlsignals.lm.generate import generate


def greedy_correct(model, tokenizer, rows: Sequence[dict], render: Callable[[dict], list[int]],
                   verify: Callable[[str, dict], float], *, max_new_tokens: int, batch_size: int = 64) -> list[float]:
    """Verifier score of each row's greedy completion, in row order."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        out = generate(model, [render(row) for row in batch], pad_id=pad_id, eos_id=tokenizer.eos_token_id,
                       max_new_tokens=max_new_tokens)
        texts = tokenizer.batch_decode([c[k.bool()] for c, k in zip(out.completion_ids, out.completion_mask)],
                                       skip_special_tokens=True)
        scores += [float(verify(text, row)) for text, row in zip(texts, batch)]
    return scores


class Evaluation:
    """An RLTrainer hook: greedy accuracy on ``rows`` every ``every`` steps (0: only when
    ``evaluate`` is called), as ``record[key]``. ``curve`` holds (step, accuracy) and
    ``correct`` the per-row results of each evaluation, in order."""

    def __init__(self, tokenizer, rows: Sequence[dict], render: Callable[[dict], list[int]],
                 verify: Callable[[str, dict], float], *, every: int, max_new_tokens: int, key: str = "eval_accuracy"):
        self.tokenizer, self.rows, self.render, self.verify = tokenizer, list(rows), render, verify
        self.every, self.max_new_tokens, self.key = every, max_new_tokens, key
        self.curve: list[tuple[int, float]] = []
        self.correct: list[list[float]] = []

    def evaluate(self, trainer, step: int) -> float:
        """Evaluate the trainer's current policy (collective: every rank calls it at the same point)."""
        par = trainer.parallel
        policy = par.full_model()
        mine = self.rows[par.rank::par.world]
        results = greedy_correct(policy, self.tokenizer, mine, self.render, self.verify,
                                 max_new_tokens=self.max_new_tokens)
        shares = par.all_gather(results)
        correct = [shares[i % par.world][i // par.world] for i in range(len(self.rows))]
        accuracy = sum(correct) / len(correct)
        self.curve.append((step, accuracy))
        self.correct.append(correct)
        return accuracy

    def __call__(self, trainer, record: dict) -> None:
        if self.every and trainer.step % self.every == 0:
            record[self.key] = self.evaluate(trainer, trainer.step)
