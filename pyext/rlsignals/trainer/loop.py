"""The RL loop: sample prompts, roll out, reward, advantages, one token-level
policy-gradient update, feedback to the sampler, (optionally) the AlphaRL
tracker; metrics per step and resumable HF checkpoints.

Fully on-policy by default (one update per batch of rollouts). Faults:
a reward function that raises on a sample gives that sample reward 0 and a
logged warning, and the step goes on; a non-finite loss stops the run with
``NonFiniteLossError`` before any weight changes, and the last checkpoint
written stays the last good one. ``train()`` resumes from the newest
checkpoint in ``output_dir`` (weights, optimizer, sampler, tracker, RNG and
step), so an interrupted run continues as if it never stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from rlsignals.io.atomic import atomic_folder
from rlsignals.signals.samplers import GainRLSampler, UniformSampler
from rlsignals.trainer.advantages import group_advantages
from rlsignals.trainer.correction import is_weights
from rlsignals.trainer.loss import completion_logprobs, policy_loss
from rlsignals.trainer.rollout import hf_rollouts

STATE_FILE = "trainer_state.json"


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or inf; the run stopped before updating the weights."""


@dataclasses.dataclass
class RLConfig:
    """Settings of an RL run (all have defaults)."""

    steps: int = 100
    prompts_per_step: int = 16
    generations: int = 8
    max_new_tokens: int = 12
    temperature: float = 1.0
    lr: float = 1e-5
    max_grad_norm: float = 1.0
    advantage: str = "grpo"          # grpo | dr_grpo | rloo
    clip_eps: float = 0.2
    kl_coef: float = 0.0             # KL to the starting model (k3), off by default
    is_mode: str = "truncate"        # none | truncate | mask (rollout/trainer mismatch correction)
    is_level: str = "token"          # token | sequence
    is_cap: float = 2.0
    sampler: str = "uniform"         # uniform | gain_rl (needs scores)
    sampler_options: dict = dataclasses.field(default_factory=dict)
    save_every: int = 0              # steps between checkpoints (0: only at the end)
    seed: int = 0


RewardFn = Callable[[str, dict], float]
StepHook = Callable[["RLTrainer", dict], None]
RolloutEngine = Callable[..., Any]  # (model, tokenizer, prompts, generations, *, max_new_tokens, temperature) -> Rollouts


