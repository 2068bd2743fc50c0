"""Greedy evaluation: the share of rows whose greedy completion the verifier accepts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rlsignals.trainer.rollout import completion_mask, prompt_batch
from rlsignals.trainer.shared_prefix import prefix_cache


@torch.no_grad()
def greedy_correct(model, tokenizer, rows: Sequence[dict], render: Callable[[dict], list[int]],
                   verify: Callable[[str, dict], float], *, max_new_tokens: int, batch_size: int = 64) -> list[float]:
    """Verifier score of each row's greedy completion, in row order."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        ids, mask, prefix = prompt_batch([render(row) for row in batch], pad_id)
        cache = prefix_cache(model, prefix, len(batch)) if prefix else None
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                             eos_token_id=tokenizer.eos_token_id, past_key_values=cache)
        completions = out[:, ids.shape[1]:].cpu()
        keep = completion_mask(completions, tokenizer.eos_token_id).bool()
        texts = tokenizer.batch_decode([c[k] for c, k in zip(completions, keep)], skip_special_tokens=True)
        scores += [float(verify(text, row)) for text, row in zip(texts, batch)]
    model.train(was_training)
    return scores
