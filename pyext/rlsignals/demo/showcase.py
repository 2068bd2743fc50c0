"""``rlsignals showcase``: a short showcase of the angle ops. It uses synthetic
hidden states, says so, and measures everything it prints on this machine.

1. A pack of prompts sharing a few-shot prefix: angle signal per prompt
   (intra, inter, score = intra + inter) and the order a GAIN-RL sampler would use.
2. Every live backend against the torch reference on that pack.
3. Speed on one 4096-token, d = 2048 bf16 sequence: the released scorer's full
   m x m cosine matrix against the fused kernel.
4. The block-mean cosine matrix of one prompt, as a heatmap (PNG + JSON).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import rlsignals
from rlsignals.ops.reference import angle_stats_reference


def synthetic_pack(num_prompts: int = 12, prefix_len: int = 96, d: int = 256, seed: int = 0):
    """Prompts = one shared prefix + a question whose tokens share a topic
    direction with a prompt-specific strength (so intra varies by prompt)."""
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randn(prefix_len, d, generator=gen) + 2.0 * torch.randn(1, d, generator=gen)
    rows, cu, prefix_lens = [], [0], []
    for i in range(num_prompts):
        q_len = int(torch.randint(16, 160, (1,), generator=gen))
        strength = 0.3 + 2.5 * i / max(1, num_prompts - 1)
        topic = torch.randn(1, d, generator=gen) + 0.5 * prefix.mean(0, keepdim=True)
        rows += [prefix, torch.randn(q_len, d, generator=gen) + strength * topic]
        cu.append(cu[-1] + prefix_len + q_len)
        prefix_lens.append(prefix_len)
    return torch.cat(rows).bfloat16(), torch.tensor(cu), torch.tensor(prefix_lens)


def _time(fn, reps: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def _full_matrix(hidden: torch.Tensor, prefix_len: int) -> tuple[float, float]:
    u = F.normalize(hidden.float(), dim=1)
    cos = u @ u.T
    return cos[prefix_len:, prefix_len:].mean().item(), cos[prefix_len:, :prefix_len].mean().item()


def _heatmap(cosine: torch.Tensor, path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 4.2))
    image = ax.imshow(cosine.numpy(), cmap="viridis")
    ax.set_title(title, fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("key block")
    ax.set_ylabel("query block")
    fig.colorbar(image, ax=ax, label="mean cosine")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run_showcase(out_dir: str | Path) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print("rlsignals showcase of the angle ops on synthetic hidden states "
          "(`rlsignals demo` runs the end-to-end RL demo).\n")

    hidden, cu, prefix = synthetic_pack()
    stats = rlsignals.angle_stats(hidden, cu, prefix)
    score = stats.intra + stats.inter
    order = torch.argsort(score, descending=True)
    print("1. Angle signal per prompt (shared prefix of 96 tokens; score = intra + inter):")
    print(f"   {'rank':>4} {'prompt':>6} {'q tokens':>8} {'intra':>8} {'inter':>8} {'score':>8}")
    for rank, b in enumerate(order.tolist()):
        q_len = int(cu[b + 1] - cu[b] - prefix[b])
        print(f"   {rank:>4} {b:>6} {q_len:>8} {stats.intra[b]:>8.4f} {stats.inter[b]:>8.4f} {score[b]:>8.4f}")

    ref = angle_stats_reference(hidden, cu, prefix)
    print("\n2. Backends against the torch reference (max |difference|, intra and inter):")
    agreement = {}
    for name, (live, reason) in rlsignals.available_backends().items():
        if not live or (name in ("cuda", "triton") and not torch.cuda.is_available()):
            print(f"   {name:<7} not run here: {reason}")
            continue
        device = "cuda" if name in ("cuda", "triton") else "cpu"
        got = rlsignals.angle_stats(hidden.to(device), cu.to(device), prefix.to(device), backend=name)
        diff = max(float((got.intra.cpu() - ref.intra).abs().max()), float((got.inter.cpu() - ref.inter).abs().max()))
        agreement[name] = diff
        print(f"   {name:<7} {diff:.2e}")

    big = torch.randn(4096, 2048, generator=torch.Generator().manual_seed(1)).bfloat16()
    big_cu, big_prefix = torch.tensor([0, 4096]), torch.tensor([1024])
    full_ms = _time(lambda: _full_matrix(big, 1024), reps=1)
    fused_ms = _time(lambda: rlsignals.angle_stats(big, big_cu, big_prefix), reps=10)
    print(f"\n3. One 4096-token sequence, d = 2048, bf16, on {torch.get_num_threads()} CPU threads:\n"
          f"   full 4096 x 4096 cosine matrix (released scorer's method): {full_ms:9.2f} ms\n"
          f"   rlsignals.angle_stats (auto backend):                      {fused_ms:9.2f} ms"
          f"   ({full_ms / fused_ms:.0f}x faster)")

    first = int(order[0])
    one = hidden[cu[first]:cu[first + 1]]
    blocks = rlsignals.block_cosine(one, torch.tensor([0, one.shape[0]]), 8)
    png = out / "block_cosine.png"
    plotted = _heatmap(blocks.cosine[0], png, f"prompt {first}: 8-token block-mean cosines\n"
                                              f"(prefix = first {int(prefix[first]) // 8} blocks)")
    summary = {
        "prompts": [{"prompt": b, "intra": float(stats.intra[b]), "inter": float(stats.inter[b]),
                     "score": float(score[b]), "rank": r} for r, b in enumerate(order.tolist())],
        "backend_max_abs_diff_vs_reference": agreement,
        "speed_ms": {"full_matrix": full_ms, "angle_stats": fused_ms, "threads": torch.get_num_threads()},
        "block_cosine": {"prompt": first, "block_size": 8, "matrix": blocks.cosine[0].tolist()},
    }
    (out / "showcase.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n4. Block-mean cosine heatmap of prompt {first}: "
          f"{png if plotted else '(matplotlib not installed: no PNG)'}; numbers in {out / 'showcase.json'}")
    return summary
