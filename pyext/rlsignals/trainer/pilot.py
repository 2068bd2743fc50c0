"""A pilot before GAIN-RL: on a sample of the user's data, does the angle score
order the prompts the way the paper says, on this model?

GAIN-RL (REFERENCES.md section 1) trains on high-scoring prompts first because,
it argues, a higher score means a larger gradient, so the prompt is learnt
sooner. For a linear layer y_i = W x_i applied to the tokens i of a sequence,
with delta_i = dL/dy_i,

    ||dL/dW||_F^2 = || sum_i delta_i x_i^T ||_F^2
                  = sum_{i,j} (delta_i . delta_j) ||x_i|| ||x_j|| cos(x_i, x_j):

when the tokens' inputs point the same way the terms add up instead of
cancelling. The pilot measures both ends of that argument on the model as it is
(before any training), on ``sample`` prompts drawn from the data (seeded):

  mechanism     Spearman's rho between the score and g = ||grad L||_2 over every
                parameter of the decoder layers (embeddings, LM head and final norm
                left out), where L is the token-mean negative log-likelihood of the
                prompt's reference completion: ``reference_format`` filled from the
                row (default "{<answer_field>}"), tokenized without special tokens,
                then the end-of-turn token (the tokenizer's EOS);
  learnability  Spearman's rho between the score and the pass rate: the share of
                ``samples`` completions drawn at ``temperature`` that the reward accepts.

Why this loss and not the policy-gradient loss on the model's own samples: with
group-normalised advantages (GRPO, Dr.GRPO, RLOO) the policy gradient of a prompt
whose samples all get the same reward is exactly zero, and at the start that is
most prompts (all wrong on hard data, all right on easy data); its norm then
measures the spread of the rewards, which the learnability figure already covers,
not the geometry of the derivation. The reference NLL's gradient is defined for
every prompt and deterministic, and for a right completion y* it is, up to sign and
a positive factor (p(y*) and the length of y*), the term y* adds to the expected
policy gradient grad E[r] = sum_y r(y) p(y) grad log p(y).

Each rho has a 95% percentile bootstrap interval over the prompts
(``rlsignals.stats.spearman_ci``). A relation is *positive* when its whole
interval is above 0, *negative* when below, and *unresolved* otherwise (or when
undefined, e.g. the model solves none of the sample). Verdict for GAIN-RL:

  "released order"  at least one relation positive and none negative: keep the
                    default order (higher score first);
  "reversed order"  at least one negative and none positive: lower scores first
                    (negate the score weights) or uniform sampling;
  "no order"        both unresolved, or one positive and one negative.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rlsignals.io.errors import UserError
from rlsignals.io.models import DTYPES
from rlsignals.settings import ConfigError, auto_or_device, option, positive_number, whole_number
from rlsignals.signals.config import PromptOptions

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from rlsignals.signals.prompts import PromptTemplate
    from rlsignals.stats import Estimate

RELEASED, REVERSED, NO_ORDER = "released order", "reversed order", "no order"
ROWS_PER_CALL = 128  # sampled completions generated together (prompts x samples)


@dataclasses.dataclass(kw_only=True)
class PilotConfig(PromptOptions):
    """Settings of a pilot (``run``): the prompts as ``rlsignals score`` / ``train`` take them
    (``PromptOptions``), the reward and reference completion, and the sample's size."""

    model: str = option(help="a local transformers causal LM folder, or hub:org/name for a Hugging Face Hub model")
    data: str = option(help=".jsonl/.json/.csv/.parquet with one prompt per row")
    answer_field: str = option("answer", "the dataset column holding the reference answer")
    reward: str = option("integer", "integer | last_integer | math | module:function (as in `rlsignals train`)")
    reference_format: str | None = option(None, "the reference completion whose loss gives the gradient norm: a "
                                                "format string over the row's columns, e.g. 'The answer is "
                                                "{answer}.' (default: the answer column alone)")
    sample: int = option(64, "prompts drawn from the data (seeded)", parse=whole_number(3))
    samples: int = option(8, "completions sampled per prompt for the pass rate", parse=whole_number(1))
    temperature: float = option(1.0, "sampling temperature", parse=positive_number)
    max_new_tokens: int = option(32, "tokens per sampled completion at most", parse=whole_number(1))
    seed: int = option(0, "seed of the prompt sample, the draws and the bootstrap", parse=whole_number(0))
    module: str | None = option(None, "hooked module of the score (default: the input of the last decoder layer's "
                                      "mlp.up_proj)")
    intra_weight: float = option(1.0, "weight of intra in the score")
    inter_weight: float = option(1.0, "weight of inter in the score (the released code used 8)")
    device: str = option("auto", "auto: cuda:LOCAL_RANK when there is a GPU, else cpu", parse=auto_or_device)
    dtype: str = option("auto", "auto: bfloat16 on a GPU, float32 on the CPU", choices=DTYPES)
    out: str | None = option(None, "also write the figures and per-prompt values as JSON here")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        if self.sample < 3:
            raise ConfigError(f"sample must be at least 3 prompts (Spearman's rho needs 3), got {self.sample}")
        if self.samples < 1 or self.max_new_tokens < 1:
            raise ConfigError(f"samples and max_new_tokens must be >= 1, got {self.samples} and "
                              f"{self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")


