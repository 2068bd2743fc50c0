"""Synthetic whole-model checkpoints for bench/checkpoint_rank1.py --whole-model, and their
fp64 answers.

A model is a stack of decoder layers with a real model's matrix shapes (bf16 weights of about
N(0, 0.02^2), HF names ``model.layers.<i>.<kind>.weight``): a base and C checkpoints,
W_c = bf16(W_0 + D_c), D_1 an update of the module's family (bench/delta_svd.py's families,
entries of about 4 bf16 ULPs of the weights; "subulp" far below one ULP, so the stored delta
is rounding noise with a flat top, sigma1/sigma2 = 1.00-1.05, as small k/v projections often
have), and D_c = D_{c-1} + 0.3 x another update of that family. Each module kind cycles
through a few families over the layers (FAMILIES), so every model holds spikes over a bulk
at sigma1/sigma2 = 3, 1.5 and 1.2, rank-3 spikes, friendly spectra and flat tops.

The answer for every module and checkpoint (``reference``): sigma_1, sigma_2, u_1, v_1 of
the stored delta in fp64, from the top two eigenpairs of its Gram matrix on the smaller side.
Everything is written under a folder and reused when its spec matches (it takes minutes for
the 7B-shaped stack).
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from delta_svd import update
from safetensors import safe_open
from safetensors.torch import save_file

MODELS = {
    "qwen2.5-0.5b": {"layers": 24, "shapes": {
        "self_attn.q_proj": (896, 896), "self_attn.k_proj": (128, 896), "self_attn.v_proj": (128, 896),
        "self_attn.o_proj": (896, 896), "mlp.gate_proj": (4864, 896), "mlp.up_proj": (4864, 896),
        "mlp.down_proj": (896, 4864)}},
    "qwen2.5-7b": {"layers": 28, "shapes": {
        "self_attn.q_proj": (3584, 3584), "self_attn.k_proj": (512, 3584), "self_attn.v_proj": (512, 3584),
        "self_attn.o_proj": (3584, 3584), "mlp.gate_proj": (18944, 3584), "mlp.up_proj": (18944, 3584),
        "mlp.down_proj": (3584, 18944)}},
}
FAMILIES = {
    "self_attn.q_proj": ["mp1-1.5", "mp3-1.2", "mp1-3", "geo30-1.2"],
    "self_attn.k_proj": ["subulp"],
    "self_attn.v_proj": ["subulp"],
    "self_attn.o_proj": ["mp1-1.2", "subulp", "mp3-1.5"],
    "mlp.gate_proj": ["mp1-3", "mp1-1.5", "concentrated"],
    "mlp.up_proj": ["mp1-1.5", "mp1-1.2", "geo30-1.2"],
    "mlp.down_proj": ["mp1-1.2", "mp3-1.5", "mp1-3"],
}
LATER = 0.3  # D_c = D_{c-1} + LATER x a fresh update of the family
SPEC = "spec.json"
REFERENCE = "reference.pt"


def family_of(name: str) -> str:
    kind = name.split(".layers.", 1)[1].split(".", 1)[1].rsplit(".weight", 1)[0]
    layer = int(name.split(".layers.", 1)[1].split(".", 1)[0])
    cycle = FAMILIES[kind]
    return cycle[layer % len(cycle)]


def module_names(model: str, layers: int) -> list[str]:
    return [f"model.layers.{i}.{kind}.weight" for i in range(layers) for kind in MODELS[model]["shapes"]]


def folders(root: Path, count: int) -> tuple[Path, list[Path]]:
    return root / "base", [root / f"checkpoint-{100 * c}" for c in range(1, count + 1)]


def write_model(root: Path, model: str, layers: int, count: int) -> tuple[Path, list[Path]]:
    """The base and ``count`` checkpoints under ``root`` (reused when its spec matches)."""
    spec = {"model": model, "layers": layers, "checkpoints": count, "families": FAMILIES, "later": LATER}
    base, ckpts = folders(root, count)
    if (root / SPEC).exists() and json.loads((root / SPEC).read_text()) == spec:
        return base, ckpts
    root.mkdir(parents=True, exist_ok=True)
    (root / SPEC).unlink(missing_ok=True)
    shapes = MODELS[model]["shapes"]
    names = module_names(model, layers)
    tensors: list[dict[str, torch.Tensor]] = [{} for _ in range(count + 1)]
    for name in names:
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        m, n = shapes[name.split(".layers.", 1)[1].split(".", 1)[1].rsplit(".weight", 1)[0]]
        w0 = (0.02 * torch.randn(m, n, generator=gen)).to(torch.bfloat16)
        tensors[0][name] = w0
        delta = update(family_of(name), m, n, gen)
        for c in range(1, count + 1):
            if c > 1:
                delta = delta + LATER * update(family_of(name), m, n, gen)
            tensors[c][name] = (w0.float() + delta).to(torch.bfloat16)
    for folder, state in zip([base, *ckpts], tensors):
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (root / REFERENCE).unlink(missing_ok=True)
    (root / SPEC).write_text(json.dumps(spec))
    return base, ckpts


def top_pairs(delta: torch.Tensor) -> dict:
    """sigma_1, sigma_2, u_1, v_1 of an fp64 [m, n] matrix from the top two eigenpairs of its
    Gram matrix on the smaller side (LAPACK's dsyevr on that subset)."""
    from scipy.linalg import eigh

    m, n = delta.shape
    gram = (delta.T @ delta if m >= n else delta @ delta.T).numpy()
    size = gram.shape[0]
    values, vectors = eigh(gram, subset_by_index=[max(size - 2, 0), size - 1], driver="evr")
    sigma1 = math.sqrt(max(values[-1], 0.0))
    sigma2 = math.sqrt(max(values[-2], 0.0)) if size > 1 else 0.0
    top = torch.from_numpy(np.ascontiguousarray(vectors[:, -1]))
    if m >= n:
        v = top
        u = delta @ v / sigma1
    else:
        u = top
        v = delta.T @ u / sigma1
    return {"sigma1": sigma1, "sigma2": sigma2, "u": u.float(), "v": v.float(),
            "top_share": sigma1 ** 2 / float(delta.square().sum())}


def reference(root: Path, base: Path, ckpts: list[Path]) -> list[dict[str, dict]]:
    """Per checkpoint: module -> top_pairs of its stored delta (cached in ``root``)."""
    path = root / REFERENCE
    if path.exists():
        return torch.load(path)
    out = []
    with safe_open(str(base / "model.safetensors"), framework="pt") as b:
        names = list(b.keys())
        for ckpt in ckpts:
            with safe_open(str(ckpt / "model.safetensors"), framework="pt") as a:
                out.append({name: top_pairs(a.get_tensor(name).double() - b.get_tensor(name).double())
                            for name in names})
    torch.save(out, path)
    return out


def sin_angle(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Sine of the angle between x and ref (sign-blind)."""
    x, ref = x.double() / x.double().norm(), ref.double() / ref.double().norm()
    return float(torch.sqrt((1 - (x @ ref).square()).clamp_min(0)))
