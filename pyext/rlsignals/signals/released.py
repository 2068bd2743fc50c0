"""The released GAIN-RL scorer's quantities, reproduced as it computes them (flaws included),
for comparison only (``ScoreConfig(mode="released")``, bench/score_dataset.py)."""

from __future__ import annotations

import torch


def released_angle(hidden: torch.Tensor, prefix_len: int, suffix_len: int) -> tuple[float, float]:
    """The released GAIN-RL scorer's (intra, inter) of one prompt's hidden states
    [m, d], reproduced as it computes them, flaws included (comparison only).

    It forms the m x m cosine matrix C (fp32), zeroes the entries above the first
    superdiagonal (j > i + 1: the tril mask keeps one future token), then slices
    rows twice: A = C[P:m-S] (P = prefix_len, S = suffix_len; the released code
    hard-codes P = 110, S = 6), intra = mean of A[P:len(A)-S], inter = mean of
    A[:P], each mean over ALL m columns, zeroed entries included. So "intra" is
    rows 2P .. m-2S-1 against every token and "inter" rows P .. 2P-1 against
    every token, not the question/question and question/prefix blocks; intra is
    NaN whenever the question (with the suffix) has at most P + S tokens. Its
    score is intra + 8 * inter (``inter_weight=8``)."""
    m = hidden.shape[0]
    if prefix_len < 0 or not 0 < suffix_len < m:
        raise ValueError(f"released_angle needs prefix_len >= 0 and 0 < suffix_len < m={m}, got "
                         f"{prefix_len}, {suffix_len}")
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
    cos = torch.tril(unit @ unit.T, diagonal=1)
    rows = cos[prefix_len:m - suffix_len]
    return float(rows[prefix_len:rows.shape[0] - suffix_len].mean()), float(rows[:prefix_len].mean())
