"""In-loop AlphaRL tracker: the rank-1 trajectory of training as it runs, and
on request a jump to the extrapolated weights.

Every ``every`` steps, for each tracked parameter (default: the 2-D weights of
the decoder layers), the top singular triplet of its update W_t - W_0 is taken
with ``delta_svd`` on the parameter's device, warm-started from the previous
tracked step, in batches of same-shaped matrices. The accuracy recorded with
it is the mean training reward since the previous tracked step.

``jump(target_accuracy)`` fits, per module, AlphaRL's 1-component PLS between
the aligned features sigma_t u_t and those accuracies (``rlsignals.rank1.alpharl``),
inverts it at the target and adds x* v_T^T to the current weights (the
released rule; ``update="replace"`` swaps the rank-1 part instead).

W_0 (the tracked parameters when the tracker is made: make it before training)
is kept on the parameters' device and saved once to ``base_file``; a tracker
made while ``base_file`` exists loads W_0 from it, so a resumed run tracks
against the same start. Works as a hook of ``RLTrainer`` (``hooks=[tracker]``) and, via
``Rank1TrackerCallback``, in any transformers Trainer (TRL included).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rlsignals.rank1.alpharl import UPDATES, alpharl_update
from rlsignals.io.checkpoints import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from rlsignals.ops.svd import delta_svd


class Rank1Tracker:
    def __init__(self, model: torch.nn.Module, every: int, base_file: str | Path, *, include: str = DEFAULT_INCLUDE,
                 exclude: str | None = DEFAULT_EXCLUDE, tol: float = 1e-4, backend: str = "auto",
                 jump_at: int | None = None, jump_target: float | None = None, jump_update: str = "released"):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if (jump_at is None) != (jump_target is None):
            raise ValueError("jump_at and jump_target go together")
        keep, drop = re.compile(include), re.compile(exclude) if exclude else None
        self.params = {n: p for n, p in model.named_parameters()
                       if p.dim() == 2 and keep.search(n) and not (drop and drop.search(n))}
        if not self.params:
            raise ValueError(f"no parameter matches include={include!r} / exclude={exclude!r}")
        self.every, self.tol, self.backend = every, tol, backend
        self.jump_at, self.jump_target, self.jump_update = jump_at, jump_target, jump_update
        self.base_file = Path(base_file)
        self.base = self._load_or_save_base()
        self.steps: list[int] = []
        self.accuracy: list[float] = []
        self.sigma: dict[str, list[float]] = defaultdict(list)
        self.frob: dict[str, list[float]] = defaultdict(list)
        self.err_bound: dict[str, list[float]] = defaultdict(list)
        self.u: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.v: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._basis: dict[str, torch.Tensor] = {}
        self._rewards: list[float] = []
        self.jumps: list[dict[str, Any]] = []

    def _load_or_save_base(self) -> dict[str, torch.Tensor]:
        if self.base_file.exists():
            loaded = load_file(str(self.base_file))
            missing = sorted(set(self.params) - set(loaded))
            if missing:
                raise ValueError(f"{self.base_file} lacks tracked parameters {missing[:3]}")
            return {n: loaded[n].to(p.device) for n, p in self.params.items()}
        base = {n: p.detach().clone() for n, p in self.params.items()}
        self.base_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.base_file.with_name(f".{self.base_file.name}.tmp")
        save_file({n: t.cpu().contiguous() for n, t in base.items()}, str(tmp))
        tmp.replace(self.base_file)
        return base

    def track(self, step: int, accuracy: float) -> None:
        """Record the rank-1 triplet of every tracked update at ``step``."""
        by_shape: dict[tuple, list[str]] = defaultdict(list)
        for name, p in self.params.items():
            by_shape[(tuple(p.shape), p.device)].append(name)
        for names in by_shape.values():
            after = torch.stack([self.params[n].detach() for n in names])
            before = torch.stack([self.base[n] for n in names])
            init = torch.stack([self._basis[n] for n in names]) if all(n in self._basis for n in names) else None
            res = delta_svd(after, before, k=1, tol=self.tol, init=init, backend=self.backend)
            for j, n in enumerate(names):
                self._basis[n] = res.basis[j]
                self.sigma[n].append(float(res.S[j, 0]))
                self.frob[n].append(float(res.frob[j]))
                self.err_bound[n].append(float(res.err_bound[j]))
                self.u[n].append(res.U[j, :, 0].cpu())
                self.v[n].append(res.V[j, :, 0].cpu())
        self.steps.append(step)
        self.accuracy.append(accuracy)

    @torch.no_grad()
    def jump(self, target_accuracy: float, update: str = "released") -> dict[str, Any]:
        """Move the tracked weights to the AlphaRL prediction at ``target_accuracy``."""
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if len(self.steps) < 2:
            raise ValueError(f"a jump needs at least 2 tracked steps, have {len(self.steps)}")
        report: dict[str, Any] = {"step": self.steps[-1], "target_accuracy": target_accuracy, "update": update,
                                  "r2": {}}
        for n, p in self.params.items():
            delta, fit, _ = alpharl_update(self.sigma[n], torch.stack(self.u[n]), torch.stack(self.v[n]),
                                           self.accuracy, target_accuracy, update)
            p.add_(delta.to(p.device, p.dtype))
            report["r2"][n] = fit.r2
        self.jumps.append(report)
        return report

    def __call__(self, trainer, record: dict) -> None:
        """RLTrainer hook: track every ``every`` steps; jump once at ``jump_at``."""
        self._rewards.append(record["reward"])
        if trainer.step % self.every == 0:
            self.track(trainer.step, sum(self._rewards) / len(self._rewards))
            self._rewards = []
            record["rank1_sigma_mean"] = sum(s[-1] for s in self.sigma.values()) / len(self.sigma)
        if self.jump_at is not None and trainer.step == self.jump_at:
            record["jump"] = self.jump(self.jump_target, self.jump_update)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "accuracy": self.accuracy, "rewards": self._rewards, "jumps": self.jumps,
                "sigma": dict(self.sigma), "frob": dict(self.frob), "err_bound": dict(self.err_bound),
                "u": {n: [t.tolist() for t in ts] for n, ts in self.u.items()},
                "v": {n: [t.tolist() for t in ts] for n, ts in self.v.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.accuracy = list(state["steps"]), list(state["accuracy"])
        self._rewards, self.jumps = list(state["rewards"]), list(state["jumps"])
        for key in ("sigma", "frob", "err_bound"):
            setattr(self, key, defaultdict(list, {n: list(v) for n, v in state[key].items()}))
        self.u = defaultdict(list, {n: [torch.tensor(x) for x in ts] for n, ts in state["u"].items()})
        self.v = defaultdict(list, {n: [torch.tensor(x) for x in ts] for n, ts in state["v"].items()})
        self._basis = {}
