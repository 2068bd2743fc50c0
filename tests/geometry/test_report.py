"""Update geometry against direct computations, and the diff-report folder."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlsignals.geometry.metrics import bf16_changed, module_geometry, overlap, principal_angles_deg, principal_mask
from rlsignals.geometry.report import diff_report
from rlsignals.ops.svd import delta_svd


def test_bf16_mask_is_the_papers_tolerance_rule():
    gen = torch.Generator().manual_seed(0)
    w0 = (torch.randn(64, 64, generator=gen) * 0.02).bfloat16().float()
    w1 = w0.clone()
    w1[:20] += torch.randn(20, 64, generator=gen) * 1e-3  # some change, some below half an ULP
    w1 = w1.bfloat16().float()
    rule = (w1 - w0).abs() > 1e-3 * torch.maximum(w0.abs(), w1.abs())
    assert torch.equal(bf16_changed(w0, w1), rule)
    assert 0 < int(rule.sum()) < 20 * 64


def planted(m=40, n=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    s = 2.0 * 0.7 ** torch.arange(n, dtype=torch.float64)
    return u, s, v


def test_principal_mask_and_overlap_match_a_dense_svd():
    u, s, v = planted()
    w0 = ((u[:, :24] * s) @ v.T).float()
    top = delta_svd(w0, None, 4, tol=1e-7)
    mask = principal_mask(top, 0.25)
    dense = ((u[:, :4] * s[:4]) @ v[:, :4].T).abs()
    expected = dense >= dense.flatten().kthvalue(dense.numel() - round(0.25 * dense.numel()) + 1).values
    assert int(mask.sum()) == round(0.25 * mask.numel())
    assert (mask != expected).float().mean() < 0.01  # ties at the threshold only
    changed = torch.zeros_like(mask)
    changed[:5] = True
    assert overlap(mask, changed) == pytest.approx(float((mask & changed).sum() / changed.sum()))
    assert math.isnan(overlap(mask, torch.zeros_like(mask)))


@pytest.mark.parametrize("theta_deg", [1e-4, 0.05, 3.0])
def test_principal_angle_of_a_planted_rotation(theta_deg):
    u, s, v = planted()
    theta = math.radians(theta_deg)
    rotated = u.clone()
    rotated[:, 0] = math.cos(theta) * u[:, 0] + math.sin(theta) * u[:, 30]  # rotate u1 out of the top-4 span
    angles = principal_angles_deg(u[:, :4], rotated[:, :4])
    assert angles[-1].item() == pytest.approx(theta_deg, rel=1e-6)
    assert angles[:-1].abs().max() < 1e-9


def test_module_geometry_sees_a_small_rotation_of_the_top_subspace():
    u, s, v = planted()
    theta = math.radians(0.2)
    rotated = u.clone()
    rotated[:, 0] = math.cos(theta) * u[:, 0] + math.sin(theta) * u[:, 30]
    w0 = ((u[:, :24] * s) @ v.T).float()
    w1 = ((rotated[:, :24] * s) @ v.T).float()
    g = module_geometry(w0, w1, k=4)
    assert g["max_angle_u_deg"] == pytest.approx(0.2, rel=1e-2)
    assert g["max_angle_v_deg"] < 1e-2
    assert g["spectrum_drift"] < 1e-5 and g["rank1_energy"] > 0.99


def test_diff_report_folder(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    base = LlamaForCausalLM(config).to(torch.bfloat16)
    base.save_pretrained(tmp_path / "before")
    state = {n: w.clone() for n, w in base.state_dict().items()}
    for name in state:
        if name.endswith("q_proj.weight"):
            state[name][:4] += 0.05  # a sparse update of q_proj only
    base.load_state_dict(state)
    base.save_pretrained(tmp_path / "after")
    report = diff_report(tmp_path / "before", tmp_path / "after", tmp_path / "report", k=8, max_iters=12,
                         progress=False)
    assert json.loads((tmp_path / "report" / "report.json").read_text())["k"] == 8
    for png in ("unchanged_frac.png", "overlap_ratio.png", "max_angle_u_deg.png", "rank1_energy.png",
                "principal_angles.png"):
        assert (tmp_path / "report" / png).stat().st_size > 2000
        assert png in (tmp_path / "report" / "index.html").read_text()
    q = report["modules"]["model.layers.0.self_attn.q_proj.weight"]
    changed = 1 - q["unchanged_frac"]
    assert changed == pytest.approx(4 * 32 / (32 * 32), abs=2 / 1024)  # rows 0-3, minus any rounding back
    assert report["modules"]["model.layers.0.mlp.up_proj.weight"]["unchanged_frac"] == 1.0
    assert set(report["by_kind"]) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                      "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
