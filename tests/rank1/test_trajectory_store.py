"""The trajectory store on its own: what a record holds, the warm-start basis kept for
the latest record only, truncation for resume, and one-line errors for damaged or old
stores."""

from __future__ import annotations

import json

import pytest
import torch

from rlsignals.io.errors import UserError
from rlsignals.rank1.trajectory import INDEX, Trajectory

SHAPES = {"a.weight": (5, 3), "b.weight": (4, 6)}
K = 2


def fake_results(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, (name, (m, n)) in enumerate(SHAPES.items()):
        bound = torch.rand((), generator=gen) * 2e-4
        vector = torch.rand((), generator=gen) * 2e-4
        out[name] = {"S": torch.rand(K, generator=gen).sort(descending=True).values,
                     "U": torch.randn(m, K, generator=gen), "V": torch.randn(n, K, generator=gen),
                     "frob": torch.rand((), generator=gen),
                     "err_bound": bound, "err_estimate": bound / 10, "certified": bound <= 1e-4,
                     "iters": torch.tensor(3 + i + seed), "vector_estimate": vector,
                     "vectors_undetermined": vector > 1e-4}
    return out


def fake_basis(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + seed)
    return {name: torch.randn(n, 4, generator=gen) for name, (_, n) in SHAPES.items()}


def test_records_round_trip_and_the_basis_is_kept_for_the_latest_only(tmp_path):
    root = tmp_path / "store"
    traj = Trajectory.open_or_create(root, "base", SHAPES, k=K, tol=1e-4)
    assert not root.exists()  # made by the first record, so a run that fails before one leaves nothing
    written = [fake_results(s) for s in range(3)]
    for s, results in enumerate(written):
        traj.add(f"ckpt-{s}", 10 * s, results, fake_basis(s), accuracy=0.1 * s)
    again = Trajectory.open(root)
    again.verify()
    assert again.steps == [0, 10, 20] and again.accuracy == pytest.approx([0.0, 0.1, 0.2])
    for name in SHAPES:
        s, u, v = again.triplets(name)
        assert torch.equal(s, torch.stack([r[name]["S"] for r in written]))
        assert torch.equal(u, torch.stack([r[name]["U"] for r in written]))
        assert torch.equal(v[:, :, 0], again.vectors(name)[1])
        for key in ("frob", "err_bound", "err_estimate", "iters", "vector_estimate"):
            assert torch.equal(again.scalar(key, name), torch.stack([r[name][key] for r in written]).double())
        for key in ("certified", "vectors_undetermined"):
            assert torch.equal(again.scalar(key, name), torch.stack([r[name][key] for r in written]))
    flags = torch.stack([torch.stack([r[n]["certified"] for r in written]).all() for n in SHAPES])
    assert again.certified_count() == (int(flags.sum()), 2)
    undetermined = [n for n in SHAPES if any(bool(r[n]["vectors_undetermined"]) for r in written)]
    assert again.undetermined() == undetermined
    summary = json.loads((root / INDEX).read_text())["modules"]
    assert [summary[n]["certified"] for n in SHAPES] == flags.tolist()
    assert [n for n in SHAPES if summary[n]["vectors_undetermined"]] == undetermined
    worst = max(float(r["a.weight"]["err_bound"]) for r in written)
    assert summary["a.weight"]["max_err_bound"] == pytest.approx(worst)
    worst = max(float(r["b.weight"]["vector_estimate"]) for r in written)
    assert summary["b.weight"]["max_vector_estimate"] == pytest.approx(worst)
    assert sorted(p.name for p in root.glob("basis-*")) == ["basis-0002.safetensors"]
    for name, block in again.latest_basis().items():
        assert torch.equal(block, fake_basis(2)[name])


def test_truncation_keeps_a_basis_only_for_its_own_record(tmp_path):
    traj = Trajectory.open_or_create(tmp_path, "base", SHAPES, k=K, tol=1e-4)
    for s in range(3):
        traj.add(f"ckpt-{s}", s, fake_results(s), fake_basis(s))
    traj.truncate(3)
    assert len(traj.latest_basis()) == 2
    traj.truncate(2)  # the basis belongs to record 2, which is gone
    assert Trajectory.open(tmp_path).steps == [0, 1] and Trajectory.open(tmp_path).latest_basis() == {}
    traj.add("ckpt-2", 2, fake_results(7), fake_basis(7))  # redone with other results
    assert torch.equal(Trajectory.open(tmp_path).triplets("a.weight")[0][2], fake_results(7)["a.weight"]["S"])
    with pytest.raises(ValueError, match=r"count must be in \[0, 3\], got 4"):
        traj.truncate(4)


def test_summary_lines_count_certified_and_undetermined_modules(tmp_path):
    traj = Trajectory.open_or_create(tmp_path, "base", SHAPES, k=K, tol=1e-4)
    results = fake_results(0)
    results["a.weight"].update(vector_estimate=torch.tensor(0.03), vectors_undetermined=torch.tensor(True))
    results["b.weight"].update(vector_estimate=torch.tensor(2e-5), vectors_undetermined=torch.tensor(False),
                               err_bound=torch.tensor(5e-5), certified=torch.tensor(True))
    traj.add("c", 1, results)
    lines = Trajectory.open(tmp_path).summary_lines()
    assert lines[0] == f"trajectory of 2 modules over 1 checkpoints -> {tmp_path}"
    assert lines[1].startswith(f"{int(results['a.weight']['certified']) + 1} of 2 modules certified")
    assert lines[2] == ("1 of 2 modules: top not separated, vectors undetermined (estimated sin(u_1) up to 0.03; "
                        "sigma_1 to tol all the same)")


def test_reopening_with_other_settings_is_refused(tmp_path):
    Trajectory.open_or_create(tmp_path, "base", SHAPES, k=K, tol=1e-4).add("c", 1, fake_results(0))
    assert Trajectory.open_or_create(tmp_path, "base", SHAPES, k=K, tol=1e-4).steps == [1]
    with pytest.raises(UserError, match="another base or module set"):
        Trajectory.open_or_create(tmp_path, "other", SHAPES, k=K, tol=1e-4)
    with pytest.raises(UserError, match="made with k=2, tol=0.0001, not k=1, tol=0.0001"):
        Trajectory.open_or_create(tmp_path, "base", SHAPES, k=1, tol=1e-4)


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / INDEX).write_text('{"format": 2, "base'), "not a trajectory index"),
    (lambda root: (root / INDEX).write_text(json.dumps({"version": 1, "base": "b", "shapes": {}, "checkpoints": []})),
     "trajectory format 1, this rlsignals reads format 3"),
    (lambda root: (root / INDEX).write_text(json.dumps({**json.loads((root / INDEX).read_text()), "format": 2})),
     r"trajectory format 2, this rlsignals reads format 3 \(rerun `rlsignals rank1` into a new --out\)"),
    (lambda root: (root / INDEX).unlink(), "no trajectory.json; not a trajectory store"),
])
def test_a_damaged_or_old_index_is_one_line(tmp_path, damage, message):
    Trajectory.open_or_create(tmp_path, "base", SHAPES, k=K, tol=1e-4).add("c", 1, fake_results(0))
    damage(tmp_path)
    with pytest.raises(UserError, match=message) as info:
        Trajectory.open(tmp_path)
    assert "\n" not in str(info.value)


def test_a_truncated_record_is_found_by_verify(tmp_path):
    traj = Trajectory.open_or_create(tmp_path, "base", SHAPES, k=K, tol=1e-4)
    traj.add("c", 1, fake_results(0), fake_basis(0))
    record = tmp_path / traj.records[0].file
    record.write_bytes(record.read_bytes()[:40])
    with pytest.raises(UserError, match=f"{record.name}: cannot read the trajectory file") as info:
        Trajectory.open(tmp_path).verify()
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="results lack modules"):
        traj.add("d", 2, {"a.weight": fake_results(1)["a.weight"]})
