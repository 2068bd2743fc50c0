"""Peak memory and tokens/s of one RL step at real-model scale: RLTrainer against TRL's GRPOTrainer.

Models (fp32 weights, AdamW, one optimizer update per step):
  qwen2.5-0.5b-2l  Qwen2.5-0.5B's config (hidden 896, intermediate 4864, 14 heads, 2 key/value
                   heads, rope theta 1e6, tied embeddings, vocabulary 151,936) with 2 of its 24
                   layers, random weights (seed 0). Tokenizer: a word-level tokenizer whose 151,936
                   words "t0" ... "t151935" are the ids (id 151643 is "<|endoftext|>", EOS and pad,
                   as in Qwen2.5), so every id the model draws decodes and re-encodes exactly.
                   Prompts: seeded random ids (never EOS), --prompt-len of them.
  smollm2-135m     SmolLM2-135M-Instruct (30 layers, vocabulary 49,152) from the folder that
                   ``rlsignals setup-real`` (rlsignals.io.packaged) writes, loaded as fp32; "not
                   installed" in the results when the folder is missing. Its own tokenizer;
                   prompts: GSM8K training questions (the cache's gsm8k-train.jsonl) run together,
                   cut to exactly --prompt-len tokens (kept when the text re-encodes to the same ids).
Both sides get the same prompt texts and tokenize them with the same tokenizer call; each draws
--generations completions of up to --new-tokens tokens per prompt at temperature 1 (no top-k/p);
reward: crc32 of the completion text / 2^32 (cheap, deterministic, different for different texts,
so the group advantages are non-zero).

Each configuration (side, model, global batch = prompts x generations, micro-batch) runs in a
fresh subprocess (peak RSS only grows within a process): --warmup steps, then --steps measured
steps (the first step creates the AdamW state, so the steady state starts at the second).
Measured there:
  peak      CPU: the peak resident set size (VmHWM) from the first step on, its high-water mark
            reset just before it (/proc/self/clear_refs), minus the RSS after the imports and
            before the model ("base", reported too: the libraries, not the step); CUDA:
            torch.cuda.max_memory_allocated (tensors only, so no base). Per phase as well
            (generation, update; the high-water mark is reset at each phase boundary).
  tokens/s  completion tokens trained / the measured step's wall time; generation and update
            times (and tokens/s) separately.
On the CPU the peak RSS also holds memory the allocator keeps after a free, so it moves between
runs of identical work: the JSON's "generation_peak_spread" gives, per model and batch, the
spread of our generation-phase peaks over the micro-batch sizes (the same generation each time).
bound = weights + gradients + AdamW's two states (4 x the parameters' bytes) + 2 GB (2e9 bytes).
Targets (issue 25): peak independent of the global batch within 10%; at micro-batch 4 at most the
bound; beside TRL on the same model and batch, our peak no higher and our tokens/s no lower.

RLTrainer: RLConfig(prompts_per_step, generations, max_new_tokens, micro_batch_size, lm_head_chunk
at its default 256, gradient_checkpointing as given); one update per step (ppo_epochs 1, one
mini-batch), as TRL's num_iterations 1.
TRL: GRPOConfig with per_device_train_batch_size = our micro-batch, gradient_accumulation_steps =
global batch / micro-batch (so steps_per_generation = the same, one generation batch = the global
batch per optimizer step), num_generations, max_completion_length, temperature 1, beta 0 (no
reference model), loss_type "dapo" (the global token mean, as ours), scale_rewards "group",
use_vllm False, bf16 False (fp32 like ours), gradient_checkpointing as given (TRL's default is on,
ours off; both are run matched), everything else TRL's default (its fused chunked LM-head
log-probabilities included). The exact settings of both sides are in the JSON.

Usage:
  python bench/train_memory.py                   the default grid on the CPU (hours on 2 cores; the committed
                                                 results ran the smaller grid named in their JSON's "command")
  python bench/train_memory.py --quick           tiny sizes (about a minute; prints, writes no JSON)
  python bench/train_memory.py --device cuda     the same on a GPU (results named after the device)
  python bench/train_memory.py --micro 4 --global-batches 8 --sides ours   a part of the grid
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

BENCH = Path(__file__).resolve().parent
QWEN = "qwen2.5-0.5b-2l"
SMOLLM2 = "smollm2-135m"
MODELS = (QWEN, SMOLLM2)
SIDES = ("ours", "trl")
QWEN_VOCAB = 151_936
QWEN_EOS = 151_643  # <|endoftext|>: Qwen2.5's EOS and pad; ids from here on are special tokens
BOUND_EXTRA = 2e9  # the "+ 2 GB" of the target, in bytes
RESULT_TAG = "RESULT "
GB = 1e9


# ---- the models, tokenizers and prompts ---------------------------------------------------------------

def qwen_config(layers: int = 2, vocab: int = QWEN_VOCAB):
    """Qwen2.5-0.5B's config (its config.json) with ``layers`` of its 24 layers."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
                       num_attention_heads=14, num_key_value_heads=2, hidden_act="silu",
                       max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                       bos_token_id=QWEN_EOS, eos_token_id=QWEN_EOS, pad_token_id=QWEN_EOS, use_cache=True,
                       attention_dropout=0.0)


