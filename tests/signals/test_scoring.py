"""Prefill scoring: exact against a brute force on the same module, any template,
any batch size and padding side; prefix detection; resume; bad input."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_models import CHATML, LLAMA3, make_model, make_tokenizer

from rlsignals.lm.capture import capture_input, default_module_name, resolve_module
from rlsignals.signals import PromptTemplate, ScoreConfig, TemplateBounds, score_dataset, score_prompts
from rlsignals.signals.batching import plan_batches

PROMPTS = ["what is two plus three", "compute the sum of seven and five", "multiply six by three",
           "how many apples are left if tom eats four of nine", "the", "twelve minus five equals seven",
           "what is the result of ten divided by two answer with a number"]
FEW_SHOT = [{"role": "user", "content": "what is two plus three"}, {"role": "assistant", "content": "five"}]


def brute_force(model, template, prompt):
    """fp64 full cosine matrix of the hooked module's input, one unpadded prompt,
    with the question located by a marker word rendered in its place."""
    ids = template.token_ids(prompt)
    marker_ids = template.token_ids("QMARK")
    marker = template.tokenizer.convert_tokens_to_ids("QMARK")
    prefix_len = marker_ids.index(marker)
    suffix_len = len(marker_ids) - prefix_len - 1
    _, module = resolve_module(model, None)
    captured = []
    with torch.inference_mode(), capture_input(module, lambda h: captured.append(h[0].double())):
        try:
            model(input_ids=torch.tensor([ids]))
        except Exception:  # the StopForward raised by the hook
            pass
    u = F.normalize(captured[0], dim=1)
    cos = u @ u.T
    q = slice(prefix_len, len(ids) - suffix_len)
    return cos[q, q].mean().item(), cos[q, :prefix_len].mean().item(), prefix_len, len(ids) - suffix_len


@pytest.mark.parametrize("arch, kind, chat", [("llama", "word", LLAMA3), ("qwen2", "word", CHATML),
                                              ("qwen2", "bpe", CHATML), ("llama", "bpe", LLAMA3)])
@pytest.mark.parametrize("batch_tokens, padding_side", [(1, "right"), (4096, "right"), (4096, "left")])
def test_scores_equal_brute_force(arch, kind, chat, batch_tokens, padding_side):
    tokenizer = make_tokenizer(kind, chat)
    model = make_model(arch, len(tokenizer))
    template = PromptTemplate(tokenizer, system_prompt="you are a careful math tutor", few_shot=FEW_SHOT)
    config = ScoreConfig(batch_tokens=batch_tokens, padding_side=padding_side, inter_weight=8.0)
    rows = {r["index"]: r for batch in score_prompts(model, template, PROMPTS, config) for r in batch}
    if batch_tokens > 1:
        assert len(rows) == len(PROMPTS)  # several prompts per forward pass, padded
    for i, prompt in enumerate(PROMPTS):
        intra, inter, prefix_len, question_end = brute_force(model, template, prompt)
        row = rows[i]
        assert row["prefix_tokens"] == prefix_len
        assert row["prefix_tokens"] + row["question_tokens"] == question_end
        assert row["intra"] == pytest.approx(intra, abs=1e-4)
        assert row["inter"] == pytest.approx(inter, abs=1e-4)
        assert row["score"] == pytest.approx(row["intra"] + 8 * row["inter"], abs=1e-6)


def test_prefix_detection_ignores_a_common_opening_word():
    """Every prompt opens with "what": the dataset's longest common prefix would
    eat it; the template probes do not."""
    tokenizer = make_tokenizer("word", CHATML)
    template = PromptTemplate(tokenizer, system_prompt="answer with a number")
    bounds = TemplateBounds.detect(template)
    for prompt in ("what is two plus three", "what is the answer"):
        ids = template.token_ids(prompt)
        prefix, end = bounds.split(ids)
        assert tokenizer.decode(ids[prefix:end]) == prompt


def test_explicit_split_and_raw_template():
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    template = PromptTemplate(tokenizer, system_prompt="answer with a number", use_chat_template=False)
    config = ScoreConfig(prefix_tokens=3, suffix_tokens=0)
    rows = [r for batch in score_prompts(model, template, PROMPTS[:2], config) for r in batch]
    assert [r["prefix_tokens"] for r in rows] == [3, 3]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def saved_model(tmp_path):
    # llama: transformers 5 maps a qwen2 config to its own Qwen2Tokenizer, which
    # cannot load this word-level test tokenizer
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_score_dataset_end_to_end_and_resume(tmp_path, saved_model):
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"prompt": p, "id": f"q{i}"} for i, p in enumerate(PROMPTS)])
    out = tmp_path / "scores.csv"
    full = score_dataset(saved_model, data, out, ordered_data=tmp_path / "ordered.jsonl", progress=False,
                         config=ScoreConfig(batch_tokens=64))
    assert [r["index"] for r in full] == list(range(len(PROMPTS)))
    assert sorted(r["rank"] for r in full) == list(range(len(PROMPTS)))
    ordered = [json.loads(line) for line in (tmp_path / "ordered.jsonl").read_text().splitlines()]
    assert [o["score"] for o in ordered] == sorted((r["score"] for r in full), reverse=True)
    top = next(r for r in full if r["rank"] == 0)
    assert ordered[0]["id"] == f"q{top['index']}" and ordered[0]["prompt"] == PROMPTS[top["index"]]
    assert not out.with_name("scores.csv.partial.jsonl").exists()

    # an interrupted run: the partial file holds a header, two rows and a cut-off line
    partial_path = out.with_name("scores2.csv.partial.jsonl")
    config = ScoreConfig(batch_tokens=24)  # a prompt or two per batch: several batches
    import rlsignals.signals.scoring as score_module

    calls = {"n": 0}
    real = score_module.score_batch

    def failing_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    score_module.score_batch = failing_batch
    try:
        with pytest.raises(KeyboardInterrupt):
            score_dataset(saved_model, data, tmp_path / "scores2.csv", progress=False, config=config)
    finally:
        score_module.score_batch = real
    lines = partial_path.read_text().splitlines()
    header = json.loads(lines[0])
    assert "rlsignals_partial" in header and len(lines) > 1
    with partial_path.open("a") as f:
        f.write('{"index": 99, "intra"')  # a line cut off mid-write
    scored_before = {json.loads(x)["index"] for x in lines[1:]}
    calls["n"] = 0
    seen = []

    def counting_batch(model, module, batch, *args, **kwargs):
        seen.extend(p.index for p in batch)
        return real(model, module, batch, *args, **kwargs)

    score_module.score_batch = counting_batch
    try:
        resumed = score_dataset(saved_model, data, tmp_path / "scores2.csv", progress=False, config=config)
    finally:
        score_module.score_batch = real
    assert not set(seen) & scored_before and set(seen) | scored_before == set(range(len(PROMPTS)))
    for a, b in zip(resumed, full):
        assert a["index"] == b["index"] and a["score"] == pytest.approx(b["score"], abs=1e-6)

    # a partial file from other settings is refused
    partial_path.write_text(json.dumps({"rlsignals_partial": "other"}) + "\n")
    with pytest.raises(ValueError, match="other settings"):
        score_dataset(saved_model, data, tmp_path / "scores2.csv", progress=False, config=config)


def test_bad_rows_and_long_prompts(tmp_path, saved_model):
    data = tmp_path / "bad.jsonl"
    write_jsonl(data, [{"prompt": "what is two plus three"}, {"question": "no prompt field"}])
    with pytest.raises(ValueError, match="row 1 has no 'prompt' field"):
        score_dataset(saved_model, data, tmp_path / "o.jsonl", progress=False)
    write_jsonl(data, [{"prompt": "   "}])
    with pytest.raises(ValueError, match="row 0 has an empty or non-string 'prompt'"):
        score_dataset(saved_model, data, tmp_path / "o.jsonl", progress=False)
    long_prompt = " ".join(["seven"] * 300)
    write_jsonl(data, [{"prompt": long_prompt}, {"prompt": "what is two plus three"}])
    with pytest.raises(ValueError, match="more than the model's context of 256"):
        score_dataset(saved_model, data, tmp_path / "o.jsonl", progress=False)
    with pytest.warns(RuntimeWarning, match="1 prompt"):
        rows = score_dataset(saved_model, data, tmp_path / "o.jsonl", progress=False,
                             config=ScoreConfig(on_long="truncate"), restart=True)
    assert rows[0]["truncated"] and rows[0]["prompt_tokens"] == 256 and not rows[1]["truncated"]
    assert math.isfinite(rows[0]["score"])


def test_missing_module_lists_candidates():
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    assert default_module_name(model) == "model.layers.2.mlp.up_proj"
    with pytest.raises(ValueError, match=r"no module 'model.layers.2.mlp.c_fc'.*model.layers.2.mlp.up_proj.*"
                                         r"model.layers.2.post_attention_layernorm"):
        resolve_module(model, "model.layers.2.mlp.c_fc")


@pytest.mark.slow
def test_cli_under_torchrun_with_two_gloo_ranks_matches_one_process(tmp_path, saved_model):
    import os
    import subprocess
    import sys

    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"prompt": p} for p in PROMPTS])
    args = ["-m", "rlsignals", "score", "--model", str(saved_model), "--data", str(data),
            "--system-prompt", "answer with a number", "--inter-weight", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one.jsonl")], capture_output=True,
                         text=True, env=env, timeout=300, check=False)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                          *args, "--out", str(tmp_path / "two.jsonl")], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert two.returncode == 0, two.stderr
    rows_one = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
    rows_two = [json.loads(x) for x in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows_two] == list(range(len(PROMPTS)))
    for a, b in zip(rows_one, rows_two):
        assert a["rank"] == b["rank"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert not list(tmp_path.glob("*.partial*"))


def test_a_failed_run_marks_its_partial_and_a_changed_rerun_replaces_it(tmp_path, saved_model, monkeypatch):
    import rlsignals.signals.scoring as score_module

    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"prompt": p} for p in PROMPTS])
    out, partial = tmp_path / "s.jsonl", tmp_path / "s.jsonl.partial.jsonl"
    real, calls = score_module.score_batch, {"n": 0}

    def failing_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise ValueError("the model rejected the batch")
        return real(*args, **kwargs)

    monkeypatch.setattr(score_module, "score_batch", failing_batch)
    small = ScoreConfig(max_batch_size=2, backend="torch")
    with pytest.raises(ValueError, match="rejected"):
        score_dataset(saved_model, data, out, progress=False, config=small)
    header, *rows = [json.loads(line) for line in partial.read_text().splitlines()]
    assert header["failed"] == "ValueError: the model rejected the batch" and len(rows) == 2
    monkeypatch.setattr(score_module, "score_batch", real)
    with pytest.warns(RuntimeWarning, match="discarding the partial results of a failed run"):
        done = score_dataset(saved_model, data, out, progress=False, config=ScoreConfig(backend="torch"))
    assert len(done) == len(PROMPTS) and not partial.exists()

    # a failure before the first row leaves no partial file at all
    with pytest.raises(ValueError, match="has no module"):
        score_dataset(saved_model, data, tmp_path / "t.jsonl", progress=False, config=ScoreConfig(module="nope"))
    assert not list(tmp_path.glob("t.jsonl*"))


def test_model_sources_never_go_to_the_hub_unless_asked(tmp_path, saved_model):
    from rlsignals.io.models import resolve_model_source

    assert resolve_model_source(saved_model) == (str(saved_model), True)
    assert resolve_model_source("hub:org/name") == ("org/name", False)
    with pytest.raises(ValueError, match="never sent to the Hugging Face Hub.*--model hub:org/name"):
        resolve_model_source("org/name")
    with pytest.raises(ValueError, match="expected a Hub id"):
        resolve_model_source("hub:")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model_source(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="holds no weights"):
        resolve_model_source(tmp_path / "empty")
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="holds no tokenizer"):
        resolve_model_source(tmp_path / "empty")


def test_default_batch_tokens_by_device_and_width():
    from rlsignals.signals.batching import CUDA_BATCH_TOKENS, default_batch_tokens

    cpu = torch.device("cpu")
    assert [default_batch_tokens(cpu, d) for d in (64, 512, 1024, 4096, 1 << 20)] == [16384, 4096, 2048, 1024, 1024]
    assert default_batch_tokens(torch.device("cuda"), 1024) == CUDA_BATCH_TOKENS
    with pytest.raises(ValueError, match="batch_tokens and max_batch_size must be >= 1"):
        ScoreConfig(batch_tokens=0)


def _plan_cost(lengths, batches, batch_cost):
    return sum(len(b) * max(lengths[i] for i in b) + batch_cost for b in batches)


@pytest.mark.parametrize("seed", range(20))
def test_plan_batches_is_the_cheapest_contiguous_plan_within_the_limits(seed):
    """Against every way of cutting the sorted prompts into contiguous batches (brute force)."""
    rng = random.Random(seed)
    lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 9))]
    batch_tokens, max_size, batch_cost = rng.randint(20, 120), rng.randint(1, 5), rng.choice([0, 8, 64])
    batches = plan_batches(lengths, batch_tokens, max_size, batch_cost)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= max_size and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= batch_tokens)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = math.inf
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        plan, start = [], 0
        for j, cut in enumerate(cuts, 1):
            if cut:
                plan.append(order[start:j])
                start = j
        plan.append(order[start:])
        if all(len(b) <= max_size and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= batch_tokens)
               for b in plan):
            best = min(best, _plan_cost(lengths, plan, batch_cost))
    assert _plan_cost(lengths, batches, batch_cost) == best


def test_plan_batches_splits_a_wide_spread_of_lengths_instead_of_padding_it():
    lengths = list(range(30, 156, 5))  # 26 questions of 30..155 tokens: one batch would pad them by ~70%
    batches = plan_batches(lengths, 4096, 64)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert 1 < len(batches) and padded <= 1.15 * sum(lengths)
