"""Greedy evaluation: the share of rows whose greedy completion the verifier accepts."""

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