def word_tokenizer(vocab: int = QWEN_VOCAB, eos_id: int = QWEN_EOS):
    """A tokenizer whose words "t<i>" are the ids 0 .. vocab-1 (id eos_id is "<|endoftext|>")."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    words = {f"t{i}": i for i in range(vocab) if i != eos_id} | {eos: eos_id}
    core = Tokenizer(models.WordLevel(words, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, pad_token=eos, unk_token="t0")
    tokenizer.add_special_tokens({"additional_special_tokens": []})
    return tokenizer


def word_prompts(count: int, length: int, seed: int, vocab_below: int = QWEN_EOS) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"t{rng.randrange(vocab_below)}" for _ in range(length)) for _ in range(count)]


def text_prompts(tokenizer, data: Path | None, count: int, length: int, seed: int) -> list[str]:
    """``count`` texts of exactly ``length`` tokens: GSM8K questions run together and cut (kept when
    the cut text re-encodes to the same ids), or seeded English words when the data is missing."""
    rng = random.Random(seed)
    if data is not None and data.is_file():
        questions = [json.loads(line)["prompt"] for line in data.read_text().splitlines() if line.strip()]
    else:
        words = ("the of and to in is was for on that with as by at from his her they have one all "
                 "apples cost each dollars how many more than total left after she he buys sells").split()
        questions = [" ".join(rng.choice(words) for _ in range(60)).capitalize() + "?" for _ in range(200)]
    out: list[str] = []
    while len(out) < count:
        text = " ".join(rng.choice(questions) for _ in range(8))
        ids = tokenizer(text)["input_ids"][:length]
        cut = tokenizer.decode(ids)
        if len(ids) == length and tokenizer(cut)["input_ids"] == ids:
            out.append(cut)
    return out


def crc_reward(text: str) -> float:
    """The benchmark's reward: crc32 of the completion text in [0, 1)."""
    return zlib.crc32(text.encode()) / 2**32


def real_model_dir() -> Path | None:
    """SmolLM2-135M's converted folder when ``rlsignals setup-real`` has made it, else None."""
    try:
        from rlsignals.io.packaged import asset_paths
    except ImportError:
        return None
    folder = asset_paths().model
    return folder if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() else None


def gsm8k_file() -> Path | None:
    try:
        from rlsignals.io.packaged import asset_paths
    except ImportError:
        return None
    return asset_paths().data.get("gsm8k-train")


def load_model(name: str, device: str, layers: int, seed: int):
    """(model fp32 on device, tokenizer, description)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == QWEN:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(qwen_config(layers), dtype=torch.float32)
        tokenizer = word_tokenizer()
    else:
        folder = real_model_dir()
        if folder is None:
            raise FileNotFoundError("SmolLM2-135M is not installed (run `rlsignals setup-real`)")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.to(device), tokenizer


def prompts_for(name: str, tokenizer, count: int, length: int, seed: int) -> list[str]:
    if name == QWEN:
        return word_prompts(count, length, seed)
    return text_prompts(tokenizer, gsm8k_file(), count, length, seed)


# ---- memory -------------------------------------------------------------------------------------------

def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class MemoryProbe:
    """Peak memory per phase: CPU VmHWM (reset through /proc/self/clear_refs at each mark) or CUDA
    max_memory_allocated (reset likewise). ``mark(name)`` closes the running phase (its peak is kept,
    the max if the name repeats) and starts ``name``."""

    def __init__(self, device: str):
        import torch

        self.torch, self.cuda = torch, device.startswith("cuda")
        self.peaks: dict[str, int] = {}
        self.phase: str | None = None
        self.resettable = True

    def current(self) -> int:
        if self.cuda:
            return self.torch.cuda.memory_allocated()
        return _status_kb("VmRSS") * 1024

    def _peak(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated()
        return _status_kb("VmHWM") * 1024

    def _reset(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            self.resettable = False
        if _status_kb("VmHWM") > _status_kb("VmRSS") + 4096:
            self.resettable = False

    def mark(self, name: str | None) -> None:
        if self.phase is not None:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), self._peak())
        self.phase = name
        if name is not None:
            self._reset()


# ---- one configuration (in its own process) ----------------------------------------------------------

@dataclasses.dataclass
class Spec:
    side: str
    model: str
    prompts: int
    generations: int
    micro: int | None  # None: no micro-batching (the whole batch per forward/backward)
    prompt_len: int
    new_tokens: int
    warmup: int
    steps: int
    device: str
    gradient_checkpointing: bool
    layers: int
    seed: int = 0

    @property
    def batch(self) -> int:
        return self.prompts * self.generations


def _param_bytes(model) -> tuple[int, int]:
    params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def sync(device: str) -> None:
    """Wait for the device's queued work (on a CUDA device), so that a clock read next times it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed_phase(probe: MemoryProbe, device: str, timing: dict, key: str, start: str, end: str, call):
    """``call()`` as the probe's phase ``start`` (then phase ``end``), its seconds, the device's
    work included, in ``timing[key]``; returns what it returned."""
    probe.mark(start)
    t0 = time.perf_counter()
    out = call()
    sync(device)
    timing[key] = time.perf_counter() - t0
    probe.mark(end)
    return out


