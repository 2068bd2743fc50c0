"""Keyed rollouts: Gumbel-max draws follow softmax(logits / T), and a prompt's
completions depend on its key only (not on the batch it is generated in)."""

from __future__ import annotations

import torch
from helpers.tiny_models import CHATML, make_model, make_tokenizer

from rlsignals.signals import PromptTemplate
from rlsignals.trainer.rollout import hf_rollouts


def setup():
    tokenizer = make_tokenizer("word", CHATML)
    model = make_model("llama", len(tokenizer))
    template = PromptTemplate(tokenizer)
    return model, tokenizer, template


def test_first_tokens_follow_the_sampling_distribution():
    model, tokenizer, template = setup()
    prompt = template.token_ids("what is two plus three")
    n, temperature = 3000, 0.7
    rollouts = hf_rollouts(model, tokenizer, [prompt], n, max_new_tokens=1, temperature=temperature, keys=[5])
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].double()
    p = torch.softmax(logits / temperature, -1)
    freq = torch.bincount(rollouts.completion_ids[:, 0], minlength=p.numel()).double() / n
    # each frequency within 4.5 binomial standard deviations (plus a floor for tiny p)
    assert bool(((freq - p).abs() <= 4.5 * (p * (1 - p) / n).sqrt() + 2 / n).all())
    # the logged log-probs are those of the distribution sampled from
    torch.testing.assert_close(rollouts.rollout_logp[:, 0].double(), p.log()[rollouts.completion_ids[:, 0]],
                               rtol=0, atol=1e-5)


def test_a_prompts_draws_depend_on_its_key_only():
    model, tokenizer, template = setup()
    a, b = template.token_ids("what is two plus three"), template.token_ids("multiply six by three")
    both = hf_rollouts(model, tokenizer, [a, b], 4, max_new_tokens=6, keys=[11, 12])
    alone = hf_rollouts(model, tokenizer, [b], 4, max_new_tokens=6, keys=[12])
    assert both.texts[4:] == alone.texts
    other = hf_rollouts(model, tokenizer, [b], 4, max_new_tokens=6, keys=[13])
    assert other.texts != alone.texts
