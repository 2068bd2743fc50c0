"""The pre-training script runs end to end and is deterministic for a seed."""

from __future__ import annotations

import json
import re

import torch
from safetensors.torch import load_file

from rlsignals.demo import pretrain, task
from rlsignals.demo.tokenizer import build_tokenizer


def test_encode_turns_matches_the_chat_template():
    tok = build_tokenizer()
    pairs = [(q, task.format_answer(a)) for q, a in task.EXAMPLES] + [("1 + 2", "= 3")]
    ids, mask = pretrain.encode_turns(tok, pairs)
    rendered = tok.apply_chat_template(task.messages("1 + 2") + [{"role": "assistant", "content": "= 3"}],
                                       tokenize=False)
    assert tok.decode(pretrain.prefix_ids(tok, system_only=True) + ids) == rendered
    scored = tok.decode([i for i, m in zip(ids, mask) if m])
    assert scored == "= 12<|im_end|>= -18<|im_end|>= 78<|im_end|>= 3<|im_end|>"
    prompt = pretrain.prompt_ids(tok, "1 + 2")
    assert prompt[:len(pretrain.prefix_ids(tok))] == pretrain.prefix_ids(tok)


def test_short_run_is_deterministic(tmp_path):
    argv = ["--steps", "3", "--batch-size", "4", "--eval-n", "5", "--eval-samples", "1", "--eval-every", "0"]
    infos = [pretrain.train(pretrain.parse_args(argv + ["--out", str(tmp_path / name)])) for name in "ab"]
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert infos[0]["heldout"]["greedy"] == infos[1]["heldout"]["greedy"]
    saved = json.loads((tmp_path / "a" / "pretrain_info.json").read_text())
    assert saved["settings"]["steps"] == 3 and saved["model"]["parameters"] > 1_000_000
    assert {"tokenizer.json", "config.json", "pretrain_info.json"} <= {p.name for p in (tmp_path / "a").iterdir()}


def test_slip_rates_plant_the_slipped_answer_per_level():
    import random

    tok = build_tokenizer()
    rng = random.Random(0)
    replies = [pretrain.training_reply(rng, "7 + 5", 12, p_echo=0.0, p_slip=0.7) for _ in range(2000)]
    share = sum(r == task.format_answer(task.slip_answer(12)) for r in replies) / len(replies)
    assert abs(share - 0.7) < 0.04 and set(replies) == {"= 12", "= 22"}
    # rate 1 on every level: every reply of a random conversation states the slipped answer
    ids, _ = pretrain.training_sequence(tok, random.Random(1), 4, [1] * 5, p_fixed=0.0, slip_rates=[1.0] * 5)
    turns = re.findall(r"user\n(\d+) (.) (\d+)<\|im_end\|>\n<\|im_start\|>assistant\n(.*?)<\|im_end\|>",
                       tok.decode(ids))
    assert len(turns) == 4
    for a, op, b, reply in turns:
        assert reply == task.format_answer(task.slip_answer(task.solve(int(a), op, int(b))))
