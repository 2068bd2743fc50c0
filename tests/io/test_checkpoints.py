"""Checkpoint reading (single and sharded), selection, grouping, writing, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlsignals.io.checkpoints import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    layout_batches,
    module_kind,
    select_matrices,
    shape_batches,
    write_checkpoint,
)

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def save_tiny(path, arch="llama", shard=None, seed=0):
    torch.manual_seed(seed)
    model = (LlamaForCausalLM(LlamaConfig(**SMALL)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**SMALL)))
    model.to(torch.bfloat16).save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return model


@pytest.mark.parametrize("shard", [None, "8KB"])
def test_reads_single_and_sharded(tmp_path, shard):
    model = save_tiny(tmp_path / "m", shard=shard)
    assert (tmp_path / "m" / "model.safetensors.index.json").exists() == bool(shard)
    ckpt = Checkpoint(tmp_path / "m")
    state = model.state_dict()
    names = select_matrices(ckpt)
    assert len(names) == 3 * 7  # q k v o gate up down per layer
    assert all("norm" not in n and "embed" not in n for n in names)
    for name in names:
        assert torch.equal(ckpt.get(name), state[name])
        assert ckpt.shape(name) == tuple(state[name].shape)
    assert module_kind("model.layers.2.self_attn.q_proj.weight") == "self_attn.q_proj"


def test_shape_batches_batch_layer_stacks(tmp_path):
    save_tiny(tmp_path / "m")
    ckpt = Checkpoint(tmp_path / "m")
    shapes = {name: ckpt.shape(name) for name in select_matrices(ckpt)}
    batches = shape_batches(shapes)
    for batch in batches:
        assert len({ckpt.shape(n) for n in batch}) == 1
    assert sorted(n for b in batches for n in b) == sorted(select_matrices(ckpt))
    limit = 32 * 48 * 4 * 2  # two fp32 up_proj matrices
    small = shape_batches(shapes, max_batch_bytes=limit)
    for batch in small:
        m, n = ckpt.shape(batch[0])
        assert len(batch) * 4 * m * n <= limit
    assert max(len(b) for b in small if "up_proj" in b[0]) == 2


@pytest.mark.parametrize("shard", [None, "8KB"])
def test_layout_batches_are_views_of_the_file(tmp_path, shard):
    """One batch per module kind in a single file (layers in file order, equally spaced), and
    ``stack`` returns it as a view of the file's memory map: the same values as the tensors,
    members one layer's bytes apart. Sharded files cut the runs; every batch still stacks
    to the right values, and the modules are all there once."""
    save_tiny(tmp_path / "m", shard=shard)
    ckpt = Checkpoint(tmp_path / "m")
    names = select_matrices(ckpt)
    batches = layout_batches(ckpt, names)
    assert sorted(n for b in batches for n in b) == sorted(names)
    for batch in batches:
        assert len({module_kind(n) for n in batch}) == 1 and len({ckpt.location(n)[0] for n in batch}) == 1
        offsets = [ckpt.location(n)[1] for n in batch]
        assert offsets == sorted(offsets)
        stacked = ckpt.stack(batch)
        assert torch.equal(stacked, torch.stack([ckpt.get(n) for n in batch]))
        if len(batch) > 1:  # a view: members at the file's spacing, not packed one after another
            step = (offsets[1] - offsets[0]) // 2
            assert stacked.stride(0) == step and step > stacked[0].numel()
            assert stacked.untyped_storage().nbytes() == ckpt.location(batch[0])[0].stat().st_size
    if shard is None:
        assert len(batches) == 7  # q k v o gate up down, each over the 3 layers
        limit = 32 * 48 * 4 * 2  # two fp32 up_proj matrices
        small = layout_batches(ckpt, names, max_batch_bytes=limit)
        assert max(len(b) for b in small if "up_proj" in b[0]) == 2
        assert sorted(n for b in small for n in b) == sorted(names)


def test_stack_copies_when_the_layout_does_not_allow_a_view(tmp_path):
    save_tiny(tmp_path / "m")
    ckpt = Checkpoint(tmp_path / "m")
    names = ["model.layers.2.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight",
             "model.layers.1.mlp.up_proj.weight"]  # not equally spaced in this order
    stacked = ckpt.stack(names)
    assert stacked.is_contiguous() and torch.equal(stacked, torch.stack([ckpt.get(n) for n in names]))
    ckpt.will_need()  # a hint to the kernel, nothing to see but that it does not fail


def test_write_checkpoint_round_trip(tmp_path):
    save_tiny(tmp_path / "m", shard="8KB")
    (tmp_path / "m" / "tokenizer_config.json").write_text("{}")
    ckpt = Checkpoint(tmp_path / "m")
    name = "model.layers.1.mlp.up_proj.weight"
    new = torch.ones(ckpt.shape(name))
    write_checkpoint(ckpt, tmp_path / "out", {name: new})
    assert (tmp_path / "out" / "tokenizer_config.json").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(loaded.state_dict()[name].float(), new)
    other = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(loaded.state_dict()[other], ckpt.get(other).to(loaded.dtype))
    with pytest.raises(CheckpointError, match="has shape"):
        write_checkpoint(ckpt, tmp_path / "bad", {name: torch.ones(2, 2)})
    assert not (tmp_path / "bad").exists()


def test_bad_checkpoints_name_file_and_tensor(tmp_path):
    save_tiny(tmp_path / "m")
    save_tiny(tmp_path / "q", arch="qwen2")
    base = Checkpoint(tmp_path / "m")
    with pytest.raises(CheckpointError, match="model_type 'qwen2' differs"):
        check_compatible(base, Checkpoint(tmp_path / "q"), select_matrices(base))
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        Checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="tensor 'missing.weight' not found"):
        base.get("missing.weight")

    # a truncated file
    (tmp_path / "t").mkdir()
    data = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "t" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"t/model.safetensors: cannot read safetensors file"):
        Checkpoint(tmp_path / "t")

    # a shard listed in the index but missing
    save_tiny(tmp_path / "s", shard="8KB")
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / "s" / first).unlink()
    with pytest.raises(CheckpointError, match=f"shard {first} listed in model.safetensors.index.json is missing"):
        Checkpoint(tmp_path / "s")

    # a tensor missing or mis-shaped in the other checkpoint
    save_tiny(tmp_path / "w")
    sd = {k: v for k, v in LlamaForCausalLM(LlamaConfig(**{**SMALL, "intermediate_size": 40})).state_dict().items()}
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"mlp.down_proj.weight' has shape \(32, 40\)"):
        check_compatible(base, Checkpoint(tmp_path / "w"), select_matrices(base))