def run_ours(spec: Spec, probe: MemoryProbe, out_dir: str) -> dict:

    from rlsignals.trainer.loop import RLConfig, RLTrainer

    model, tokenizer = load_model(spec.model, spec.device, spec.layers, spec.seed)
    total = spec.warmup + spec.steps
    texts = prompts_for(spec.model, tokenizer, spec.prompts * total, spec.prompt_len, spec.seed)
    rows = [{"prompt": t} for t in texts]
    config = RLConfig(steps=total, prompts_per_step=spec.prompts, generations=spec.generations,
                      max_new_tokens=spec.new_tokens, temperature=1.0, lr=1e-6, micro_batch_size=spec.micro,
                      gradient_checkpointing=spec.gradient_checkpointing, seed=spec.seed)
    timing: dict[str, float] = {}

    class Timed(RLTrainer):
        def _rollouts(self, *args, **kwargs):
            out = timed_phase(probe, spec.device, timing, "generation_s", f"{self.step + 1}:generation",
                              f"{self.step + 1}:rewards", lambda: super(Timed, self)._rollouts(*args, **kwargs))
            timing["tokens"] = float(out.completion_mask.sum())
            return out

        def _update(self, *args, **kwargs):
            return timed_phase(probe, spec.device, timing, "update_s", f"{self.step + 1}:update",
                               f"{self.step + 1}:after", lambda: super(Timed, self)._update(*args, **kwargs))

    trainer = Timed(model, tokenizer, rows, lambda row: tokenizer(row["prompt"])["input_ids"],
                    lambda text, row: crc_reward(text), config, out_dir)
    setup = probe.current()
    steps = []
    for _ in range(total):
        probe.mark(f"{trainer.step + 1}:start")
        sync(spec.device)
        t0 = time.perf_counter()
        record = trainer.train_step()
        sync(spec.device)
        steps.append({"step_s": time.perf_counter() - t0, **timing, "loss": record["loss"],
                      "reward": record["reward"], "grad_norm": record["grad_norm"]})
    probe.mark(None)
    settings = {"RLConfig": dataclasses.asdict(config), "batch_sizes (mini, micro)": list(trainer.batch_sizes),
                "optimizer": f"torch.optim.AdamW(weight_decay=0, fused={trainer.optimizer.defaults['fused']})"}
    return {"model_obj": model, "setup_bytes": setup, "steps": steps, "settings": settings}


