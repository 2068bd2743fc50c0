"""A short supervised fine-tuning run from the same start as RL, so the demo can
compare what SFT changes in the weights with what RL changes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm


def sft(model, tokenizer, rows: Sequence[dict], render: Callable[[dict], list[int]], reply: Callable[[dict], str], *,
        steps: int, batch_size: int, lr: float, seed: int = 0, progress: bool = True) -> list[float]:
    """Cross-entropy on the reply tokens (``reply(row)`` + EOS) of ``rows``; returns the losses."""
    gen = torch.Generator().manual_seed(seed)
    pad_id = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="SFT steps", unit="step", disable=not progress):
        batch = [rows[i] for i in torch.randperm(len(rows), generator=gen)[:batch_size].tolist()]
        seqs, targets = [], []
        for row in batch:
            prompt = render(row)
            answer = tokenizer(reply(row), add_special_tokens=False)["input_ids"]
            seq = prompt + list(answer) + [tokenizer.eos_token_id]
            seqs.append(seq)
            targets.append([-100] * len(prompt) + seq[len(prompt):])
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, (s, t) in enumerate(zip(seqs, targets)):
            ids[i, :len(s)], labels[i, :len(t)], mask[i, :len(s)] = torch.tensor(s), torch.tensor(t), 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses
