"""Scoring with the shared prefix run once equals scoring whole prompts (fp32, 1e-5):
Llama and Qwen2, left and right padding, questions of different lengths in one
batch, prompts without a prefix, and prompts whose prefixes differ."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import CHATML, LLAMA3, make_model, make_tokenizer

from rlsignals.lm.capture import resolve_module
from rlsignals.signals import PromptTemplate, ScoreConfig, score_prompts
from rlsignals.signals.batching import EncodedPrompt
from rlsignals.signals.scoring import run_prefix, score_batch

PROMPTS = ["what is two plus three", "the", "compute the sum of seven and five and multiply six by three",
           "how many apples are left if tom eats four of nine", "twelve minus five equals seven", "x quantum 12345 ?!"]
FEW_SHOT = [{"role": "user", "content": "twelve minus five"}, {"role": "assistant", "content": "seven"},
            {"role": "user", "content": "multiply six by three"}, {"role": "assistant", "content": "the answer is"}]


def scores(model, template, config):
    rows = [r for batch in score_prompts(model, template, PROMPTS, config) for r in batch]
    return {r["index"]: r for r in rows}


def assert_rows_close(got, expected):
    assert sorted(got) == sorted(expected)
    for i, row in expected.items():
        for key in ("intra", "inter", "score"):
            assert got[i][key] == pytest.approx(row[key], abs=1e-5, nan_ok=True), (i, key)
        for key in ("prompt_tokens", "prefix_tokens", "question_tokens"):
            assert got[i][key] == row[key]


@pytest.mark.parametrize("arch, chat", [("llama", LLAMA3), ("qwen2", CHATML)])
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("exclude_diagonal", [False, True])
def test_cached_prefix_equals_the_full_forward(arch, chat, padding_side, exclude_diagonal):
    tokenizer = make_tokenizer("word", chat)
    model = make_model(arch, len(tokenizer))
    template = PromptTemplate(tokenizer, system_prompt="you are a careful math tutor", few_shot=FEW_SHOT)
    common = dict(batch_tokens=4096, padding_side=padding_side, exclude_diagonal=exclude_diagonal, inter_weight=8.0)
    full = scores(model, template, ScoreConfig(prefix_cache=False, **common))
    cached = scores(model, template, ScoreConfig(prefix_cache=True, **common))
    assert len({r["question_tokens"] for r in cached.values()}) > 3  # different lengths in one batch
    assert all(r["prefix_tokens"] > 20 for r in cached.values())
    assert_rows_close(cached, full)


def test_prompts_without_a_prefix_run_whole():
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    template = PromptTemplate(tokenizer, use_chat_template=False)
    config = dict(prefix_tokens=0, suffix_tokens=0, padding_side="left")
    cached = scores(model, template, ScoreConfig(**config))
    assert all(r["prefix_tokens"] == 0 and r["inter"] != r["inter"] for r in cached.values())  # inter NaN
    assert_rows_close(cached, scores(model, template, ScoreConfig(prefix_cache=False, **config)))


def test_one_batch_with_a_cached_prefix_equals_its_full_forward_and_refuses_other_prefixes():
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("qwen2", len(tokenizer))
    _, module = resolve_module(model, None)
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(8, len(tokenizer), (30,), generator=gen).tolist()
    batch = []
    for i, length in enumerate([1, 7, 19]):
        question = torch.randint(8, len(tokenizer), (length,), generator=gen).tolist()
        batch.append(EncodedPrompt(i, prefix + question + [3, 2], len(prefix), len(prefix) + length, False))
    config = ScoreConfig(padding_side="left")
    with torch.inference_mode():
        state = run_prefix(model, module, prefix)
    assert state.length == 30 and len(state.prefix.key_values) == 3  # every layer runs before the last MLP
    full = {r["index"]: r for r in score_batch(model, module, batch, config, 0)}
    cached = {r["index"]: r for r in score_batch(model, module, batch, config, 0, state)}
    assert_rows_close(cached, full)
    other = EncodedPrompt(9, [1] + prefix[1:] + [5, 6], 30, 31, False)
    with pytest.raises(ValueError, match="must start with exactly that prefix"):
        score_batch(model, module, [other], config, 0, state)


def test_an_early_hooked_module_and_prompts_with_different_prefixes():
    """A module hooked before any attention (no cache to reuse) and two prefix groups."""
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    template = PromptTemplate(tokenizer, system_prompt="answer with a number")
    common = dict(suffix_tokens=2, padding_side="right")
    for module in (None, "model.layers.0.input_layernorm"):
        full, cached = ({} for _ in range(2))
        for prefix_tokens, prompts in ((5, slice(0, 3)), (9, slice(3, None))):
            for out, flag in ((full, False), (cached, True)):
                config = ScoreConfig(module=module, prefix_tokens=prefix_tokens, prefix_cache=flag, **common)
                rows = score_prompts(model, template, PROMPTS[prompts], config)
                out.update({(prefix_tokens, r["index"]): r for batch in rows for r in batch})
        assert_rows_close(cached, full)