def run_trl(spec: Spec, probe: MemoryProbe, out_dir: str) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = load_model(spec.model, spec.device, spec.layers, spec.seed)
    total = spec.warmup + spec.steps
    texts = prompts_for(spec.model, tokenizer, spec.prompts * total, spec.prompt_len, spec.seed)
    micro = spec.micro or spec.batch
    args = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=micro,
                      gradient_accumulation_steps=spec.batch // micro, num_generations=spec.generations,
                      max_completion_length=spec.new_tokens, temperature=1.0, learning_rate=1e-6,
                      max_steps=total, beta=0.0, loss_type="dapo", scale_rewards="group", use_vllm=False,
                      bf16=False, fp16=False, gradient_checkpointing=spec.gradient_checkpointing,
                      use_cpu=not spec.device.startswith("cuda"), report_to="none", save_strategy="no",
                      logging_steps=1, disable_tqdm=True, seed=spec.seed, dataloader_num_workers=0)

    def reward(prompts, completions, **kwargs):
        return [crc_reward(c) for c in completions]

    dataset = datasets.Dataset.from_dict({"prompt": texts})
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    timing: dict[str, float] = {}
    steps: list[dict] = []
    generate = trainer._generate_and_score_completions

    def timed_generate(*a, **k):
        step = trainer.state.global_step + 1
        out = timed_phase(probe, spec.device, timing, "generation_s", f"{step}:generation", f"{step}:update",
                          lambda: generate(*a, **k))
        timing["tokens"] = float(out["completion_mask"].sum())
        return out

    trainer._generate_and_score_completions = timed_generate

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            probe.mark(f"{state.global_step + 1}:start")
            sync(spec.device)
            timing["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(spec.device)
            step_s = time.perf_counter() - timing.pop("t0")
            steps.append({"step_s": step_s, **timing, "update_s": step_s - timing["generation_s"]})
            probe.mark(f"{state.global_step}:after")

    trainer.add_callback(Clock())
    setup = probe.current()
    trainer.train()
    probe.mark(None)
    for step, log in zip(steps, [h for h in trainer.state.log_history if "loss" in h]):
        step.update({"loss": log.get("loss"), "reward": log.get("reward"), "grad_norm": log.get("grad_norm")})
    keys = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
            "generation_batch_size", "num_generations", "max_completion_length", "temperature", "top_p", "top_k",
            "beta", "loss_type", "scale_rewards", "num_iterations", "epsilon", "importance_sampling_level",
            "use_vllm", "bf16", "fp16", "gradient_checkpointing", "gradient_checkpointing_kwargs",
            "cast_lm_head_to_fp32", "use_liger_kernel", "optim", "learning_rate", "weight_decay", "max_grad_norm",
            "lr_scheduler_type", "max_steps", "seed", "use_cpu", "mask_truncated_completions",
            "torch_empty_cache_steps", "pad_to_multiple_of", "use_transformers_continuous_batching")
    settings = {"GRPOConfig": {k: _jsonable(getattr(args, k, None)) for k in keys},
                "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                                  else trainer.optimizer).__name__}
    return {"model_obj": model, "setup_bytes": setup, "steps": steps, "settings": settings}


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def worker(spec: Spec) -> dict:
    """One configuration in this process: what main() collects."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if spec.device.startswith("cuda"):
        torch.cuda.init()
    # the side's own imports and the model classes before the base RSS: the libraries, not the step
    if spec.side == "ours":
        import rlsignals.trainer.loop  # noqa: F401
    else:
        import datasets  # noqa: F401
        import trl  # noqa: F401
        from trl import GRPOConfig, GRPOTrainer  # noqa: F401
    import tokenizers  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    import transformers.models.qwen2.modeling_qwen2  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

    probe = MemoryProbe(spec.device)
    base = probe.current()
    with tempfile.TemporaryDirectory(prefix="train_memory-") as out_dir:
        out = (run_ours if spec.side == "ours" else run_trl)(spec, probe, out_dir)
    params, param_bytes = _param_bytes(out.pop("model_obj"))
    peaks = probe.peaks
    measured = [s for s in out["steps"]][spec.warmup:]
    after_warmup = {k: v for k, v in peaks.items() if int(k.split(":")[0]) > spec.warmup}

    def phase_peak(phase: str, where: dict) -> int | None:
        values = [v for k, v in where.items() if k.split(":")[1] == phase]
        return max(values) if values else None

    peak = max(peaks.values())
    step_s = sum(s["step_s"] for s in measured)
    tokens = sum(s["tokens"] for s in measured)
    gen_s = sum(s["generation_s"] for s in measured)
    upd_s = sum(s["update_s"] for s in measured)
    result = {
        **dataclasses.asdict(spec), "batch": spec.batch, "micro_label": spec.micro or "none",
        "parameters": params, "param_bytes": param_bytes,
        "bound_bytes": 4 * param_bytes + BOUND_EXTRA,
        "base_bytes": 0 if probe.cuda else base, "setup_bytes": out["setup_bytes"],
        "peak_abs_bytes": peak, "peak_bytes": peak - (0 if probe.cuda else base),
        "peak_first_step_bytes": max(v for k, v in peaks.items() if int(k.split(":")[0]) <= max(spec.warmup, 1))
        - (0 if probe.cuda else base),
        "peak_generation_bytes": _minus(phase_peak("generation", after_warmup), 0 if probe.cuda else base),
        "peak_update_bytes": _minus(phase_peak("update", after_warmup), 0 if probe.cuda else base),
        "phase_peaks_valid": probe.resettable,
        "tokens": tokens / max(len(measured), 1), "step_s": step_s / max(len(measured), 1),
        "generation_s": gen_s / max(len(measured), 1), "update_s": upd_s / max(len(measured), 1),
        "tokens_per_s": tokens / step_s, "generation_tokens_per_s": tokens / gen_s,
        "update_tokens_per_s": tokens / upd_s, "steps_detail": out["steps"],
        "phase_peaks_bytes": peaks, "settings": out["settings"],
        "threads": torch.get_num_threads(),
    }
    return result


def _minus(value: int | None, base: int) -> int | None:
    return None if value is None else value - base


# ---- the grid ------------------------------------------------------------------------------------------

def grid(args) -> list[Spec]:
    """The configurations. Ours: every --micro at every global batch (checkpointing off), and --gc-micro
    with checkpointing on. TRL: --trl-micro at the smallest global batch, --trl-micro-large at the others,
    and --gc-micro with checkpointing on at the smallest. SmolLM2 (the slow 30-layer model): --real-micro
    only, TRL at the smallest global batch only."""
    specs = []
    smallest = min(args.global_batches)
    for model in args.models:
        for batch in args.global_batches:
            for side in args.sides:
                for gc in args.gradient_checkpointing:
                    if model == SMOLLM2:
                        micros = args.real_micro if (side == "ours" or batch == smallest) and not gc else []
                    elif gc:
                        micros = args.gc_micro if side == "ours" or batch == smallest else []
                    elif side == "ours":
                        micros = args.micro
                    else:
                        micros = args.trl_micro if batch == smallest else args.trl_micro_large
                    for micro in micros:
                        if micro is not None and (micro > batch or batch % micro):
                            continue
                        specs.append(Spec(side, model, batch // args.generations, args.generations, micro,
                                          args.prompt_len, args.new_tokens, args.warmup, args.steps, args.device,
                                          gc, args.layers))
    return specs


@contextlib.contextmanager
def exclusive(lock: Path | None):
    """Holds an exclusive flock on ``lock`` (nothing when None): one configuration at a time, so that
    other heavy jobs sharing the lock run between configurations, never during one."""
    if lock is None:
        yield
        return
    import fcntl

    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_spec(spec: Spec, timeout: float, lock: Path | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(dataclasses.asdict(spec))]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
                        "PYTHONWARNINGS": "ignore"}
    with exclusive(lock):
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            return {**dataclasses.asdict(spec), "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {**dataclasses.asdict(spec), "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_s"] = time.perf_counter() - t0
    return result


def _key(r: dict, *drop: str) -> tuple:
    fields = ("side", "model", "batch", "micro_label", "gradient_checkpointing")
    return tuple(r[f] for f in fields if f not in drop)


def generation_spread(results: list[dict]) -> list[dict]:
    """The noise of the peak: per model and global batch, the spread of our generation-phase peaks
    over the micro-batch sizes (the generation is the same work in each: same prompts, seeds and
    batch), i.e. how much the peak moves between runs of identical work."""
    out = []
    groups: dict[tuple, list[int]] = {}
    for r in results:
        if r.get("side") == "ours" and r.get("peak_generation_bytes") is not None:
            groups.setdefault((r["model"], r["batch"]), []).append(r["peak_generation_bytes"])
    for (model, batch), peaks in sorted(groups.items()):
        if len(peaks) > 1:
            out.append({"model": model, "batch": batch, "runs": len(peaks), "min_bytes": min(peaks),
                        "max_bytes": max(peaks), "spread_bytes": max(peaks) - min(peaks)})
    return out


def verdicts(results: list[dict], global_batches: list[int]) -> list[dict]:
    """Each target, per configuration where it applies: met / missed with the numbers."""
    ok = [r for r in results if "error" not in r]
    out = []
    small, large = min(global_batches), max(global_batches)
    by = {_key(r): r for r in ok}
    for r in ok:  # 1. the peak does not grow with the global batch
        if r["side"] == "ours" and r["batch"] == large and large != small:
            other = by.get(_key({**r, "batch": small}))
            if other is None:
                continue
            ratio = r["peak_bytes"] / other["peak_bytes"]
            out.append({"target": "peak independent of the global batch (within 10%)", "model": r["model"],
                        "micro": r["micro_label"], "gradient_checkpointing": r["gradient_checkpointing"],
                        "verdict": "met" if ratio <= 1.10 else "missed",
                        "numbers": f"peak {r['peak_bytes'] / GB:.2f} GB at {large} samples vs "
                                   f"{other['peak_bytes'] / GB:.2f} GB at {small} (x{ratio:.3f})",
                        "ratio": ratio})
    for r in ok:  # 2. micro-batch 4 within weights + gradients + optimizer + 2 GB
        if r["side"] == "ours" and r["micro"] == 4:
            met = r["peak_bytes"] <= r["bound_bytes"]
            out.append({"target": "peak at micro-batch 4 <= weights + gradients + AdamW state + 2 GB",
                        "model": r["model"], "batch": r["batch"], "gradient_checkpointing": r["gradient_checkpointing"],
                        "verdict": "met" if met else "missed",
                        "numbers": f"peak {r['peak_bytes'] / GB:.2f} GB vs bound {r['bound_bytes'] / GB:.2f} GB "
                                   f"({r['parameters'] / 1e6:.1f} M parameters x 16 bytes + 2 GB)",
                        "peak_bytes": r["peak_bytes"], "bound_bytes": r["bound_bytes"]})
    for r in ok:  # 3. beside TRL
        if r["side"] != "ours":
            continue
        trl = by.get(_key({**r, "side": "trl"}))
        if trl is None:
            continue
        mem_ok = r["peak_bytes"] <= trl["peak_bytes"]
        speed_ok = r["tokens_per_s"] >= trl["tokens_per_s"]
        out.append({"target": "vs TRL GRPOTrainer: our peak no higher, our tokens/s no lower", "model": r["model"],
                    "batch": r["batch"], "micro": r["micro_label"],
                    "gradient_checkpointing": r["gradient_checkpointing"],
                    "verdict": "met" if mem_ok and speed_ok else "missed",
                    "memory": "met" if mem_ok else "missed", "speed": "met" if speed_ok else "missed",
                    "numbers": f"peak {r['peak_bytes'] / GB:.2f} GB vs TRL {trl['peak_bytes'] / GB:.2f} GB "
                               f"(x{r['peak_bytes'] / trl['peak_bytes']:.2f}); {r['tokens_per_s']:.1f} vs TRL "
                               f"{trl['tokens_per_s']:.1f} tokens/s (x{r['tokens_per_s'] / trl['tokens_per_s']:.2f})",
                    "peak_ratio": r["peak_bytes"] / trl["peak_bytes"],
                    "speed_ratio": r["tokens_per_s"] / trl["tokens_per_s"]})
    return out


def readme_rows(results: list[dict], found: list[dict], args) -> list[dict]:
    from common import readme_row

    ok = [r for r in results if "error" not in r]
    by = {_key(r): r for r in ok}
    rows = []
    lengths = f"{args.prompt_len}-token prompts + {args.new_tokens} new"
    for model in args.models:
        name = {QWEN: "Qwen2.5-0.5B shape, 2 of 24 layers, V = 151,936, random weights",
                SMOLLM2: "SmolLM2-135M (V = 49,152)"}[model]
        for batch in sorted(set(args.global_batches)):
            ours = by.get(("ours", model, batch, 4, False))
            trl = by.get(("trl", model, batch, 4, False))
            if ours is None:
                continue
            case = (f"{name}; {batch // args.generations} prompts x {args.generations} = {batch} samples, "
                    f"micro-batch 4, {lengths}, fp32")
            result = (f"peak {ours['peak_bytes'] / GB:.2f} GB (bound: weights + grads + AdamW + 2 GB = "
                      f"{ours['bound_bytes'] / GB:.2f} GB), {ours['tokens_per_s']:.1f} tokens/s")
            if trl is not None:
                result += (f"; x{ours['peak_bytes'] / trl['peak_bytes']:.2f} TRL GRPOTrainer's peak, "
                           f"x{ours['tokens_per_s'] / trl['tokens_per_s']:.2f} its tokens/s")
                baseline = (f"TRL {trl['settings'].get('trl_version', '')} GRPOTrainer, same batch and micro-batch: "
                            f"peak {trl['peak_bytes'] / GB:.2f} GB, {trl['tokens_per_s']:.1f} tokens/s")
            else:
                baseline = "TRL GRPOTrainer: not run in this configuration"
            rows.append(readme_row("RL step memory and speed (`RLTrainer`)", case, result, baseline))
    for v in found:
        if v["target"].startswith("peak independent") and v["micro"] == 4 and not v["gradient_checkpointing"]:
            rows.append(readme_row("RL step peak memory vs global batch (`RLTrainer`)",
                                   f"{v['model']}, micro-batch 4, {lengths}",
                                   f"{v['numbers']}: {v['verdict']} (target within 10%)", "-"))
    return rows


COLUMNS = [("model", "model", ""), ("side", "side", ""), ("batch", "batch", "d"), ("micro_label", "micro", ""),
           ("gc", "ckpt", ""), ("peak_gb", "peak GB", ".2f"), ("gen_gb", "gen GB", ".2f"),
           ("update_gb", "update GB", ".2f"), ("bound_gb", "bound GB", ".2f"), ("base_gb", "base GB", ".2f"),
           ("tokens", "tokens", ".0f"), ("tokens_per_s", "tok/s", ".1f"), ("generation_s", "gen s", ".1f"),
           ("update_s", "update s", ".1f"), ("update_tokens_per_s", "upd tok/s", ".1f"), ("error", "error", "")]


def table_rows(results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        row = dict(r)
        row["gc"] = "on" if r.get("gradient_checkpointing") else "off"
        row["micro_label"] = str(r.get("micro_label", r.get("micro") or "none"))
        row["batch"] = r.get("batch", r["prompts"] * r["generations"])
        for key, out in (("peak_bytes", "peak_gb"), ("peak_generation_bytes", "gen_gb"),
                         ("peak_update_bytes", "update_gb"), ("bound_bytes", "bound_gb"), ("base_bytes", "base_gb")):
            row[out] = None if r.get(key) is None else r[key] / GB
        if "error" in r:
            row["error"] = r["error"][:60]
        rows.append(row)
    return rows


def parse_micro(text: str) -> list[int | None]:
    return [None if x.strip() == "none" else int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (1 layer, 16-token prompts, 8 new tokens, batches 4 and 8): a smoke run; "
                             "prints, writes no JSON unless --output is given")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {MODELS}")
    parser.add_argument("--sides", default=",".join(SIDES), help="ours,trl")
    parser.add_argument("--global-batches", default="16,32",
                        help="samples per step (prompts x generations); both above the largest micro-batch, so "
                             "that every run accumulates micro-batch gradients (a batch of one micro-batch holds "
                             "no accumulation buffer, about the size of the gradients' largest tensor, less)")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt")
    parser.add_argument("--micro", default="1,2,4,8,none",
                        help="our micro-batch sizes (none: the whole batch per forward/backward)")
    parser.add_argument("--trl-micro", default="1,2,4,8", help="TRL's micro-batch sizes at the smallest global batch")
    parser.add_argument("--trl-micro-large", default="4", help="TRL's micro-batch sizes at the other global batches")
    parser.add_argument("--real-micro", default="4", help="micro-batch sizes of the SmolLM2 runs")
    parser.add_argument("--gradient-checkpointing", default="off,on",
                        help="off, on or off,on: the decoder's activation checkpointing on both sides")
    parser.add_argument("--gc-micro", default="4", help="micro-batch sizes run with checkpointing on as well")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the Qwen2.5-0.5B config (of 24)")
    parser.add_argument("--warmup", type=int, default=1, help="steps before the measured ones (the first creates "
                                                                 "the optimizer state)")
    parser.add_argument("--steps", type=int, default=1, help="measured steps")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per configuration")
    parser.add_argument("--output", type=Path, help="the results JSON (default bench/results/train_memory-<device>"
                                                    ".json; --quick writes none unless given)")
    parser.add_argument("--lock", type=Path, help="hold an exclusive flock on this file during each configuration "
                                                  "(e.g. /tmp/rlsignals-heavy.lock on a shared machine)")
    parser.add_argument("--list", action="store_true", help="print the configurations and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(Spec(**json.loads(args.worker)))
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    if args.quick:
        for key, value, default in (("global_batches", "4,8", "16,32"), ("micro", "2,4", "1,2,4,8,none"),
                                    ("trl_micro", "4", "1,2,4,8"), ("generations", 4, 8), ("prompt_len", 16, 128),
                                    ("new_tokens", 8, 128), ("layers", 1, 2),
                                    ("gradient_checkpointing", "off", "off,on")):
            if getattr(args, key) == default:
                setattr(args, key, value)
        if args.models == ",".join(MODELS):
            args.models = QWEN
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    args.global_batches = [int(x) for x in str(args.global_batches).split(",")]
    args.micro = parse_micro(str(args.micro))
    args.trl_micro = parse_micro(str(args.trl_micro))
    args.gc_micro = parse_micro(str(args.gc_micro))
    args.trl_micro_large = parse_micro(str(args.trl_micro_large))
    args.real_micro = parse_micro(str(args.real_micro))
    args.gradient_checkpointing = [{"off": False, "on": True}[x.strip()]
                                   for x in str(args.gradient_checkpointing).split(",")]
    bad = [m for m in args.models if m not in MODELS] + [s for s in args.sides if s not in SIDES]
    if bad:
        parser.error(f"unknown model or side: {bad}")
    for batch in args.global_batches:
        if batch % args.generations:
            parser.error(f"global batch {batch} is not a multiple of --generations {args.generations}")

    sys.path.insert(0, str(BENCH))
    import torch
    from common import print_table, write_results

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    notes = {}
    if SMOLLM2 in args.models and real_model_dir() is None:
        notes[SMOLLM2] = "not installed (run `rlsignals setup-real` to convert it into ~/.cache/rlsignals/real)"
        args.models = [m for m in args.models if m != SMOLLM2]
    if "trl" in args.sides and importlib.util.find_spec("trl") is None:
        notes["trl"] = "TRL is not installed: its side was not run"
        args.sides = [s for s in args.sides if s != "trl"]
    specs = grid(args)
    print(f"{len(specs)} configurations, one subprocess each", flush=True)
    if args.list:
        for spec in specs:
            print(f"  {spec.side} {spec.model} batch {spec.batch} micro {spec.micro or 'none'} "
                  f"ckpt {'on' if spec.gradient_checkpointing else 'off'}")
        return 0
    results = []
    for i, spec in enumerate(specs, 1):
        result = run_spec(spec, args.timeout, args.lock)
        results.append(result)
        state = result.get("error") or (f"peak {result['peak_bytes'] / GB:.2f} GB, {result['tokens_per_s']:.1f} "
                                        f"tokens/s ({result['process_s']:.0f} s)")
        print(f"[{i}/{len(specs)}] {spec.side} {spec.model} batch {spec.batch} micro {spec.micro or 'none'} "
              f"ckpt {'on' if spec.gradient_checkpointing else 'off'}: {state}", flush=True)
    found = verdicts(results, args.global_batches)
    print()
    print_table(table_rows(results), COLUMNS)
    print()
    for v in found:
        print(f"{v['verdict']:>6}  {v['target']}: {v['model']} "
              f"{' '.join(f'{k} {v[k]}' for k in ('batch', 'micro', 'gradient_checkpointing') if k in v)}: "
              f"{v['numbers']}")
    for g in generation_spread(results):
        print(f"noise: {g['model']} batch {g['batch']}: generation-phase peaks {g['min_bytes'] / GB:.2f}-"
              f"{g['max_bytes'] / GB:.2f} GB over {g['runs']} runs of the same generation")
    for model, note in notes.items():
        print(f"{model}: {note}")
    if args.quick and args.output is None:
        return 0 if all("error" not in r for r in results) else 1
    import transformers

    versions = {"transformers": transformers.__version__}
    if "trl" in args.sides:
        import trl

        versions["trl"] = trl.__version__
        for r in results:
            if r.get("side") == "trl" and "settings" in r:
                r["settings"]["trl_version"] = trl.__version__
    extra = {"command": shlex.join(["python", "bench/train_memory.py", *(sys.argv[1:] if argv is None else argv)]),
             "note": (f"each configuration in a fresh process, exclusive use of the machine; peak = "
                      f"{'max_memory_allocated' if device.type == 'cuda' else 'peak RSS minus the RSS after imports'}"
                      f" over {args.warmup} warm-up + {args.steps} measured step(s); tokens/s from the measured "
                      "step(s)"),
             "readme_rows": readme_rows(results, found, args), "versions": versions,
             "setup": {"models": args.models, "global_batches": args.global_batches, "generations": args.generations,
                       "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "layers": args.layers,
                       "warmup": args.warmup, "steps": args.steps, "reward": "crc32(completion text) / 2^32",
                       "bound": "4 x parameter bytes (fp32 weights, gradients, AdamW exp_avg and exp_avg_sq) + 2e9"},
             "not_installed": notes, "targets": found, "generation_peak_spread": generation_spread(results)}
    if args.output is None:
        path = write_results("train_memory", device, results, extra)
    else:
        from common import machine_info

        args.output.parent.mkdir(parents=True, exist_ok=True)
        payload = {"op": "train_memory", "machine": machine_info(device), **extra, "results": results}
        args.output.write_text(json.dumps(payload, indent=2) + "\n")
        path = args.output
    print(f"wrote {path}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
