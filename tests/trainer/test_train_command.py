"""`rlsignals train` in process on a tiny model: GAIN-RL scored at the start,
the live angle signal driving its update, metrics, checkpoints and a resume."""

from __future__ import annotations

import json

import pytest
from helpers.tiny_models import CHATML, make_model, make_tokenizer

from rlsignals.cli import main
from rlsignals.signals import PromptTemplate, ScoreConfig, score_prompts

PROMPTS = ["what is two plus three", "multiply six by three", "the answer is eight",
           "compute the sum of seven and five", "twelve minus five equals seven", "how many apples are left"]


def test_train_scores_at_start_logs_live_angles_and_resumes(tmp_path):
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": "7"}) + "\n" for p in PROMPTS))
    config = {"model": "model", "data": "data.jsonl", "output_dir": str(tmp_path / "out"), "reward": "last_integer",
              "system_prompt": "you are a careful math tutor", "steps": 2, "prompts_per_step": 2, "generations": 2,
              "max_new_tokens": 4, "lr": 1e-3, "sampler": "gain_rl", "angle_signal": "live",
              "sampler_options": {"sigma": 2.0}, "progress": False}
    (tmp_path / "run.json").write_text(json.dumps(config))
    assert main(["train", str(tmp_path / "run.json")]) == 0

    template = PromptTemplate(tokenizer, "you are a careful math tutor")
    expected = sorted((r for b in score_prompts(model, template, PROMPTS, ScoreConfig()) for r in b),
                      key=lambda r: r["index"])
    kept = [json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [r["score"] for r in kept] == pytest.approx([r["score"] for r in expected], abs=1e-6)
    first = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in first] == [1, 2]
    assert all(len(r["angle_live_score"]) == 2 and "mu" in r for r in first)
    assert (tmp_path / "out" / "checkpoint-2" / "model.safetensors").is_file()

    assert main(["train", str(tmp_path / "run.json"), "--steps", "3"]) == 0  # resumes at step 2
    again = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [1, 2, 3] and again[:2] == first
