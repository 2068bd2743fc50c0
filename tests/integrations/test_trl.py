"""GAIN-RL inside TRL's real GRPOTrainer and RLOOTrainer (the public subclasses): a tiny Llama trained for a
few steps on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import GRPOConfig, RLOOConfig  # noqa: E402
from trl.trainer.utils import RepeatSampler  # noqa: E402

from rlsignals.integrations.trl import (  # noqa: E402
    ROW_COLUMN,
    STATE_FILE,
    GainRLCallback,
    GainRLGRPOTrainer,
    GainRLRepeatSampler,
    GainRLRLOOTrainer,
    accuracy_columns,
    batch_accuracy,
)
from rlsignals.integrations.trl_sampler import with_row_column  # noqa: E402
from rlsignals.signals.samplers import GainRLSampler  # noqa: E402

ROWS = 32
WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(40)]
SCORES = torch.rand(ROWS, generator=torch.Generator().manual_seed(0))
SAMPLER_KWARGS = dict(sigma=4.0, n=3.0, adj_max=10.0)  # mu moves a few ranks per update on 32 rows


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: one thread avoids contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_trainer(output_dir, seen, rloo=False, scores=SCORES, gain_rl_options=SAMPLER_KWARGS, dataset=None,
                 extra_rewards=(), trainer_kwargs=None, **overrides):
    """A GainRLGRPOTrainer (GainRLRLOOTrainer with ``rloo``) on a 2-layer Llama and 32 prompts.
    The reward of a row is its 'target' column, whatever the completion, so each batch's
    accuracy is known; each call of the reward appends its rows and prompts to ``seen``."""
    vocab = {word: i for i, word in enumerate(WORDS)}
    tokenizer_core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer_core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_core, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64, pad_token_id=0, eos_token_id=1))
    if dataset is None:
        dataset = Dataset.from_dict({"prompt": [f"w{i} w{(7 * i) % 40} w{(3 * i) % 40}" for i in range(ROWS)],
                                     "target": [(i % 5) / 2 for i in range(ROWS)]})

    def reward(prompts, completions, target, **kwargs):
        seen.append({"rows": list(kwargs[ROW_COLUMN]), "prompts": list(prompts)})
        return [float(t) for t in target]

    config = dict(output_dir=str(output_dir), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                  num_generations=2, max_completion_length=4, max_steps=4, save_steps=2, logging_steps=1,
                  learning_rate=1e-3, seed=3, report_to="none", use_cpu=True, bf16=False,
                  disable_tqdm=True)
    config.update(overrides)
    trainer_cls, config_cls = (GainRLRLOOTrainer, RLOOConfig) if rloo else (GainRLGRPOTrainer, GRPOConfig)
    if rloo:
        config["beta"] = 0.0  # no reference model to load
    return trainer_cls(model=model, reward_funcs=[reward, *extra_rewards],
                       args=config_cls(**config), train_dataset=dataset, processing_class=tokenizer,
                       gain_rl_scores=scores, gain_rl_options=gain_rl_options, **(trainer_kwargs or {}))


def chunks_seen(seen):
    """The unique rows of each generation batch, in order."""
    return [list(dict.fromkeys(call["rows"])) for call in seen]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: 4 steps, checkpoints at 2 and 4. Run B: a fresh trainer resumed from A's checkpoint-2."""
    out = tmp_path_factory.mktemp("grpo")
    seen_a, seen_b = [], []
    trainer_a = make_trainer(out, seen_a)
    trainer_a.train()
    state_2 = json.loads((out / "checkpoint-2" / STATE_FILE).read_text())
    trainer_b = make_trainer(out, seen_b)
    trainer_b.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    return SimpleNamespace(out=out, seen_a=seen_a, seen_b=seen_b, trainer_a=trainer_a,
                           sampler_a=trainer_a.gain_rl_sampler, sampler_b=trainer_b.gain_rl_sampler, state_2=state_2,
                           dataset=trainer_a.train_dataset)


def test_trained_prompts_follow_the_sampler_draws(runs):
    sampler, seen = runs.sampler_a, runs.seen_a
    assert len(seen) == 4  # one generation batch per optimizer step (steps_per_generation == grad accumulation)
    for k, call in enumerate(seen):
        draw = sampler.draw(k)
        assert call["rows"] == [i for i in draw for _ in range(2)]  # each prompt num_generations times, in order
        assert call["prompts"] == [runs.dataset["prompt"][i] for i in call["rows"]]
    assert len({tuple(c) for c in chunks_seen(seen)}) == 4


