"""``rlsignals diff-report``: the geometry of one update, module by module.

Reads two checkpoints (streaming), computes ``geometry.module_geometry`` for
every tracked module, and writes into one folder (built beside it, renamed
when whole):

    report.json      per module and per layer, and means per module kind
    *.png            heatmaps (layer x module kind) of bf16 sparsity, overlap of
                     the update with the principal weights relative to random,
                     largest principal angle and rank-1 energy; principal-angle
                     curves per module kind
    index.html       one page that shows them with a summary table
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rlsignals.geometry.metrics import module_geometry
from rlsignals.io.atomic import atomic_folder
from rlsignals.io.checkpoints import (
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    Checkpoint,
    check_compatible,
    layer_index,
    module_kind,
    select_matrices,
)
from rlsignals.io.errors import UserError

HEATMAPS = {
    "unchanged_frac": "bf16 entries unchanged (sparsity)",
    "overlap_ratio": "overlap with principal weights / random",
    "max_angle_u_deg": "largest principal angle, left subspace (deg)",
    "rank1_energy": "rank-1 energy sigma1^2 / ||dW||_F^2",
}


def _kind_means(modules: dict[str, dict]) -> dict[str, dict[str, float]]:
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for name, record in modules.items():
        by_kind[module_kind(name)].append(record)
    keys = ("unchanged_frac", "overlap", "overlap_ratio", "max_angle_u_deg", "max_angle_v_deg", "spectrum_drift",
            "rank1_energy")
    def mean(values: list[float]) -> float:  # NaN (e.g. overlap of an unchanged matrix) is left out
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    return {kind: {key: mean([r[key] for r in records]) for key in keys} for kind, records in sorted(by_kind.items())}


def _plots(modules: dict[str, dict], folder: Path) -> list[tuple[str, str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({module_kind(n) for n in modules})
    layers = sorted({layer_index(n) for n in modules if layer_index(n) is not None})
    figures = []
    for key, title in HEATMAPS.items():
        grid = np.full((len(layers), len(kinds)), np.nan)
        for name, record in modules.items():
            if layer_index(name) is not None:
                grid[layers.index(layer_index(name)), kinds.index(module_kind(name))] = record[key]
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(kinds), 1.5 + 0.25 * len(layers)))
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), layers, fontsize=7)
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        fig.savefig(folder / f"{key}.png", dpi=110)
        plt.close(fig)
        figures.append((f"{key}.png", title))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for side, ax in zip(("u", "v"), axes):
        for kind in kinds:
            curves = np.array([r[f"angles_{side}_deg"] for n, r in modules.items() if module_kind(n) == kind])
            ax.plot(np.arange(1, curves.shape[1] + 1), curves.mean(0), label=kind)
        ax.set_yscale("log")
        ax.set_xlabel("principal angle index i")
        ax.set_title(f"{'left' if side == 'u' else 'right'} singular subspace", fontsize=9)
    axes[0].set_ylabel("angle (deg), mean over layers")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "principal_angles.png", dpi=110)
    plt.close(fig)
    figures.append(("principal_angles.png", "principal angles between top-k singular subspaces of W0 and W1"))
    return figures


def _html(report: dict, figures: list[tuple[str, str]]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(kind)}</td>" + "".join(f"<td>{v:.4g}</td>" for v in means.values()) + "</tr>"
        for kind, means in report["by_kind"].items())
    header = "".join(f"<th>{html.escape(k)}</th>" for k in next(iter(report["by_kind"].values())))
    images = "".join(f'<figure><img src="{src}" alt="{html.escape(title)}"><figcaption>{html.escape(title)}'
                     f"</figcaption></figure>" for src, title in figures)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>rlsignals diff-report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:right}figure{display:inline-block;margin:1em}</style></head><body>"
            f"<h1>Update geometry</h1><p>before: {html.escape(report['before'])}<br>after: "
            f"{html.escape(report['after'])}<br>k = {report['k']}, alpha = {report['alpha']}; overall bf16 "
            f"sparsity {report['overall_unchanged_frac']:.4f}; numbers in <a href='report.json'>report.json</a>"
            f"</p><h2>Means per module kind</h2><table><tr><th>module</th>{header}</tr>{rows}</table>"
            f"<h2>Plots</h2>{images}</body></html>\n")


def diff_report(before: str | Path, after: str | Path, out: str | Path, *, k: int = 64, alpha: float = 0.5,
                include: str = DEFAULT_INCLUDE, exclude: str | None = DEFAULT_EXCLUDE, device: str = "cpu",
                max_iters: int | None = None, backend: str = "auto", progress: bool = True) -> dict:
    """Write the report folder ``out`` and return the report dict. ``k`` must not
    exceed the smaller dimension of any tracked matrix; 0 < ``alpha`` < 1. The folder
    is built beside ``out`` and renamed when whole; an existing ``out`` is replaced
    only when empty or written by an earlier diff-report (``atomic_folder``)."""
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be in (0, 1) (the fraction of weights counted as principal), got {alpha}")
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    base, other = Checkpoint(before), Checkpoint(after)
    names = select_matrices(base, include, exclude)
    if not names:
        raise UserError(f"{before}: no tensor matches include={include!r} / exclude={exclude!r}")
    check_compatible(base, other, names)
    smallest = min(names, key=lambda n: min(base.shape(n)))
    if k > min(base.shape(smallest)):
        raise UserError(f"k={k} exceeds the smaller dimension of {smallest} {base.shape(smallest)}; "
                        f"choose k <= {min(base.shape(smallest))}")
    with atomic_folder(out, command="diff-report") as tmp:
        modules = {}
        for name in tqdm(names, desc="update geometry", unit="module", disable=not progress):
            record = module_geometry(base.get(name).float().to(device), other.get(name).float().to(device), k=k,
                                     alpha=alpha, max_iters=max_iters, backend=backend)
            record["overlap_ratio"] = record["overlap"] / alpha
            record["layer"], record["kind"] = layer_index(name), module_kind(name)
            modules[name] = record
        sizes = {n: math.prod(r["shape"]) for n, r in modules.items()}
        report = {"before": str(before), "after": str(after), "k": k, "alpha": alpha,
                  "overall_unchanged_frac": sum(r["unchanged_frac"] * sizes[n] for n, r in modules.items())
                  / sum(sizes.values()),
                  "by_kind": _kind_means(modules), "modules": modules}
        figures = _plots(modules, tmp)
        (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / "index.html").write_text(_html(report, figures))
    return report
