"""The live angle signal read from the training forward equals `score_prompts`
on the same model and prompts (both layouts of the forward), and drives the
GAIN-RL update when asked."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import CHATML, make_model, make_tokenizer

from rlsignals.lm.prefix import shared_prefix_len
from rlsignals.signals import GainRLSampler, PromptTemplate, ScoreConfig, TemplateBounds, score_prompts
from rlsignals.trainer.live_angles import LiveAngles
from rlsignals.trainer.logprobs import completion_logprobs
from rlsignals.trainer.loop import RLConfig, RLTrainer
from rlsignals.trainer.rollout import hf_rollouts

PROMPTS = ["what is two plus three", "seven", "multiply six by three and compute the sum of seven and five",
           "the answer is eight", "x quantum 12345 ?!"]
FEW_SHOT = [{"role": "user", "content": "twelve minus five"}, {"role": "assistant", "content": "seven"},
            {"role": "user", "content": "multiply six by three"}, {"role": "assistant", "content": "the answer is"}]


def setup(arch="llama"):
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model(arch, len(tokenizer))
    template = PromptTemplate(tokenizer, "you are a careful math tutor", FEW_SHOT)
    return model, tokenizer, template


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("min_shared", [16, 1 << 62], ids=["shared_prefix_forward", "padded_forward"])
def test_live_signal_equals_score_prompts(arch, min_shared):
    model, tokenizer, template = setup(arch)
    prompts = [template.token_ids(p) for p in PROMPTS]
    assert shared_prefix_len(prompts) >= 16  # the shared-prefix layout is really exercised
    generations = 3
    rollouts = hf_rollouts(model, tokenizer, prompts, generations, max_new_tokens=5, keys=range(len(prompts)))
    live = LiveAngles(model, TemplateBounds.detect(template).split)
    model.train()
    with live.capture():
        logp = completion_logprobs(model, rollouts.prompt_ids, rollouts.prompt_mask, rollouts.completion_ids,
                                   rollouts.completion_mask, min_shared=min_shared)
    assert logp.requires_grad  # the training forward itself, not a separate no-grad pass
    got = live.compute(rollouts.prompt_ids, rollouts.prompt_mask, range(0, len(rollouts.texts), generations),
                       min_shared)
    model.eval()
    expected = sorted((r for batch in score_prompts(model, template, PROMPTS, ScoreConfig()) for r in batch),
                      key=lambda r: r["index"])
    for key in ("intra", "inter", "score"):
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor([r[key] for r in expected]),
                                   rtol=0, atol=1e-5)


def test_a_forward_of_another_layout_is_refused():
    model, tokenizer, template = setup()
    prompts = [template.token_ids(p) for p in PROMPTS[:2]]
    rollouts = hf_rollouts(model, tokenizer, prompts, 2, max_new_tokens=3, keys=[0, 1])
    live = LiveAngles(model, TemplateBounds.detect(template).split)
    with live.capture():
        completion_logprobs(model, rollouts.prompt_ids, rollouts.prompt_mask, rollouts.completion_ids,
                            rollouts.completion_mask, min_shared=1 << 62)
    with pytest.raises(RuntimeError, match="ran 1 time"):
        live.compute(rollouts.prompt_ids, rollouts.prompt_mask, [0, 2], min_shared=16)


def test_live_signal_drives_the_gain_rl_update(tmp_path):
    model, tokenizer, template = setup()
    rows = [{"prompt": p} for p in PROMPTS]
    config = RLConfig(steps=2, prompts_per_step=2, generations=2, max_new_tokens=4, lr=1e-3, sampler="gain_rl",
                      angle_signal="live", sampler_options={"sigma": 2.0})
    live = LiveAngles(model, TemplateBounds.detect(template).split)
    trainer = RLTrainer(model, tokenizer, rows, lambda row: template.token_ids(row["prompt"]),
                        lambda text, row: float("seven" in text), config, tmp_path,
                        scores=[float(i) for i in range(len(rows))], live_angles=live)
    history = trainer.train(progress=False)
    assert isinstance(trainer.sampler, GainRLSampler)
    for record, update in zip(history, trainer.sampler.history):
        assert len(record["angle_live_score"]) == 2
        assert update["ang"] == record["angle_live_score_mean"] != record["angle_score"]
    with pytest.raises(ValueError, match="needs live_angles"):
        RLTrainer(model, tokenizer, rows, lambda row: [1], lambda t, r: 0.0, config, tmp_path / "x",
                  scores=[0.0] * len(rows))
