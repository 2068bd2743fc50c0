"""The ``released`` scoring mode reproduces the released GAIN-RL scorer's
quantity (double row slicing, one-future-token mask, mean over every entry),
checked on a case computed by hand and through score_prompts."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.tiny_models import CHATML, make_model, make_tokenizer

from rlsignals.lm.capture import StopForward, capture_input, resolve_module
from rlsignals.signals import PromptTemplate, ScoreConfig, score_prompts
from rlsignals.signals.released import released_angle


def test_hand_computed_case():
    # every hidden state points the same way: every cosine is 1, so the masked
    # matrix has ones where j <= i + 1. m = 8, P = 2, S = 1: A = rows 2..6;
    # intra = A[2:4] = rows 4 and 5 (6 + 7 ones of 16 entries); inter = A[:2] =
    # rows 2 and 3 (4 + 5 ones of 16). The paper's definitions would give 1 and 1.
    hidden = torch.ones(8, 3) * torch.tensor([1.0, 2.0, 3.0])
    intra, inter = released_angle(hidden, 2, 1)
    assert intra == pytest.approx(13 / 16) and inter == pytest.approx(9 / 16)


def test_short_question_gives_nan_intra():
    # m = 6, P = 2, S = 1: A has 3 rows, A[2:2] is empty (question + suffix <= P + S tokens)
    intra, inter = released_angle(torch.randn(6, 4), 2, 1)
    assert math.isnan(intra) and math.isfinite(inter)
    with pytest.raises(ValueError, match="suffix_len"):
        released_angle(torch.randn(6, 4), 2, 0)


def test_mode_is_checked():
    with pytest.raises(ValueError, match="mode must be one of"):
        ScoreConfig(mode="paper")


def test_score_prompts_in_released_mode_equals_the_formula_on_the_same_hidden_states():
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    template = PromptTemplate(tokenizer, system_prompt="you are a careful math tutor")
    prompts = ["what is two plus three plus four plus five plus six", "what is one"]
    config = ScoreConfig(mode="released", prefix_tokens=3, suffix_tokens=2, inter_weight=8.0, padding_side="left",
                         backend="torch")
    rows = {r["index"]: r for batch in score_prompts(model, template, prompts, config) for r in batch}
    _, module = resolve_module(model, None)
    for i, prompt in enumerate(prompts):
        ids = template.token_ids(prompt)
        seen: dict[str, torch.Tensor] = {}
        with torch.inference_mode(), capture_input(module, lambda h, seen=seen: seen.setdefault("h", h[0].clone())):
            try:
                model(input_ids=torch.tensor([ids]))
            except StopForward:
                pass
        intra, inter = released_angle(seen["h"], 3, 2)
        assert rows[i]["intra"] == pytest.approx(intra, abs=1e-5, nan_ok=True)
        assert rows[i]["inter"] == pytest.approx(inter, abs=1e-5)
        assert rows[i]["score"] == pytest.approx(intra + 8 * inter, abs=1e-5, nan_ok=True)