class RLTrainer:
    """RL on ``rows`` (dataset rows) whose prompts ``render(row)`` turns into token ids,
    rewarded by ``reward_fn(completion_text, row)``. Rollouts come from HF generate, or
    from ``rollout`` (e.g. a ``VLLMRollout``)."""

    def __init__(self, model, tokenizer, rows: Sequence[dict], render: Callable[[dict], list[int]],
                 reward_fn: RewardFn, config: RLConfig, output_dir: str | Path, *,
                 scores: Sequence[float] | None = None, hooks: Sequence[StepHook] = (),
                 rollout: RolloutEngine = hf_rollouts):
        self.model, self.tokenizer, self.rows = model, tokenizer, list(rows)
        self.render, self.reward_fn, self.config = render, reward_fn, config
        self.output_dir = Path(output_dir)
        self.hooks = list(hooks)
        self.rollout = rollout
        if config.sampler == "gain_rl":
            if scores is None:
                raise ValueError("sampler='gain_rl' needs one angle score per row (scores=...)")
            self.sampler = GainRLSampler(scores, config.prompts_per_step, seed=config.seed, **config.sampler_options)
        elif config.sampler == "uniform":
            self.sampler = UniformSampler(len(self.rows), config.prompts_per_step, seed=config.seed)
        else:
            raise ValueError(f"sampler must be 'uniform' or 'gain_rl', got {config.sampler!r}")
        self.scores = None if scores is None else torch.as_tensor(scores, dtype=torch.float64)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
        self.reference = copy.deepcopy(model).eval().requires_grad_(False) if config.kl_coef > 0 else None
        self.step = 0
        self.history: list[dict[str, Any]] = []

    # ---- one step -------------------------------------------------------------------------------
    def _rewards(self, texts: list[str], indices: list[int]) -> tuple[torch.Tensor, int]:
        g = self.config.generations
        rewards, failures = [], 0
        for i, text in enumerate(texts):
            row = self.rows[indices[i // g]]
            try:
                rewards.append(float(self.reward_fn(text, row)))
            except Exception as exc:  # noqa: BLE001 - a faulty reward costs one sample, not the run
                failures += 1
                warnings.warn(f"step {self.step + 1}: reward function raised {exc.__class__.__name__}: {exc} "
                              f"(row {indices[i // g]}); that sample gets reward 0", RuntimeWarning, stacklevel=2)
                rewards.append(0.0)
        return torch.tensor(rewards).view(-1, g), failures

    def train_step(self) -> dict[str, Any]:
        cfg = self.config
        indices = self.sampler.draw()
        self.model.eval()
        rollouts = self.rollout(self.model, self.tokenizer, [self.render(self.rows[i]) for i in indices],
                                cfg.generations, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
        rewards, failures = self._rewards(rollouts.texts, indices)
        advantages = group_advantages(rewards, cfg.advantage).flatten()
        self.model.train()
        args = (rollouts.prompt_ids, rollouts.prompt_mask, rollouts.completion_ids, rollouts.completion_mask)
        logp = completion_logprobs(self.model, *args, temperature=cfg.temperature)
        mask = rollouts.completion_mask.to(logp.device)
        weights = is_weights(logp, rollouts.rollout_logp.to(logp.device), mask, mode=cfg.is_mode,
                             level=cfg.is_level, cap=cfg.is_cap)
        ref_logp = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logp = completion_logprobs(self.reference, *args, temperature=cfg.temperature)
        loss, metrics = policy_loss(logp, logp.detach(), advantages.to(logp.device), weights, mask,
                                    clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef, ref_logp=ref_logp)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"step {self.step + 1}: the loss is {float(loss.detach())}; stopped before updating the "
                                     f"weights. The last good checkpoint is {self.latest_checkpoint() or 'none'}.")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        accuracy = float(rewards.mean())
        self.sampler.update(accuracy, indices=indices)
        log_ratio = ((logp.detach() - rollouts.rollout_logp.to(logp.device)) * mask).sum() / mask.sum().clamp_min(1)
        record = {"step": self.step, "reward": accuracy, "prompts": indices, **metrics,
                  "grad_norm": float(grad_norm), "is_weight_mean": float((weights * mask).sum() / mask.sum()),
                  "rollout_log_ratio": float(log_ratio), "completion_tokens": float(mask.sum(1).float().mean()),
                  "reward_failures": failures}
        if self.scores is not None:
            record["angle_score"] = float(self.scores[indices].mean())
        if isinstance(self.sampler, GainRLSampler):
            record["mu"] = self.sampler.mu
        for hook in self.hooks:
            hook(self, record)
        self.history.append(record)
        return record

    # ---- the run --------------------------------------------------------------------------------
    def train(self, resume: bool = True, progress: bool = True) -> list[dict[str, Any]]:
        """Run to ``config.steps``, resuming from the newest checkpoint when there is one."""
        latest = self.latest_checkpoint() if resume else None
        if latest is not None:
            self.load_checkpoint(latest)
        else:
            torch.manual_seed(self.config.seed)
            random.seed(self.config.seed)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.output_dir / "metrics.jsonl"
        # the log restarts from the checkpoint's history: steps logged after it were lost with the interruption
        metrics.write_text("".join(json.dumps(record) + "\n" for record in self.history))
        with metrics.open("a") as log, \
                tqdm(total=self.config.steps, initial=self.step, desc="RL steps", unit="step",
                     disable=not progress) as bar:
            while self.step < self.config.steps:
                record = self.train_step()
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(reward=f"{record['reward']:.3f}")
                if (self.config.save_every and self.step % self.config.save_every == 0) or \
                        self.step == self.config.steps:
                    self.save_checkpoint()
        return self.history

    # ---- checkpoints ----------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        found = [p for p in self.output_dir.glob("checkpoint-*") if (p / STATE_FILE).exists()]
        return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None

    def state(self) -> dict[str, Any]:
        tracker = [h.state_dict() for h in self.hooks if hasattr(h, "state_dict")]
        return {"global_step": self.step, "history": self.history, "sampler": self.sampler.state_dict(),
                "hooks": tracker, "config": dataclasses.asdict(self.config)}

    def save_checkpoint(self) -> Path:
        """checkpoint-<step>/: HF model + tokenizer, optimizer, RNG, trainer_state.json; atomic."""
        final = self.output_dir / f"checkpoint-{self.step}"
        with atomic_folder(final) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
            (tmp / STATE_FILE).write_text(json.dumps(self.state(), indent=1) + "\n")
        return final

    def load_checkpoint(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        state = json.loads((path / STATE_FILE).read_text())
        weights = {}
        for file in sorted(path.glob("*.safetensors")):
            weights |= load_file(str(file))
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if "lm_head" not in m]:  # lm_head may be tied to the embeddings
            raise ValueError(f"{path}: weights do not match the model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        rng = torch.load(path / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.sampler.load_state_dict(state["sampler"])
        for hook, hook_state in zip([h for h in self.hooks if hasattr(h, "load_state_dict")], state["hooks"]):
            hook.load_state_dict(hook_state)
        self.step = int(state["global_step"])
        self.history = state["history"]