def reference_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a reference completion as the model would end it: the text's
    tokens (no special tokens added) and then the EOS token."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; a reference completion needs one to end")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def gradient_norms(model: nn.Module, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> np.ndarray:
    """Per decoder layer, the L2 norm of the gradient of the token-mean NLL of
    ``completion_ids`` after ``prompt_ids`` with respect to that layer's parameters:
    float64 [num_layers]. The norm over all decoder layers is the root of the sum of
    squares. One forward and backward of the whole sequence (batch 1); the LM head is
    applied to the completion positions only; ``.grad`` of the parameters is not touched."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from rlsignals.lm.capture import decoder_layers

    if not completion_ids:
        raise ValueError("completion_ids must hold at least one token")
    _, layers = decoder_layers(model)
    groups = [[p for p in layer.parameters() if p.is_floating_point()] for layer in layers]
    trainable = [p for group in groups for p in group]
    saved = {p: p.requires_grad for p in model.parameters()}
    device = next(model.parameters()).device
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        with torch.enable_grad():
            ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=device)
            logits = model(input_ids=ids, logits_to_keep=len(completion_ids) + 1).logits[0, :-1].float()
            loss = F.cross_entropy(logits, torch.tensor(list(completion_ids), device=device))
            grads = torch.autograd.grad(loss, trainable)
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads]).double().cpu().numpy()
    bounds = np.cumsum([0] + [len(group) for group in groups])
    return np.asarray([np.sqrt(np.square(norms[a:b]).sum()) for a, b in zip(bounds[:-1], bounds[1:])])


def pass_counts(model: nn.Module, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], rows: Sequence[dict],
                reward: Callable[[str, dict], float], *, samples: int, temperature: float, max_new_tokens: int,
                seed: int, progress: Callable[[int], Any] | None = None) -> np.ndarray:
    """How many of ``samples`` completions of each prompt the reward accepts (> 0.5):
    int64 [len(rows)]. Draws are keyed by (seed, prompt position, sample), so they do not
    depend on the batching (``trainer.rollout.hf_rollouts``). A reward that raises
    counts as a miss (one warning)."""
    import numpy as np

    from rlsignals.trainer.rollout import hf_rollouts, mix_seed

    per_call = max(1, ROWS_PER_CALL // samples)
    counts, failed = [], 0
    for start in range(0, len(rows), per_call):
        chunk = range(start, min(start + per_call, len(rows)))
        out = hf_rollouts(model, tokenizer, [prompt_ids[i] for i in chunk], samples, max_new_tokens=max_new_tokens,
                          temperature=temperature, keys=[mix_seed("pilot", seed, i) for i in chunk])
        for k, i in enumerate(chunk):
            hits = 0
            for text in out.texts[k * samples:(k + 1) * samples]:
                try:
                    hits += float(reward(text, rows[i])) > 0.5
                except Exception:  # noqa: BLE001 - a user's reward failing on one completion costs that sample
                    failed += 1
            counts.append(hits)
        if progress is not None:
            progress(len(chunk))
    if failed:
        warnings.warn(f"the reward raised on {failed} completion(s); they count as misses", RuntimeWarning,
                      stacklevel=2)
    return np.asarray(counts, dtype=np.int64)


def prompt_scores(model: nn.Module, template: PromptTemplate, prompts: Sequence[str],
                  config: Any = None) -> dict[str, np.ndarray]:
    """intra, inter and score of each prompt (float64 [len(prompts)], prompt order) from
    ``score_prompts`` (shared prefix run once); ``config`` a ScoreConfig (default: its defaults)."""
    import numpy as np

    from rlsignals.signals.config import ScoreConfig
    from rlsignals.signals.scoring import score_prompts

    rows = score_prompts(model, template, prompts, config or ScoreConfig())
    by_index = {row["index"]: row for batch in rows for row in batch}
    return {key: np.asarray([by_index[i][key] for i in range(len(prompts))], dtype=np.float64)
            for key in ("intra", "inter", "score")}


def direction(estimate: Estimate) -> int:
    """+1 when the whole interval is above 0, -1 when below, 0 otherwise or undefined."""
    if not (math.isfinite(estimate.low) and math.isfinite(estimate.high)):
        return 0
    return 1 if estimate.low > 0 else -1 if estimate.high < 0 else 0


def verdict(mechanism: Estimate, learnability: Estimate) -> str:
    """GAIN-RL's order from the two relations (module docstring)."""
    signs = {direction(mechanism), direction(learnability)}
    if 1 in signs and -1 not in signs:
        return RELEASED
    if -1 in signs and 1 not in signs:
        return REVERSED
    return NO_ORDER


def advice(result: str, mechanism: Estimate, learnability: Estimate, pass_rates: Sequence[float],
           weights: tuple[float, float]) -> str:
    """One paragraph: what the figures say and what to set."""
    figures = (f"Spearman(score, gradient norm) = {mechanism.format('.2f')}, "
               f"Spearman(score, pass rate) = {learnability.format('.2f')} (95% intervals over prompts).")
    if result == RELEASED:
        text = ("Higher-scoring prompts have larger gradients or are solved more often, as GAIN-RL assumes: keep "
                "its released order (the default: the sampler starts at the highest scores).")
    elif result == REVERSED:
        text = (f"Here lower-scoring prompts have the larger gradients or are solved more often, the reverse of "
                f"GAIN-RL's assumption. To train them first, negate the score weights (intra_weight={-weights[0]:g}, "
                f"inter_weight={-weights[1]:g} in `rlsignals score` / `rlsignals train`), so the sampler starts at "
                "what now ranks lowest; or sample uniformly (sampler='uniform').")
    else:
        conflict = direction(mechanism) * direction(learnability) < 0
        why = "the two relations point opposite ways" if conflict else "no relation is resolved on this sample"
        text = (f"The score shows no usable order here ({why}): GAIN-RL's ordering has no measured basis on this "
                "model and data. Sample uniformly (sampler='uniform'), or rerun the pilot on a larger sample to "
                "narrow the intervals.")
    if pass_rates and (max(pass_rates) == 0 or min(pass_rates) == 1):
        solved = "none" if max(pass_rates) == 0 else "all"
        text += (f" The model solved {solved} of the sampled completions: a verifiable reward gives RL no signal on "
                 "this data as prompted; choose easier (or harder) data or another prompt format first.")
    return f"{figures} {text}"


@dataclasses.dataclass
class PilotResult:
    """The pilot's figures: the two relations (and those of intra and inter alone), the
    verdict and its paragraph, per-prompt values, and the seconds of each phase."""

    prompts: int
    mechanism: Estimate
    learnability: Estimate
    verdict: str
    advice: str
    components: dict[str, Estimate]
    per_prompt: dict[str, list]
    seconds: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "mechanism": self.mechanism.as_dict(),
                "learnability": self.learnability.as_dict(), "verdict": self.verdict, "advice": self.advice,
                "components": {k: v.as_dict() for k, v in self.components.items()},
                "per_prompt": self.per_prompt, "seconds": self.seconds}


