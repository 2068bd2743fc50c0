"""The pre-training script runs end to end and is deterministic for a seed."""

from __future__ import annotations

import json

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