def test_mu_follows_the_update_rule_with_one_generation_of_lag(runs):
    sampler = runs.sampler_a
    targets = torch.tensor([(i % 5) / 2 for i in range(ROWS)], dtype=torch.float64)
    mu = 0.0
    mus = [mu]
    for k, update in enumerate(sampler.history):
        rows = torch.tensor(sampler.draw(k))
        acc, ang = float(targets[rows].mean()), float(SCORES.double()[rows].mean())
        assert update["acc"] == pytest.approx(acc) and update["ang"] == pytest.approx(ang)
        adj = min(max(3 * math.tanh(2 * (acc / 2 - 0.5)) + 3 * math.tanh(2 * ang), 0.0), 10.0)
        mu = min(max(mu + adj, 0.0), ROWS - 1)
        assert update["mu"] == pytest.approx(mu)
        mus.append(mu)
    assert len(sampler.history) == 4 and mus[-1] > 5
    # draw k is taken while step k-1 is fetched, before chunk k-1's rewards: it uses mu after k-1 updates
    assert sampler.draw_mus == pytest.approx([mus[max(k - 1, 0)] for k in range(len(sampler.draw_mus))])
    logs = [entry for entry in runs.trainer_a.state.log_history if "gain_rl/mu" in entry]
    assert [entry["gain_rl/mu"] for entry in logs] == pytest.approx(mus[1:])
    assert all("rewards/reward/mean" in entry for entry in logs)  # the wrapped reward keeps its name in TRL's logs


def test_sampler_state_lands_in_each_checkpoint(runs):
    for step in (2, 4):
        payload = json.loads((runs.out / f"checkpoint-{step}" / STATE_FILE).read_text())
        assert payload["global_step"] == step and payload["next_chunk"] == step
        assert len(payload["sampler"]["history"]) == step
    assert payload["sampler"] == json.loads(json.dumps(runs.sampler_a.state_dict()))
    assert runs.state_2["sampler"]["mu"] == pytest.approx(runs.sampler_a.history[1]["mu"])


def test_resume_replays_the_same_chunks_and_state(runs):
    # B skipped steps 1-2 (replaying draws 0-2 from the saved mus) and trained steps 3-4 on A's chunks 2-3
    assert chunks_seen(runs.seen_b) == chunks_seen(runs.seen_a)[2:]
    assert runs.sampler_b.state_dict() == runs.sampler_a.state_dict()


RANK_SCRIPT = """
import json, os, sys, torch
sys.path.insert(0, sys.argv[1])
import test_trl as T
torch.set_num_threads(1)
seen = []
trainer = T.make_trainer(sys.argv[2], seen, per_device_train_batch_size=2)
trainer.train()
with open(os.path.join(sys.argv[2], "rank%s.json" % os.environ["RANK"]), "w") as f:
    json.dump({"rows": [call["rows"] for call in seen], "state": trainer.gain_rl_sampler.state_dict()}, f)
"""


@pytest.mark.slow
def test_two_ranks_draw_the_same_chunks_as_one(runs, tmp_path):
    # two CPU processes (gloo), 2 prompts-with-repeats each: the same generation batches as run A on one process
    script = tmp_path / "rank_script.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(Path(__file__).parent), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["state"] == ranks[1]["state"] == json.loads(json.dumps(runs.sampler_a.state_dict()))
    for k, (rows0, rows1) in enumerate(zip(ranks[0]["rows"], ranks[1]["rows"])):
        assert rows0 + rows1 == runs.seen_a[k]["rows"]  # each rank scores its contiguous half of the chunk


def test_resume_inside_a_chunk_does_not_count_it_twice(tmp_path):
    # steps_per_generation 4 with 2 accumulation steps: a chunk spans two optimizer steps; TRL regenerates
    # completions for the current chunk after a resume at step 1, which must not update mu again
    options = dict(steps_per_generation=4, max_steps=2, save_steps=1)
    seen_a, seen_b = [], []
    trainer_a = make_trainer(tmp_path, seen_a, **options)
    trainer_a.train()
    trainer_b = make_trainer(tmp_path, seen_b, **options)
    trainer_b.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert chunks_seen(seen_b) == chunks_seen(seen_a)[:1] and len(trainer_a.gain_rl_sampler.history) == 1
    assert trainer_b.gain_rl_sampler.state_dict() == trainer_a.gain_rl_sampler.state_dict()