def sample_rows(count: int, total: int, seed: int) -> list[int]:
    """``count`` of ``total`` row positions drawn without replacement (all when fewer), sorted."""
    if count >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), count))


def references(rows: Sequence[dict], config: PilotConfig) -> list[str]:
    """Each row's reference completion text (``config.reference_format`` over its columns)."""
    fmt = config.reference_format or "{" + config.answer_field + "}"
    try:
        return [fmt.format(**row) for row in rows]
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"reference_format {fmt!r} does not fit the data's rows (columns: "
                        f"{', '.join(sorted(rows[0]))}): {exc!r}") from None


def pilot(model: nn.Module, tokenizer: Any, rows: Sequence[dict], template: PromptTemplate,
          reward: Callable[[str, dict], float], config: PilotConfig) -> PilotResult:
    """Measure the pilot on ``rows`` (already sampled) with a loaded model (module docstring)."""
    import numpy as np
    from tqdm.auto import tqdm

    from rlsignals.signals.config import ScoreConfig
    from rlsignals.stats import spearman_ci

    texts = references(rows, config)
    prompts = [row[config.prompt_field] for row in rows]
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    scores = prompt_scores(model, template, prompts, ScoreConfig(module=config.module, intra_weight=config.intra_weight,
                                                                 inter_weight=config.inter_weight))
    seconds["score"] = time.perf_counter() - start
    prompt_ids = [template.token_ids(p) for p in prompts]
    with tqdm(total=2 * len(rows), desc="pilot: gradients, then samples", unit="prompt",
              disable=not config.progress) as bar:
        start = time.perf_counter()
        norms = []
        for ids, text in zip(prompt_ids, texts):
            norms.append(float(np.sqrt(np.square(gradient_norms(model, ids, reference_ids(tokenizer, text))).sum())))
            bar.update(1)
        seconds["gradients"] = time.perf_counter() - start
        start = time.perf_counter()
        counts = pass_counts(model, tokenizer, prompt_ids, rows, reward, samples=config.samples,
                             temperature=config.temperature, max_new_tokens=config.max_new_tokens, seed=config.seed,
                             progress=bar.update)
        seconds["sampling"] = time.perf_counter() - start
    grad, rate = np.asarray(norms), counts / config.samples
    components = {f"{key} vs {target}": spearman_ci(scores[key], values, seed=config.seed)
                  for key in ("intra", "inter") for target, values in (("gradient norm", grad), ("pass rate", rate))}
    mechanism = spearman_ci(scores["score"], grad, seed=config.seed)
    learnability = spearman_ci(scores["score"], rate, seed=config.seed)
    result = verdict(mechanism, learnability)
    per_prompt = {"intra": scores["intra"].tolist(), "inter": scores["inter"].tolist(),
                  "score": scores["score"].tolist(), "gradient_norm": grad.tolist(), "pass_rate": rate.tolist()}
    return PilotResult(len(rows), mechanism, learnability, result,
                       advice(result, mechanism, learnability, rate.tolist(),
                              (config.intra_weight, config.inter_weight)),
                       components, per_prompt, seconds)


