"""GainRLVerlSampler inside the installed verl: built the way verl's trainer builds it.

verl 0.5 to 0.7 (``verl.experimental.dataset.sampler``); verl 0.8 and newer have no
sampler hook, and the module skips there (the offline ordering of
``rlsignals score --ordered-data`` is what those versions get). What is verl's here:
its data config defaults (``trainer/config/data/legacy_data.yaml``), its loader of the
sampler class (``load_extern_object``, ``load_extern_type`` before 0.7, on ``pkg://``), the isinstance check of
``create_rl_sampler``, ``RLHFDataset`` over a parquet file, ``collate_fn``, the
StatefulDataLoader as ``RayPPOTrainer._create_dataloader`` makes it, ``DataProto``
batches repeated per response, and the call ``train_dataloader.sampler.update(batch=batch)``
of ``RayPPOTrainer.fit``. Ray workers and models are not started.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("CI") == "true":
    import verl  # noqa: F401 - CI installs verl 0.7.1 (.ci/run): there a failed import fails, it does not skip
verl = pytest.importorskip("verl")
sampler_api = pytest.importorskip("verl.experimental.dataset.sampler",
                                  reason="this verl has no sampler hook (>= 0.8): offline ordering only")
pa = pytest.importorskip("pyarrow")

import pyarrow.parquet as pq  # noqa: E402
from helpers.gain_rl import check_released_updates  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.utils import import_utils  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn  # noqa: E402

from rlsignals.integrations.verl import GainRLVerlSampler  # noqa: E402

ROWS, BATCH, RESPONSES = 24, 4, 3
SCORES = torch.rand(ROWS, generator=torch.Generator().manual_seed(2)).tolist()
TARGETS = [float(i % 3 == 0) for i in range(ROWS)]
RULE = dict(sigma=4.0, n=3.0, adj_max=8.0, acc_scale=1.0)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """A verl-format parquet (data_source, chat prompt, reward_model, extra_info.index) with an angle score column."""
    path = tmp_path_factory.mktemp("verl") / "train.parquet"
    rows = [{"data_source": "toy", "prompt": [{"role": "user", "content": f"question {i}"}], "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": str(i)}, "extra_info": {"index": i},
             "angle": SCORES[i]} for i in range(ROWS)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def data_config(data_file, **sampler_options):
    """verl's own data defaults with the sampler set as its docs say (class_path, class_name, num_workers 0)."""
    defaults = OmegaConf.load(Path(verl.__file__).parent / "trainer" / "config" / "data" / "legacy_data.yaml")
    overrides = {"train_files": str(data_file), "train_batch_size": BATCH, "dataloader_num_workers": 0,
                 "seed": 5, "filter_overlong_prompts": False, "cache_dir": str(Path(data_file).parent / "cache"),
                 "sampler": {"class_path": "pkg://rlsignals.integrations.verl", "class_name": "GainRLVerlSampler",
                             "score_column": "angle", **RULE, **sampler_options}}
    return OmegaConf.merge(defaults, overrides)


def build(data_file, **sampler_options):
    """What verl's create_rl_sampler and RayPPOTrainer._create_dataloader do."""
    config = data_config(data_file, **sampler_options)
    dataset = RLHFDataset(data_files=[str(data_file)], tokenizer=None, config=config)
    load = getattr(import_utils, "load_extern_object", None) or import_utils.load_extern_type
    sampler_cls = load(config.sampler.class_path, config.sampler.class_name)
    sampler = sampler_cls(data_source=dataset, data_config=config)
    assert isinstance(sampler, sampler_api.AbstractSampler)
    loader = StatefulDataLoader(dataset=dataset, batch_size=config.get("gen_batch_size", config.train_batch_size),
                                num_workers=config["dataloader_num_workers"], drop_last=True, collate_fn=collate_fn,
                                sampler=sampler)
    return sampler, loader


def fit(loader, steps):
    """RayPPOTrainer.fit's use of the sampler: a DataProto per batch, RESPONSES responses per prompt,
    the reward's extra info (acc) in non_tensor_batch, then sampler.update(batch=batch)."""
    seen = []
    while len(seen) < steps:
        for batch_dict in loader:
            batch = DataProto.from_single_dict(batch_dict)
            rows = [int(i) for i in batch.non_tensor_batch["index"]]
            batch = batch.repeat(repeat_times=RESPONSES, interleave=True)
            batch.non_tensor_batch["acc"] = np.array([TARGETS[r] for r in rows for _ in range(RESPONSES)])
            seen.append(rows)
            if isinstance(loader.sampler, sampler_api.AbstractCurriculumSampler):
                loader.sampler.update(batch=batch)
            if len(seen) == steps:
                break
    return seen


def test_verl_loads_the_sampler_and_its_batches_are_the_draws(data_file):
    sampler, loader = build(data_file)
    assert isinstance(sampler, GainRLVerlSampler) and sampler.gain.seed == 5 and len(loader) == ROWS // BATCH
    seen = fit(loader, steps=9)  # 6 batches a pass: crosses a pass end
    gain = sampler.gain
    assert seen == [gain.draw(k) for k in range(9)]
    mus = check_released_updates(gain.history, seen, TARGETS, SCORES, batch=BATCH, n=3, adj_max=8, rows=ROWS)
    mu = mus[-1]
    assert gain.draw_mus == pytest.approx(mus[:9])  # no lag: draw k used mu after k updates
    assert len(gain.history) == 9 and mu > 0


def test_verl_checkpoint_of_the_dataloader_resumes_the_run(data_file):
    _, whole = build(data_file)
    reference = fit(whole, steps=10)
    _, first = build(data_file)
    head = fit(first, steps=4)
    saved = first.state_dict()  # what RayPPOTrainer._save_checkpoint writes to data.pt
    resumed_sampler, resumed = build(data_file)
    resumed.load_state_dict(saved)
    tail = fit(resumed, steps=6)
    assert head + tail == reference
    assert resumed_sampler.gain.state_dict() == whole.sampler.gain.state_dict()


def test_reward_tensor_is_the_accuracy_without_an_acc_field(data_file):
    sampler, loader = build(data_file, accuracy_key="correct")
    batch = DataProto.from_single_dict(next(iter(loader)))
    scores = torch.zeros(BATCH, 5)
    scores[:, -1] = torch.tensor([1.0, 0.0, 1.0, 1.0])  # verl puts the sequence reward on the last token
    batch.batch["token_level_scores"] = scores
    sampler.update(batch=batch)
    assert sampler.gain.history[0]["acc"] == pytest.approx(0.75)