def test_rloo_trainer_follows_the_sampler_too(tmp_path):
    seen = []
    trainer = make_trainer(tmp_path, seen, rloo=True, max_steps=2)
    trainer.train()
    sampler = trainer.gain_rl_sampler
    assert chunks_seen(seen) == [sampler.draw(0), sampler.draw(1)] and len(sampler.history) == 2
    assert (tmp_path / "checkpoint-2" / STATE_FILE).is_file()


def test_weighted_sync_and_async_rewards_make_the_accuracy(tmp_path):
    # the accuracy is TRL's weighted sum: 1.0 * target + 0.5 * bonus, where the async bonus is 1 on even rows and
    # None (NaN, left out of the sum) on odd ones
    seen = []

    async def bonus(prompts, completions, **kwargs):
        return [1.0 if row % 2 == 0 else None for row in kwargs[ROW_COLUMN]]

    trainer = make_trainer(tmp_path, seen, max_steps=2, reward_weights=[1.0, 0.5], extra_rewards=[bonus])
    assert trainer.reward_func_names == ["reward", "bonus"]
    trainer.train()
    sampler = trainer.gain_rl_sampler
    for k, update in enumerate(sampler.history):
        rows = sampler.draw(k)
        assert update["acc"] == pytest.approx(sum((r % 5) / 2 + 0.5 * (r % 2 == 0) for r in rows) / len(rows))
    assert len(sampler.history) == 2


def test_a_second_train_call_starts_the_sampler_again(tmp_path):
    seen = []
    trainer = make_trainer(tmp_path, seen, max_steps=2)
    trainer.train()
    sampler = trainer.gain_rl_sampler
    first = sampler.state_dict()
    trainer.train()  # starts again from step 0: so does the sampler
    assert chunks_seen(seen) == 2 * [sampler.draw(0), sampler.draw(1)] and sampler.state_dict() == first


def test_iterable_or_row_column_datasets_are_refused(tmp_path):
    with pytest.raises(TypeError, match="map-style"):  # (recent TRL takes iterable datasets; GAIN-RL needs rows)
        with_row_column(Dataset.from_dict({"prompt": ["w1"] * ROWS}).to_iterable_dataset())
    shuffled = Dataset.from_dict({"prompt": ["w1"] * ROWS, "target": [0.0] * ROWS, ROW_COLUMN: [0] * ROWS})
    with pytest.raises(ValueError, match="not its row index"):
        make_trainer(tmp_path, [], dataset=shuffled)


def test_resume_without_the_sampler_state_is_refused(tmp_path):
    trainer = make_trainer(tmp_path, [], max_steps=1, save_steps=1)
    trainer.train()
    os.remove(tmp_path / "checkpoint-1" / STATE_FILE)
    trainer = make_trainer(tmp_path, [], max_steps=2, save_steps=1)
    with pytest.raises(FileNotFoundError, match=STATE_FILE):
        trainer.train(resume_from_checkpoint=True)


@pytest.mark.parametrize("rows, batch, mini, repeat", [(7, 3, 2, 4), (12, 4, 3, 2), (5, 5, 1, 1), (9, 2, 1, 3)])
def test_repeat_sampler_layout_and_length(rows, batch, mini, repeat):
    gain = GainRLSampler(torch.rand(rows), batch, sigma=2.0, seed=5)
    sampler = GainRLRepeatSampler(gain, mini_repeat_count=mini, repeat_count=repeat)
    assert len(sampler) == len(RepeatSampler(list(range(rows)), mini, batch, repeat))
    first = list(sampler)
    cpe = rows // batch
    expected = [i for k in range(cpe) for _ in range(repeat) for i in gain.draw(k) for _ in range(mini)]
    assert first == expected and len(first) == len(sampler)
    gain.mu = rows - 1.0                     # mu moves: past draws still replay with the mu they used
    sampler.set_epoch(0)
    assert list(sampler) == first
    second = list(sampler)                   # no set_epoch: the next epoch
    assert second == [i for k in range(cpe, 2 * cpe) for _ in range(repeat) for i in gain.draw(k) for _ in range(mini)]
    fresh = GainRLRepeatSampler(GainRLSampler(torch.rand(rows), batch), mini)
    fresh.set_epoch(2)
    with pytest.raises(RuntimeError, match="restore its state"):
        list(fresh)


