"""`rlsignals train` settings: file + flags, and one-line errors before any model loads."""

from __future__ import annotations

import json

import pytest

from rlsignals.cli import main
from rlsignals.trainer.config import ConfigError, TrainConfig, check_inputs, load_config


@pytest.fixture()
def files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # not loadable: any model load would fail loudly
    rows = [{"prompt": f"{a} + {a}", "answer": str(2 * a)} for a in range(6)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def write(tmp_path, text: str, name: str = "run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = 'model = "model"\ndata = "data.jsonl"\noutput_dir = "out"\nprompts_per_step = 2\ngenerations = 2\n'


def test_file_then_flags_paths_relative_to_the_file(files):
    text = BASE + 'steps = 5\nlr = 1\nsampler = "gain_rl"\n[sampler_options]\nsigma = 3\n'
    config = load_config(write(files, text), {"steps": "7", "use_chat_template": "false", "scores": "none"})
    assert config.steps == 7 and config.lr == 1.0 and config.use_chat_template is False
    assert config.model == str(files / "model") and config.output_dir == "out"
    assert config.sampler_options == {"sigma": 3}
    same = load_config(write(files, json.dumps({"model": "model", "data": "data.jsonl", "output_dir": "o"}),
                             "run.json"))
    assert same.data == str(files / "data.jsonl") and same.steps == TrainConfig().steps


@pytest.mark.parametrize("text, flags, message", [
    (BASE + "step = 3\n", {}, "unknown key 'step'; did you mean 'steps'?"),
    (BASE, {"lrr": "1"}, "flags: unknown key 'lrr'; did you mean 'lr'?"),
    (BASE + 'steps = "ten"\n', {}, "'steps' must be int, got str 'ten'"),
    (BASE + "use_chat_template = 1\n", {}, "'use_chat_template' must be bool, got int 1"),
    (BASE, {"steps": "ten"}, "--steps must be int, got 'ten'"),
    (BASE + 'advantage = "ppo"\n', {}, "'advantage' must be one of ('grpo', 'dr_grpo', 'rloo'), got 'ppo'"),
    (BASE + "lr = -1\n", {}, "'lr' must be > 0, got -1.0"),
    (BASE + 'angle_signal = "live"\n', {}, "angle_signal = 'live' drives the GAIN-RL update"),
    (BASE + 'sampler = "gain_rl"\n[sampler_options]\nsigmaa = 2\n', {}, "did you mean 'sigma'?"),
    ('data = "data.jsonl"\noutput_dir = "o"\n', {}, "config key 'model' is required"),
    (BASE + "steps = [\n", {}, "does not parse"),
    (BASE + 'reward = "exact"\n', {}, "must be one of ('integer', 'last_integer', 'math') or 'module:function'"),
])
def test_bad_settings_are_one_line_errors(files, text, flags, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(files, text), flags)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("extra, message", [
    ('answer_field = "solution"\n', "row 0 has no column 'solution' (columns: ['answer', 'prompt']); set answer_field"),
    ('prompt_field = "question"\n', "row 0 has no column 'question'"),
    ('reward = "no_such_module_xyz:score"\n', "cannot import module 'no_such_module_xyz' (ModuleNotFoundError"),
    ('reward = "json:no_such_function"\n', "module 'json' has no function 'no_such_function'"),
    ('prompts_per_step = 8\n', "prompts_per_step (8) exceeds the dataset's 6 rows"),
    ('sampler = "gain_rl"\nscores = "scores.json"\n', "scores file scores.json has 2 scores, the dataset has 6 rows"),
    ('model = "nowhere"\n', "is not a local Hugging Face model folder"),
])
def test_bad_inputs_are_one_line_errors(files, extra, message, monkeypatch):
    monkeypatch.chdir(files)
    (files / "scores.json").write_text("[1.0, 2.0]")
    text = BASE.replace("prompts_per_step = 2\n", "") + extra + ("" if "prompts_per_step" in extra else
                                                                 "prompts_per_step = 2\n")
    if extra.startswith("model"):
        text = text.replace('model = "model"\n', "")
    config = load_config(write(files, text.replace('scores = "scores.json"', f'scores = "{files / "scores.json"}"')))
    if "scores" in extra:
        message = message.replace("scores.json", str(files / "scores.json"))
    with pytest.raises(ConfigError) as info:
        check_inputs(config)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_command_reports_one_line_and_exit_2(files, capsys):
    assert main(["train", str(write(files, BASE + "stepz = 1\n")), "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlsignals train: error:") and "did you mean 'steps'?" in err


def test_every_key_is_in_the_docs_table():
    from pathlib import Path

    from rlsignals.trainer.config import FIELDS

    text = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| `")]
    missing = [key for key in FIELDS if not any(f"`{key}`" in line.split("|")[1] for line in table)]
    assert not missing, f"add to docs/training.md's table of train keys: {missing}"
