"""Modules whose update has no separated top (sigma_1 = sigma_2): the store flags their
vectors as undetermined, the summary counts them, and the extrapolators say what they did
with them (alpharl / linear_step keep them at the latest fitted weights by default; two_point
does not read the vectors)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from rlsignals.io.checkpoints import Checkpoint
from rlsignals.rank1.extrapolate import extrapolate, summary_lines
from rlsignals.rank1.track import track_rank1

SHAPES = {"mlp.up_proj": (64, 48), "self_attn.k_proj": (16, 48)}
LAYERS = 3
STEPS = [10, 20, 30, 40]
FLAT = "model.layers.0.self_attn.k_proj.weight"  # its update: two equal singular values


def unit(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, generator=gen, dtype=torch.float64), dim=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """fp32 base + 4 checkpoints: W_t = W_0 + 0.004 t (a b^T) (+ a' b'^T, orthogonal, for FLAT)."""
    root = tmp_path_factory.mktemp("flat")
    gen = torch.Generator().manual_seed(0)
    base = {f"model.layers.{i}.{kind}.weight": 0.02 * torch.randn(shape, generator=gen, dtype=torch.float64)
            for i in range(LAYERS) for kind, shape in SHAPES.items()}
    updates = {}
    for name, w in base.items():
        (m, n), pair = w.shape, torch.outer(unit(w.shape[0], gen), unit(w.shape[1], gen))
        if name == FLAT:
            q_left = torch.linalg.qr(torch.randn(m, 2, generator=gen, dtype=torch.float64)).Q
            q_right = torch.linalg.qr(torch.randn(n, 2, generator=gen, dtype=torch.float64)).Q
            pair = q_left @ q_right.T  # sigma_1 = sigma_2 = 1
        updates[name] = pair
    paths = []
    for step in [0, *STEPS]:
        folder = root / ("base" if step == 0 else f"checkpoint-{step}")
        folder.mkdir()
        save_file({name: (w + 0.004 * step * updates[name]).float().contiguous() for name, w in base.items()},
                  str(folder / "model.safetensors"))
        paths.append(folder)
    traj = track_rank1(paths[0], paths[1:], root / "traj", progress=False)
    return root, paths, traj


def accuracy() -> dict[int, float]:
    return {s: 0.1 + 0.01 * s for s in STEPS}


def test_the_store_flags_the_flat_module_and_the_summary_counts_it(run):
    _, _, traj = run
    assert traj.undetermined() == [FLAT]
    flags = traj.scalar("vectors_undetermined", FLAT)
    assert flags.all() and (traj.scalar("vector_estimate", FLAT) > 1e-4).all()
    for module in traj.modules:
        sigma = traj.scalar("sigma", module)
        assert torch.allclose(sigma, 0.004 * torch.tensor(STEPS, dtype=torch.float64), rtol=1e-4)
        if module != FLAT:
            assert (traj.scalar("vector_estimate", module) <= 1e-4).all()
    lines = traj.summary_lines()
    assert lines[2].startswith(f"1 of {len(traj.modules)} modules: top not separated, vectors undetermined")


def test_alpharl_keeps_flagged_modules_and_says_so(run, tmp_path):
    root, paths, traj = run
    out = extrapolate(paths[0], traj, tmp_path / "keep", accuracy=accuracy(), fit_steps=STEPS[:3],
                      target_accuracy=0.1 + 0.01 * 40, update="replace")
    report = json.loads((out / "extrapolation.json").read_text())
    assert report["vectors_undetermined"] == {"policy": "keep", "count": 1, "of": len(traj.modules),
                                              "modules": [FLAT]}
    assert "kept" in report["modules"][FLAT]
    written, latest, truth = Checkpoint(out), Checkpoint(paths[3]), Checkpoint(paths[4])
    assert torch.equal(written.get(FLAT), latest.get(FLAT))
    for module in traj.modules:
        if module != FLAT:  # the others move to step 40
            target = truth.get(module) - Checkpoint(paths[0]).get(module)
            assert (written.get(module) - truth.get(module)).norm() / target.norm() < 1e-2
    assert summary_lines(out)[1].startswith(f"1 of {len(traj.modules)} modules kept at the latest fitted")


def test_alpharl_extrapolates_them_when_told_to_and_two_point_does_not_read_them(run, tmp_path):
    _, paths, traj = run
    out = extrapolate(paths[0], traj, tmp_path / "use", accuracy=accuracy(), fit_steps=STEPS[:3],
                      target_accuracy=0.1 + 0.01 * 40, update="replace", undetermined="use")
    report = json.loads((out / "extrapolation.json").read_text())
    assert report["vectors_undetermined"]["policy"] == "use" and report["modules"][FLAT]["vectors_undetermined"]
    assert not torch.equal(Checkpoint(out).get(FLAT), Checkpoint(paths[3]).get(FLAT))
    assert "extrapolated although" in summary_lines(out)[1]
    two = extrapolate(paths[0], traj, tmp_path / "two", method="two_point", fit_steps=STEPS[:3], target_step=40)
    report = json.loads((two / "extrapolation.json").read_text())
    assert report["vectors_undetermined"]["count"] == 1 and report["vectors_undetermined"]["policy"].startswith("not")
    target = Checkpoint(paths[4]).get(FLAT)
    assert torch.allclose(Checkpoint(two).get(FLAT), target, atol=1e-6)
    with pytest.raises(ValueError, match="undetermined must be one of"):
        extrapolate(paths[0], traj, tmp_path / "bad", accuracy=accuracy(), target_accuracy=0.5, undetermined="drop")