def run_pilot(config: PilotConfig) -> tuple[PilotResult, list[int]]:
    """Load the model, data, template and reward named by ``config``, sample the rows and
    run the pilot; returns the result and the sampled row positions."""
    from rlsignals.io.models import load_model
    from rlsignals.signals.prompts import PromptTemplate, load_few_shot, load_rows
    from rlsignals.trainer.rewards import resolve_reward

    rows = load_rows(config.data, config.prompt_field)
    if config.answer_field not in rows[0]:
        raise UserError(f"{config.data}: rows have no {config.answer_field!r} column (columns: "
                        f"{', '.join(sorted(rows[0]))}); choose it with answer_field")
    if len(rows) < 3:
        raise UserError(f"{config.data}: {len(rows)} rows; the pilot needs at least 3")
    try:
        reward = resolve_reward(config.reward, config.answer_field)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    positions = sample_rows(config.sample, len(rows), config.seed)
    references([rows[i] for i in positions], config)  # a bad format fails before the model loads
    model, tokenizer = load_model(config.model, device=config.device, dtype=config.dtype)
    template = PromptTemplate(tokenizer, config.system_prompt,
                              load_few_shot(config.few_shot) if config.few_shot else [], config.use_chat_template)
    return pilot(model, tokenizer, [rows[i] for i in positions], template, reward, config), positions


def format_result(result: PilotResult) -> str:
    """The pilot's printout: the relations with intervals, the verdict and its paragraph."""
    rates = result.per_prompt["pass_rate"]
    lines = [f"GAIN-RL pilot on {result.prompts} prompts (Spearman's rho, 95% bootstrap interval over prompts):",
             f"  {'score vs gradient norm at the start':<36}  {result.mechanism.format('.2f')}",
             f"  {'score vs sampled pass rate':<36}  {result.learnability.format('.2f')}"]
    lines += [f"  {name:<36}  {estimate.format('.2f')}" for name, estimate in result.components.items()]
    lines.append(f"  mean pass rate {sum(rates) / len(rates):.3f}; prompts with 0 < pass rate < 1: "
                 f"{sum(0 < r < 1 for r in rates)} of {len(rates)}")
    lines.append("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    lines.append(f"verdict: {result.verdict}")
    lines.append(result.advice)
    return "\n".join(lines)


def run(config: PilotConfig) -> int:
    """The command: run the pilot, print its figures and verdict, write JSON when asked. Exit status 0."""
    from rlsignals.io.atomic import write_json_atomic

    result, positions = run_pilot(config)
    print(format_result(result))
    if config.out:
        write_json_atomic(config.out, {"settings": dataclasses.asdict(config), "rows": positions, **result.as_dict()})
        print(f"wrote {config.out}")
    return 0
