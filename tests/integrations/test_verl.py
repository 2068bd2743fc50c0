"""GainRLVerlSampler against verl's duck-typed sampler interface, with a fake data source and batches."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.gain_rl import check_released_updates
from torch.utils.data import DataLoader

from rlsignals.integrations.verl import GainRLVerlSampler, load_scores

ROWS, BATCH, RESPONSES = 40, 4, 3
SCORES = torch.rand(ROWS, generator=torch.Generator().manual_seed(1)).tolist()
TARGETS = [(i % 3) / 2 for i in range(ROWS)]
RULE = dict(sigma=5.0, n=4.0, adj_max=10.0, acc_scale=1.0, seed=7)


class FakeRLHFDataset(torch.utils.data.Dataset):
    """Like verl's RLHFDataset: its rows' columns in ``.dataframe``, dict items."""

    def __init__(self, **columns):
        self.dataframe = _Table({"prompt": [f"q{i}" for i in range(ROWS)], **columns})

    def __len__(self):
        return ROWS

    def __getitem__(self, index):
        return {"row": index, "prompt": self.dataframe["prompt"][index]}


class _Table:
    def __init__(self, columns):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, name):
        return self.columns[name]


SOURCE = FakeRLHFDataset(score=SCORES)


def make_sampler(source=SOURCE, **options):
    return GainRLVerlSampler(source, {"train_batch_size": BATCH, "sampler": {"class_name": "GainRLVerlSampler",
                                                                          **RULE, **options}})


def step_batch(rows):
    """A DataProto-like batch: each prompt's RESPONSES responses, accuracy = the row's target."""
    acc = np.array([TARGETS[r] for r in rows for _ in range(RESPONSES)], dtype=object)
    return SimpleNamespace(non_tensor_batch={"acc": acc}, batch={})


def train(sampler, loader, steps, start_epoch=0, epochs=3):
    """verl's loop: for each epoch, for each batch, train, then sampler.update(batch)."""
    seen = []
    for _ in range(start_epoch, epochs):
        for batch in loader:
            rows = [item["row"] for item in batch]
            seen.append(rows)
            sampler.update(step_batch(rows))
            if len(seen) == steps:
                return seen
    return seen


def loader_for(sampler, loader_cls=DataLoader):
    return loader_cls(SOURCE, batch_size=BATCH, sampler=sampler, collate_fn=list, drop_last=True)


@pytest.fixture
def sampler():
    return make_sampler()


def test_batches_are_the_draws_and_mu_has_no_lag(sampler):
    seen = train(sampler, loader_for(sampler), steps=25)  # 10 batches an epoch: crosses two epoch ends
    gain = sampler.gain
    assert len(sampler) == ROWS and seen == [gain.draw(k) for k in range(25)]
    mus = check_released_updates(gain.history, seen, TARGETS, SCORES, batch=BATCH, n=4, adj_max=10, rows=ROWS)
    mu = mus[-1]
    assert gain.draw_mus == pytest.approx(mus[:25])  # draw k used mu after k updates
    assert sampler.metrics["gain_rl/mu"] == pytest.approx(mu) and mu > 10


def test_state_dict_resumes_mid_pass_and_at_a_pass_end(sampler):
    reference = train(sampler, loader_for(sampler), steps=25)
    for stop in (13, 10, 20):  # mid-pass, and exactly at the end of passes 0 and 1
        first = make_sampler()
        head = train(first, loader_for(first), steps=stop)
        state = json.loads(json.dumps(first.state_dict()))  # survives a round trip through a checkpoint
        resumed = make_sampler()
        resumed.load_state_dict(state)
        tail = train(resumed, loader_for(resumed), steps=25 - stop, start_epoch=stop // 10)
        assert head + tail == reference, stop
        assert resumed.state_dict()["sampler"] == sampler.state_dict()["sampler"]


def test_real_stateful_dataloader_round_trip():
    stateful = pytest.importorskip("torchdata.stateful_dataloader")

    def loader(s):
        return loader_for(s, stateful.StatefulDataLoader)

    whole = make_sampler()
    reference = train(whole, loader(whole), steps=16)
    first = make_sampler()
    first_loader = loader(first)
    head = train(first, first_loader, steps=6)
    saved = first_loader.state_dict()  # what verl writes to data.pt
    resumed = make_sampler()
    resumed_loader = loader(resumed)
    resumed_loader.load_state_dict(saved)
    tail = train(resumed, resumed_loader, steps=10)
    assert head + tail == reference
    assert resumed.state_dict()["sampler"] == whole.state_dict()["sampler"]


def test_several_batches_per_step_update_once_with_all_their_rows(sampler):
    iterator = iter(loader_for(sampler))
    rows = [item["row"] for _ in range(2) for item in next(iterator)]  # e.g. DAPO pulling a second batch
    sampler.update(step_batch(rows))
    assert len(sampler.gain.history) == 1
    assert sampler.gain.history[0]["ang"] == pytest.approx(sum(SCORES[r] for r in rows) / len(rows))
    with pytest.raises(RuntimeError, match="no batch was drawn"):
        sampler.update(step_batch(rows))


def test_accuracy_from_token_level_scores_and_missing_keys():
    sampler = make_sampler(accuracy_key="correct")
    scores = torch.zeros(6, 5)
    scores[:, -1] = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])  # the reward sits on the last token
    batch = SimpleNamespace(non_tensor_batch={"acc": np.zeros(6)}, batch={"token_level_scores": scores})
    assert sampler.batch_accuracy(batch) == pytest.approx(4 / 6)
    batch.non_tensor_batch["correct"] = np.array([1, 1, 1, 0, 0, 0], dtype=object)
    assert sampler.batch_accuracy(batch) == pytest.approx(0.5)
    with pytest.raises(KeyError, match="accuracy_key"):
        sampler.batch_accuracy(SimpleNamespace(non_tensor_batch={}, batch={}))


