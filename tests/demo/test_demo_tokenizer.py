"""The demo tokenizer: characters in, characters out, ChatML template, and a
save/load round trip through AutoTokenizer with a Llama config."""

from __future__ import annotations

import json

from rlsignals.demo import task
from rlsignals.demo.tokenizer import CHARACTERS, EOS, PAD, build_tokenizer


def test_round_trip_and_single_digit_tokens():
    tok = build_tokenizer()
    text = "482 - 517 = -35\nQuantum 12345 ?!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    digits = [tok.convert_tokens_to_ids(c) for c in "0123456789"]
    assert len(set(digits)) == 10 and tok.unk_token_id not in digits
    assert all(tok.convert_tokens_to_ids(c) != tok.unk_token_id for c in CHARACTERS)
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    assert tok.pad_token == PAD and tok.eos_token == EOS and tok.pad_token_id != tok.eos_token_id
    assert len(tok) < 110


def test_chat_template_renders_chatml():
    tok = build_tokenizer()
    text = tok.apply_chat_template(task.messages("12 + 3"), tokenize=False, add_generation_prompt=True)
    assert text.startswith(f"<|im_start|>system\n{task.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n7 + 5<|im_end|>\n")
    assert text.endswith("<|im_start|>user\n12 + 3<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # system, few-shot turns, question, reply
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3 + 2 * len(task.EXAMPLES)
    assert tok.decode(ids) == text
    plain = tok.decode(ids, skip_special_tokens=True)
    assert plain.startswith(f"system\n{task.SYSTEM_PROMPT}\nuser\n7 + 5\nassistant\n= 12\n")


def test_save_and_autotokenizer_load_identically(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    msgs = task.messages("-5 - 93 junk é")
    for t in (tok, loaded):
        assert t.padding_side == "left"
    assert loaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == \
        (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id)