def test_repeat_sampler_refuses_a_dataset_of_another_size():
    with pytest.raises(ValueError, match="10 rows but the sampler holds 8"):
        GainRLRepeatSampler(GainRLSampler(torch.rand(8), 2), 2, num_rows=10)


def test_accuracy_choice():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [float("nan"), float("nan")], [1.0, float("nan")]])
    assert batch_accuracy(rewards, [1.0, 0.5]) == pytest.approx((1.5 + 0.5 + 1.0) / 3)
    assert batch_accuracy(rewards[:, [0]], [1.0]) == pytest.approx(2 / 3)
    assert batch_accuracy(rewards[:, [1]], [1.0]) == pytest.approx(1.0)
    assert math.isnan(batch_accuracy(torch.full((2, 1), float("nan")), [1.0]))
    names = ["correct", "format"]
    assert accuracy_columns("sum", names) == [0, 1] and accuracy_columns("format", names) == [1]
    assert accuracy_columns(-2, names) == [0]
    with pytest.raises(ValueError, match="names no reward function"):
        accuracy_columns("speed", names)
    with pytest.raises(ValueError, match="out of range"):
        accuracy_columns(2, names)
    with pytest.raises(ValueError, match="one column per weight"):
        batch_accuracy(rewards, [1.0])


def test_a_reward_model_in_the_accuracy_is_refused():
    trainer = SimpleNamespace(reward_func_names=["judge", "correct"], reward_weights=[1.0, 1.0])
    sampler = GainRLSampler(SCORES, 4)
    with pytest.raises(ValueError, match="'judge' is a reward model.*the callables are \\['correct'\\]"):
        GainRLCallback(trainer, sampler).observe([torch.nn.Linear(2, 1), len])
    observed = GainRLCallback(trainer, sampler, "correct").observe([torch.nn.Linear(2, 1), len])
    assert isinstance(observed[0], torch.nn.Module) and observed[1] is not len and observed[1].__wrapped__ is len


def test_prompts_the_sampler_did_not_draw_are_reported(tmp_path):
    trainer = make_trainer(tmp_path, [])
    draw = trainer.gain_rl_sampler.draw()
    other = [i for i in range(ROWS) if i not in draw][:4]
    with pytest.raises(RuntimeError, match="not the sampler's draw 0"):
        trainer.gain_rl_callback.apply([([i for i in other for _ in range(2)], torch.ones(8, 1))])


def test_options_and_errors(tmp_path):
    dataset = Dataset.from_dict({"prompt": [f"w{i}" for i in range(ROWS)], "target": [0.0] * ROWS,
                                 "angle": SCORES.tolist()})
    trainer = make_trainer(tmp_path, [], dataset=dataset, scores="angle", gain_rl_options={"mu": 3.0})
    sampler = trainer.gain_rl_sampler
    assert sampler.batch_size == 4 and sampler.seed == 3 and sampler.mu == 3.0
    assert trainer.train_dataset[ROW_COLUMN] == list(range(ROWS))
    assert isinstance(trainer._get_train_sampler(), GainRLRepeatSampler)  # the Trainer's sampler hook
    with pytest.raises(ValueError, match="31 scores"):
        make_trainer(tmp_path, [], scores=SCORES[:31])
    with pytest.raises(ValueError, match="names no column"):
        make_trainer(tmp_path, [], scores="angle")
    with pytest.raises(ValueError, match="draws 8 prompts"):
        make_trainer(tmp_path, [], scores=GainRLSampler(SCORES, 8), gain_rl_options=None)
    with pytest.raises(TypeError, match="ready GainRLSampler"):
        make_trainer(tmp_path, [], scores=GainRLSampler(SCORES, 4))
    with pytest.raises(ValueError, match="names no reward function"):
        make_trainer(tmp_path, [], trainer_kwargs={"gain_rl_accuracy": "speed"})
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        make_trainer(tmp_path, [], remove_unused_columns=True)