def test_options_batch_size_and_seed():
    config = {"train_batch_size": 8, "gen_batch_size": 5, "seed": 11, "sampler": {"sigma_fraction": 0.5, "mu": 3}}
    sampler = GainRLVerlSampler(FakeRLHFDataset(score=SCORES), config)
    assert sampler.gain.batch_size == 5 and sampler.gain.seed == 11 and sampler.gain.sigma == 20
    assert sampler.gain.mu == 3 and len(sampler) == 40
    ns_config = SimpleNamespace(train_batch_size=4, sampler=SimpleNamespace(score_column="angle"))
    assert GainRLVerlSampler(FakeRLHFDataset(angle=SCORES), ns_config).gain.batch_size == 4


def test_scores_from_files(tmp_path):
    order = list(range(ROWS))
    random.Random(0).shuffle(order)
    table = [{"index": i, "score": SCORES[i], "rank": 0} for i in order]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(row) + "\n" for row in table))
    (tmp_path / "s.json").write_text(json.dumps(SCORES))
    (tmp_path / "s.csv").write_text("index,score\n" + "".join(f"{i},{SCORES[i]!r}\n" for i in order))
    for name in ("s.jsonl", "s.json", "s.csv"):
        assert load_scores(tmp_path / name, ROWS) == pytest.approx(SCORES), name
    source = FakeRLHFDataset()  # no score column: the file is used
    sampler = GainRLVerlSampler(source, {"train_batch_size": 4, "sampler": {"scores_file": str(tmp_path / "s.jsonl")}})
    assert sampler.gain.scores.tolist() == pytest.approx(SCORES)


def test_scores_from_parquet_without_index(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "angle": s} for s in SCORES]), tmp_path / "s.parquet")
    assert load_scores(tmp_path / "s.parquet", ROWS, "angle") == pytest.approx(SCORES)


def test_bad_scores(tmp_path):
    (tmp_path / "gap.jsonl").write_text("".join(json.dumps({"index": 2 * i, "score": 0.1}) + "\n" for i in range(4)))
    with pytest.raises(ValueError, match="number the rows"):
        load_scores(tmp_path / "gap.jsonl")
    (tmp_path / "short.json").write_text(json.dumps([0.1, 0.2]))
    with pytest.raises(ValueError, match="2 scores for a dataset of 40 rows"):
        load_scores(tmp_path / "short.json", ROWS)
    with pytest.raises(ValueError, match="row 0 has no 'score'"):
        (tmp_path / "other.json").write_text(json.dumps([{"angle": 0.1}]))
        load_scores(tmp_path / "other.json")
    with pytest.raises(ValueError, match="unsupported scores file type"):
        load_scores(tmp_path / "s.txt")
    with pytest.raises(ValueError, match="no score column 'score'"):
        GainRLVerlSampler(FakeRLHFDataset(), {"train_batch_size": 4, "sampler": {}})


def test_a_later_pass_needs_the_state():
    sampler = make_sampler()
    sampler.set_epoch(1)
    with pytest.raises(RuntimeError, match="load its state_dict"):
        next(iter(sampler))
    with pytest.raises(ValueError, match="not a GainRLVerlSampler state"):
        sampler.load_state_dict({"format": "other"})
