"""The GAIN-RL pilot (trainer/pilot.py) on tiny models: per-layer gradient norms against a
plain backward, keyed pass counts, the verdict rule and its advice, and the command end
to end (figures consistent with the per-prompt values it reports)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_models import CHATML, make_model, make_tokenizer

from rlsignals.io.errors import UserError
from rlsignals.settings import ConfigError
from rlsignals.signals.prompts import PromptTemplate
from rlsignals.stats import Estimate, spearman
from rlsignals.trainer import pilot

ROWS = [("what is two plus three", "five"), ("compute the sum of seven and five", "twelve"),
        ("multiply six by three", "eight"), ("twelve minus five equals seven", "seven"),
        ("how many apples are left if tom eats four of nine", "five"), ("the result of ten divided by two", "five"),
        ("what is the answer", "eight"), ("solve the following problem step by step", "three"),
        ("what is seven plus five", "twelve"), ("how many apples", "nine")]
FEW_SHOT = [{"role": "user", "content": "what is two plus three"}, {"role": "assistant", "content": "five"}]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gradient_norms_equal_a_plain_backward(arch):
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model(arch, len(tokenizer))
    model.model.embed_tokens.weight.requires_grad_(False)  # flags the function must leave as they were
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "what is two plus three"}],
                                           add_generation_prompt=True)["input_ids"]
    completion = pilot.reference_ids(tokenizer, "the answer is five")
    assert completion[-1] == tokenizer.eos_token_id

    norms = pilot.gradient_norms(model, prompt, completion)
    assert all(p.grad is None for p in model.parameters())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags

    for p in model.parameters():
        p.requires_grad_(True)
    logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].double()
    loss = F.cross_entropy(logits[len(prompt) - 1:-1], torch.tensor(completion))
    loss.backward()
    expected = [math.sqrt(sum(float(p.grad.double().square().sum()) for p in layer.parameters()))
                for layer in model.model.layers]
    assert norms.shape == (len(model.model.layers),)
    np.testing.assert_allclose(norms, expected, rtol=1e-4)


def test_gradient_norms_need_a_completion():
    tokenizer = make_tokenizer("word", CHATML)
    with pytest.raises(ValueError, match="completion_ids"):
        pilot.gradient_norms(make_model("llama", len(tokenizer)), [2, 3], [])


def _prompts(tokenizer):
    template = PromptTemplate(tokenizer, "answer with a number", FEW_SHOT)
    rows = [{"prompt": q, "answer": a} for q, a in ROWS]
    return template, rows, [template.token_ids(r["prompt"]) for r in rows]


def test_pass_counts_are_keyed_and_do_not_depend_on_the_batching(monkeypatch):
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    _, rows, ids = _prompts(tokenizer)

    def reward(text: str, row: dict) -> float:  # accepts completions of an even number of characters
        return float(len(text) % 2 == 0)

    kwargs = dict(samples=4, temperature=1.0, max_new_tokens=5, seed=3)
    counts = pilot.pass_counts(model, tokenizer, ids, rows, reward, **kwargs)
    monkeypatch.setattr(pilot, "ROWS_PER_CALL", 8)  # 2 prompts per generate call instead of all
    assert counts.tolist() == pilot.pass_counts(model, tokenizer, ids, rows, reward, **kwargs).tolist()
    assert 0 < counts.sum() < 4 * len(rows)  # the reward is neither always nor never met
    assert pilot.pass_counts(model, tokenizer, ids, rows, lambda t, r: 1.0, **kwargs).tolist() == [4] * len(rows)
    other_seed = pilot.pass_counts(model, tokenizer, ids, rows, reward, **{**kwargs, "seed": 4})
    assert other_seed.tolist() != counts.tolist()


def test_a_reward_that_raises_counts_as_a_miss():
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    _, rows, ids = _prompts(tokenizer)

    def broken(text: str, row: dict) -> float:
        raise KeyError("no such column")

    with pytest.warns(RuntimeWarning, match="raised on 6 completion"):
        counts = pilot.pass_counts(model, tokenizer, ids[:3], rows[:3], broken, samples=2, temperature=1.0,
                                   max_new_tokens=3, seed=0)
    assert counts.tolist() == [0, 0, 0]


def E(value, low, high):
    return Estimate(value, low, high)


POS, NEG, ZERO, UNDEFINED = E(0.3, 0.1, 0.5), E(-0.3, -0.5, -0.1), E(0.05, -0.2, 0.3), E(math.nan, math.nan,
                                                                                           math.nan)


@pytest.mark.parametrize("mechanism, learnability, expected", [
    (POS, ZERO, pilot.RELEASED), (ZERO, POS, pilot.RELEASED), (POS, POS, pilot.RELEASED),
    (POS, UNDEFINED, pilot.RELEASED),
    (NEG, ZERO, pilot.REVERSED), (NEG, NEG, pilot.REVERSED), (UNDEFINED, NEG, pilot.REVERSED),
    (ZERO, ZERO, pilot.NO_ORDER), (UNDEFINED, UNDEFINED, pilot.NO_ORDER), (POS, NEG, pilot.NO_ORDER),
    (E(0.2, 0.0, 0.4), ZERO, pilot.NO_ORDER),  # an interval touching 0 does not resolve
])
def test_verdict(mechanism, learnability, expected):
    assert pilot.verdict(mechanism, learnability) == expected


def test_advice_says_what_to_set():
    reversed_text = pilot.advice(pilot.REVERSED, NEG, ZERO, [0.5, 0.25], (1.0, 8.0))
    assert "intra_weight=-1" in reversed_text and "inter_weight=-8" in reversed_text
    assert "-0.30 [-0.50, -0.10]" in reversed_text
    conflict = pilot.advice(pilot.NO_ORDER, POS, NEG, [0.5, 0.25], (1.0, 1.0))
    assert "opposite" in conflict and "uniform" in conflict
    assert "keep" in pilot.advice(pilot.RELEASED, POS, ZERO, [0.5], (1.0, 1.0))
    assert "solved none" in pilot.advice(pilot.NO_ORDER, ZERO, UNDEFINED, [0.0, 0.0], (1.0, 1.0))
    assert "model solved" not in pilot.advice(pilot.NO_ORDER, ZERO, ZERO, [0.0, 0.5], (1.0, 1.0))


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="at least 3"):
        pilot.PilotConfig(model="m", data="d", sample=2)
    with pytest.raises(ConfigError, match="temperature"):
        pilot.PilotConfig(model="m", data="d", temperature=0.0)


def test_sample_rows():
    assert pilot.sample_rows(5, 3, seed=0) == [0, 1, 2]
    picked = pilot.sample_rows(4, 100, seed=7)
    assert picked == sorted(set(picked)) and len(picked) == 4 and picked == pilot.sample_rows(4, 100, seed=7)
    assert picked != pilot.sample_rows(4, 100, seed=8)


REWARD = """def even(completion, row):
    return float(len(completion) % 2 == 0)
