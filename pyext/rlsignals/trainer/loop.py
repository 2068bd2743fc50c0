"""The RL loop: sample prompts, roll out, reward, advantages, token-level
policy-gradient updates, feedback to the sampler, (optionally) the AlphaRL
tracker; metrics per step and resumable HF checkpoints.

A step's memory is bounded by a micro-batch, not by the batch, the length or the
vocabulary: rollouts are generated ``generation_batch_size`` samples at a time (each
token's log-prob taken as it is drawn); the update runs ``ppo_epochs`` passes, one
optimizer step per mini-batch (``mini_batch_size`` samples over all ranks), each the
accumulated gradient of its micro-batches (``micro_batch_size`` samples per
forward/backward), whose losses are their shares of the mini-batch's global token mean;
the log-probabilities come from the LM head applied at the completion positions only, a
chunk of tokens at a time (``logprobs.py``). With the defaults (one epoch, the whole
batch) a step is one on-policy update, as TRL with num_iterations = 1. Data parallel
under torchrun (``parallel.py``); the live angle signal from the first forward over the
batch (``live_angles.py``). Faults:
a reward function that raises on a sample gives that sample reward 0 and a
logged warning, and the step goes on; a non-finite loss stops the run with
``NonFiniteLossError`` before any weight changes, and the last checkpoint
written stays the last good one. ``train()`` resumes from the newest
checkpoint in ``output_dir`` (weights, optimizer, sampler, tracker, RNG and
step), so an interrupted run continues as if it never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import random
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rlsignals.io.atomic import temp_path
from rlsignals.io.distributed import barrier
from rlsignals.io.errors import UserError
from rlsignals.signals.samplers import GainRLSampler, UniformSampler
from rlsignals.trainer.advantages import group_advantages
from rlsignals.trainer.config import ANGLE_SIGNALS, RLConfig, batch_sizes
from rlsignals.trainer.correction import is_weights
from rlsignals.trainer.live_angles import LiveAngles
from rlsignals.trainer.logprobs import completion_logprobs
from rlsignals.trainer.loss import policy_loss
from rlsignals.trainer.parallel import Parallel
from rlsignals.trainer.rollout import Rollouts, hf_rollouts, mix_seed

STATE_FILE = "trainer_state.json"


class NonFiniteLossError(UserError):
    """The loss was NaN or inf; the run stopped before updating the weights (one line from a command)."""


RewardFn = Callable[[str, dict], float]
StepHook = Callable[["RLTrainer", dict], None]
# (model, tokenizer, prompts, generations, *, max_new_tokens, temperature, keys) -> Rollouts
RolloutEngine = Callable[..., Any]


class RLTrainer:
    """RL on ``rows`` (dataset rows) whose prompts ``render(row)`` turns into token ids,
    rewarded by ``reward_fn(completion_text, row)``. Rollouts come from HF generate, or
    from ``rollout`` (e.g. a ``VLLMRollout``).

    ``parallel`` (a ``Parallel``, under torchrun): every rank draws the same prompts
    (the sampler is seeded), takes a contiguous share of them (prompts_per_step must
    divide evenly), generates and rewards all G completions of its prompts (so group
    advantages are local), and its loss is its share of the global token mean.
    Completions are keyed by (seed, step, prompt), so a run on any number of ranks
    draws the same completions as one process.

    ``live_angles`` (a ``LiveAngles``): each step's prompts get their angle signal from
    the training forward, logged as ``angle_live_*``; ``config.angle_signal = "live"``
    feeds its batch mean to the GAIN-RL update instead of the precomputed scores.
    """

    def __init__(self, model, tokenizer, rows: Sequence[dict], render: Callable[[dict], list[int]],
                 reward_fn: RewardFn, config: RLConfig, output_dir: str | Path, *,
                 scores: Sequence[float] | None = None, hooks: Sequence[StepHook] = (),
                 rollout: RolloutEngine = hf_rollouts, parallel: Parallel | None = None,
                 live_angles: LiveAngles | None = None):
        self.model, self.tokenizer, self.rows = model, tokenizer, list(rows)
        self.render, self.reward_fn, self.config = render, reward_fn, config
        self.output_dir = Path(output_dir)
        self.hooks = list(hooks)
        self.rollout = rollout
        self.parallel = parallel or Parallel()
        self.live_angles = live_angles
        if config.angle_signal not in ANGLE_SIGNALS:
            raise ValueError(f"angle_signal must be one of {ANGLE_SIGNALS}, got {config.angle_signal!r}")
        if config.angle_signal == "live" and live_angles is None:
            raise ValueError("angle_signal='live' needs live_angles=LiveAngles(...)")
        if config.prompts_per_step % self.parallel.world:
            raise ValueError(f"prompts_per_step ({config.prompts_per_step}) must be a multiple of the number of "
                             f"ranks ({self.parallel.world})")
        if config.sampler == "gain_rl":
            if scores is None:
                raise ValueError("sampler='gain_rl' needs one angle score per row (scores=...)")
            self.sampler = GainRLSampler(scores, config.prompts_per_step, seed=config.seed, **config.sampler_options)
        elif config.sampler == "uniform":
            self.sampler = UniformSampler(len(self.rows), config.prompts_per_step, seed=config.seed)
        else:
            raise ValueError(f"sampler must be 'uniform' or 'gain_rl', got {config.sampler!r}")
        self.scores = None if scores is None else torch.as_tensor(scores, dtype=torch.float64)
        self.batch_sizes = batch_sizes(config, self.parallel.world)
        self.reference = copy.deepcopy(model).eval().requires_grad_(False) if config.kl_coef > 0 else None
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.train_module = self.parallel.wrap(model)
        self.device = next(model.parameters()).device
        self.optimizer = adamw(self.train_module.parameters(), config.lr)
        # the shared-prefix forward makes a rank-dependent number of module calls: one process only; and
        # gradient checkpointing runs without a key/value cache
        self.min_shared = 16 if self.parallel.world == 1 and not config.gradient_checkpointing else 1 << 62
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
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

    def my_prompts(self, indices: list[int]) -> list[int]:
        """This rank's contiguous share of the step's prompts."""
        share = len(indices) // self.parallel.world
        return indices[self.parallel.rank * share:(self.parallel.rank + 1) * share]

    def _rollouts(self, policy, mine: list[int], keys: list[int]) -> Rollouts:
        """The step's rollouts of this rank's prompts, ``generation_batch_size`` samples (whole
        prompts) per engine call: the draws are keyed per prompt, so the split changes nothing."""
        cfg = self.config
        per_call = max(1, (cfg.generation_batch_size or len(mine) * cfg.generations) // cfg.generations)
        parts = [self.rollout(policy, self.tokenizer, [self.render(self.rows[i]) for i in mine[at:at + per_call]],
                              cfg.generations, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              keys=keys[at:at + per_call])
                 for at in range(0, len(mine), per_call)]
        return parts[0] if len(parts) == 1 else Rollouts.concat(parts, self.pad_id)

    def _logprobs(self, model, rollouts: Rollouts, rows: slice) -> torch.Tensor:
        """log pi of the completion tokens of samples ``rows`` [n, T] under ``model`` (logprobs.py)."""
        return completion_logprobs(model, rollouts.prompt_ids[rows], rollouts.prompt_mask[rows],
                                   rollouts.completion_ids[rows], rollouts.completion_mask[rows],
                                   temperature=self.config.temperature, min_shared=self.min_shared,
                                   chunk=self.config.lm_head_chunk)

    def _forward(self, rollouts: Rollouts, rows: slice, live: dict | None) -> torch.Tensor:
        """Training-mode log-probs of samples ``rows``; when ``live`` is a dict, the live angle
        signal of the prompts whose first sample is among them is added to it (prompt -> stats)."""
        g = self.config.generations
        firsts = [n for n in range(rows.start, rows.stop) if n % g == 0]
        if live is None or self.live_angles is None or not firsts:
            return self._logprobs(self.train_module, rollouts, rows)
        with self.live_angles.capture():
            logp = self._logprobs(self.train_module, rollouts, rows)
        stats = self.live_angles.compute(rollouts.prompt_ids[rows], rollouts.prompt_mask[rows],
                                         [n - rows.start for n in firsts], self.min_shared)
        for i, n in enumerate(firsts):
            live[n // g] = {key: stats[key][i] for key in ("intra", "inter", "score")}
        return logp

    def _update(self, rollouts: Rollouts, advantages: torch.Tensor, sums: dict, live: dict | None) -> dict:
        """``ppo_epochs`` passes over the batch, one optimizer update per mini-batch, each the
        sum of its micro-batches' gradients of their share of the mini-batch's global token
        mean. pi_old is the policy before the first update: taken from the first forward when
        there is only one update (so the step equals a single full-batch step), else computed
        once, without gradient, before the updates."""
        cfg, par = self.config, self.parallel
        n = rollouts.completion_ids.shape[0]
        mini, micro = self.batch_sizes
        masks = rollouts.completion_mask.to(self.device)
        rollout_logp = rollouts.rollout_logp.to(self.device)
        advantages = advantages.to(self.device)
        minis = [slice(at, min(at + mini, n)) for at in range(0, n, mini)]
        old = None
        if cfg.ppo_epochs > 1 or len(minis) > 1:
            with torch.no_grad():
                old = torch.cat([self._forward(rollouts, rows, live) for rows in _slices(0, n, micro)])
            live = None
        totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "grad_norm": 0.0}
        updates = 0
        for _ in range(cfg.ppo_epochs):
            for batch in minis:
                tokens, = par.all_sum([float(masks[batch].sum())])
                for rows in _slices(batch.start, batch.stop, micro):
                    logp = self._forward(rollouts, rows, live)
                    pi_old = old[rows] if old is not None else logp.detach()
                    weights = is_weights(pi_old, rollout_logp[rows], masks[rows], mode=cfg.is_mode, level=cfg.is_level,
                                         cap=cfg.is_cap)
                    ref_logp = None
                    if self.reference is not None:
                        with torch.no_grad():
                            ref_logp = self._logprobs(self.reference, rollouts, rows)
                    loss, metrics = policy_loss(logp, pi_old, advantages[rows], weights, masks[rows],
                                                clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef, ref_logp=ref_logp,
                                                num_tokens=tokens)
                    if not math.isfinite(metrics["loss"]):
                        raise NonFiniteLossError(f"step {self.step + 1}: the loss is {metrics['loss']}; stopped before "
                                                 f"updating the weights. The last good checkpoint is "
                                                 f"{self.latest_checkpoint() or 'none'}.")
                    (loss * par.world).backward()  # the ranks' gradients are averaged: each adds its global share
                    for key in ("loss", "kl", "clip_frac"):
                        totals[key] += metrics[key]
                    if updates == 0:  # the IS correction and mismatch as the batch was drawn (pi_old vs rollout)
                        sums["is_weight"] += float((weights * masks[rows]).sum())
                        sums["log_ratio"] += float(((pi_old - rollout_logp[rows]) * masks[rows]).sum())
                    live = None if rows.stop >= n else live
                grad_norm = torch.nn.utils.clip_grad_norm_(self.train_module.parameters(), cfg.max_grad_norm)
                totals["grad_norm"] += float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor")
                                             else grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                updates += 1
        return {key: value / updates for key, value in totals.items()} | {"updates": updates}

    def train_step(self) -> dict[str, Any]:
        cfg, par = self.config, self.parallel
        indices = self.sampler.draw()
        mine = self.my_prompts(indices)
        keys = [mix_seed(cfg.seed, self.step + 1, i) for i in mine]
        policy = par.full_model()
        policy.eval()
        rollouts = self._rollouts(policy, mine, keys)
        rewards, failures = self._rewards(rollouts.texts, mine)
        advantages = group_advantages(rewards, cfg.advantage).flatten()
        self.train_module.train()
        num_tokens, = par.all_sum([float(rollouts.completion_mask.sum())])
        sums = {"is_weight": 0.0, "log_ratio": 0.0}
        live: dict | None = {} if self.live_angles is not None else None
        metrics = self._update(rollouts, advantages, sums, live)
        summed = par.all_sum([metrics["loss"], metrics["kl"], metrics["clip_frac"], float(rewards.sum()), failures,
                              sums["is_weight"], sums["log_ratio"]])
        metrics |= {"loss": summed[0], "kl": summed[1], "clip_frac": summed[2]}
        self.step += 1
        accuracy = summed[3] / (len(indices) * cfg.generations)
        prompt_rewards = [r for part in par.all_gather(rewards.mean(1).tolist()) for r in part]
        record = {"step": self.step, "reward": accuracy, "prompts": indices, "prompt_rewards": prompt_rewards,
                  **metrics, "is_weight_mean": summed[5] / max(num_tokens, 1.0),
                  "rollout_log_ratio": summed[6] / max(num_tokens, 1.0),
                  "completion_tokens": num_tokens / (len(indices) * cfg.generations), "reward_failures": int(summed[4])}
        if live is not None:
            gathered = par.all_gather([live[i] for i in range(len(mine))])
            for key in ("intra", "inter", "score"):
                values = [stats[key] for part in gathered for stats in part]
                record[f"angle_live_{key}"] = values
                record[f"angle_live_{key}_mean"] = sum(values) / len(values)
        angle = None
        if self.scores is not None:
            record["angle_score"] = angle = float(self.scores[indices].mean())
        if cfg.angle_signal == "live":
            angle = record["angle_live_score_mean"]
        self.sampler.update(accuracy, ang=angle, indices=indices)
        if isinstance(self.sampler, GainRLSampler):
            record["mu"] = self.sampler.mu
        for hook in self.hooks:
            hook(self, record)
        self.history.append(record)
        return record

    # ---- the run --------------------------------------------------------------------------------
    def train(self, resume: bool = True, progress: bool = True) -> list[dict[str, Any]]:
        """Run to ``config.steps``, resuming from the newest checkpoint when there is one.
        Rank 0 writes metrics.jsonl and shows the progress bar."""
        latest = self.latest_checkpoint() if resume else None
        if latest is not None:
            self.load_checkpoint(latest)
        else:
            torch.manual_seed(self.config.seed)
            random.seed(self.config.seed)
        lead = self.parallel.rank == 0
        metrics = self.output_dir / "metrics.jsonl"
        if lead:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            # the log restarts from the checkpoint's history: steps logged after it were lost with the interruption
            metrics.write_text("".join(json.dumps(record) + "\n" for record in self.history))
        with (metrics.open("a") if lead else contextlib.nullcontext()) as log, \
                tqdm(total=self.config.steps, initial=self.step, desc="RL steps", unit="step",
                     disable=not (progress and lead)) as bar:
            while self.step < self.config.steps:
                record = self.train_step()
                if lead:
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
                "hooks": tracker, "config": dataclasses.asdict(self.config), "world_size": self.parallel.world,
                "parallel": self.parallel.kind}

    def save_checkpoint(self) -> Path:
        """checkpoint-<step>/: the whole model as an HF folder + tokenizer, the optimizer
        state, RNG, trainer_state.json; written to a temporary folder and renamed when whole.
        Every rank calls it (collective under FSDP); rank 0 writes all but sharded state."""
        par = self.parallel
        final = self.output_dir / f"checkpoint-{self.step}"
        tmp = par.all_gather(temp_path(final))[0]  # .checkpoint-N.tmp-<pid of rank 0>: every rank writes there
        whole = par.full_model()
        if par.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier(par.world)
        try:
            par.save_optimizer(self.optimizer, tmp)
            if par.rank == 0:
                whole.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
                (tmp / STATE_FILE).write_text(json.dumps(self.state(), indent=1) + "\n")
            barrier(par.world)
            if par.rank == 0:
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
        finally:
            if par.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
        barrier(par.world)
        return final

    def load_checkpoint(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        state = json.loads((path / STATE_FILE).read_text())
        saved_world = state.get("world_size", 1)
        if state.get("parallel") == "fsdp" and (self.parallel.kind != "fsdp" or saved_world != self.parallel.world):
            raise ValueError(f"{path}: written by FSDP on {saved_world} ranks (sharded optimizer state); resume with "
                             f"parallel='fsdp' on {saved_world} ranks")
        weights = {}
        for file in sorted(path.glob("*.safetensors")):
            weights |= load_file(str(file))
        missing, unexpected = self.parallel.load_full_state_dict(weights)
        if unexpected or [m for m in missing if "lm_head" not in m]:  # lm_head may be tied to the embeddings
            raise ValueError(f"{path}: weights do not match the model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        self.parallel.load_optimizer(self.optimizer, path)
        rng = torch.load(path / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.sampler.load_state_dict(state["sampler"])
        for hook, hook_state in zip([h for h in self.hooks if hasattr(h, "load_state_dict")], state["hooks"]):
            hook.load_state_dict(hook_state)
        self.step = int(state["global_step"])
        self.history = state["history"]


def adamw(parameters, lr: float) -> torch.optim.AdamW:
    """AdamW without weight decay, fused where torch fuses these parameters (plain tensors on
    the CPU or a CUDA device; FSDP2's sharded DTensors take torch's default): one kernel per
    step instead of temporaries the size of each parameter (the embedding's, on a large
    vocabulary, are the step's largest allocation after the gradients)."""
    params = list(parameters)
    fused = all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused or None)


def _slices(start: int, stop: int, size: int) -> list[slice]:
    return [slice(at, min(at + size, stop)) for at in range(start, stop, size)]
