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


def test_train_jumps_from_the_config_and_logs_the_accuracy_around_it(tmp_path):
    """tracker + eval_data + jump_at: the in-loop jump at step 2 (linear in the step),
    logged with the held-out accuracy just before and after it, and the run trains on to
    its last step; AlphaRL's PLS on an accuracy that never moved (the tiny model solves
    nothing) has nothing to fit: the jump is skipped with its reason and the run goes on."""
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rows = [{"prompt": p, "answer": "7"} for p in PROMPTS]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    base = ["train", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data.jsonl"), "--reward",
            "last_integer", "--steps", "3", "--prompts-per-step", "2", "--generations", "2", "--max-new-tokens", "4",
            "--lr", "1e-3", "--no-progress", "--tracker", "--eval-data", str(tmp_path / "held.jsonl"),
            "--eval-every", "1", "--jump-at", "2"]
    for name, jump in (("ahead", ["--jump-ahead", "4"]), ("alpharl", ["--jump-target", "0.9", "--tracker-accuracy",
                                                                       "eval_accuracy"])):
        out = tmp_path / name
        assert main([*base, *jump, "--output-dir", str(out)]) == 0
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 3] and all("eval_accuracy" in r for r in records)
        jump = records[1]["jump"]
        if name == "ahead":
            assert jump["method"] == "linear_step" and jump["target_step"] == 6
            assert jump["accuracy_before"] == records[1]["eval_accuracy"] and 0 <= jump["accuracy_after"] <= 1
        else:
            assert records[1]["eval_accuracy"] == records[0]["eval_accuracy"] == 0.0
            assert jump == {"step": 2, "skipped": "accuracy is the same at every fitted checkpoint: nothing to fit"}
        assert "jump" not in records[0] and "jump" not in records[2]
    assert main([*base, "--output-dir", str(tmp_path / "bad")]) == 2  # jump_at without a target