"""


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch):
    tokenizer = make_tokenizer("word", CHATML)
    make_model("llama", len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in ROWS))
    shots = tmp_path / "shots.json"
    shots.write_text(json.dumps(FEW_SHOT))
    (tmp_path / "pilot_reward.py").write_text(REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_run_end_to_end(tiny_folder, capsys):
    out = tiny_folder / "pilot.json"
    config = pilot.PilotConfig(model=str(tiny_folder / "model"), data=str(tiny_folder / "data.jsonl"),
                               prompt_field="question", few_shot=str(tiny_folder / "shots.json"),
                               system_prompt="answer with a number", reward="pilot_reward:even",
                               reference_format="the answer is {answer}", sample=8, samples=3, max_new_tokens=4,
                               out=str(out), progress=False)
    assert pilot.run(config) == 0
    printed = capsys.readouterr().out
    assert "score vs gradient norm at the start" in printed and "verdict: " in printed
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 8 and result["rows"] == sorted(result["rows"])
    values = result["per_prompt"]
    assert all(len(v) == 8 for v in values.values())
    assert all(g > 0 and math.isfinite(g) for g in values["gradient_norm"])
    assert all(r * 3 == round(r * 3) for r in values["pass_rate"])
    score = np.asarray(values["score"])
    np.testing.assert_allclose(score, np.asarray(values["intra"]) + np.asarray(values["inter"]), atol=1e-6)
    assert result["mechanism"]["value"] == pytest.approx(spearman(score, values["gradient_norm"]))
    if np.ptp(values["pass_rate"]) > 0:
        assert result["learnability"]["value"] == pytest.approx(spearman(score, values["pass_rate"]))
    assert result["verdict"] == pilot.verdict(Estimate(**result["mechanism"]), Estimate(**result["learnability"]))
    assert result["verdict"] in printed


def test_a_bad_reference_format_fails_before_the_model_loads(tiny_folder):
    config = pilot.PilotConfig(model=str(tiny_folder / "no-such-model"), data=str(tiny_folder / "data.jsonl"),
                               prompt_field="question", reference_format="{solution}", progress=False)
    with pytest.raises(UserError, match=r"reference_format '\{solution\}' does not fit .*answer, question"):
        pilot.run_pilot(config)


def test_a_missing_answer_column_is_named(tiny_folder):
    config = pilot.PilotConfig(model=str(tiny_folder / "model"), data=str(tiny_folder / "data.jsonl"),
                               prompt_field="question", answer_field="target", progress=False)
    with pytest.raises(UserError, match="no 'target' column"):
        pilot.run_pilot(config)
