"""The trainer's log-probabilities without full-vocabulary logits equal the full-logits
ones, values and gradients: on a 50k vocabulary with a tiny hidden size, for every
chunk size, through the shared-prefix and the padded layouts, and refuse heads that
post-process their logits."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlsignals.lm.generate import left_pad
from rlsignals.trainer.logprobs import completion_logprobs, lm_head, token_logprobs

VOCAB = 50_000


def big_vocab_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def full_logits_logprobs(model, prompt_ids, prompt_mask, completions, comp_mask, temperature):
    """The naive computation: the whole batch's [N, P + T, V] logits, an fp32 log_softmax, a gather."""
    ids = torch.cat([prompt_ids, completions], 1)
    mask = torch.cat([prompt_mask, comp_mask], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0)).logits
    picked = logits[:, prompt_ids.shape[1] - 1:-1].float() / temperature
    return torch.log_softmax(picked, -1).gather(2, completions[..., None])[..., 0] * comp_mask


def batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, VOCAB, (18,), generator=gen).tolist()
    prompts = [prefix + torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in (1, 4, 9)]
    prompt_ids, prompt_mask = left_pad(prompts, 0)
    completions = torch.randint(3, VOCAB, (3, 6), generator=gen)
    comp_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    return prompt_ids, prompt_mask, completions, comp_mask


def values_and_grads(fn, model):
    model.zero_grad()
    logp = fn()
    (logp * torch.arange(1, logp.shape[1] + 1)).sum().backward()
    return logp.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("chunk", [1, 5, 7, 10_000])
@pytest.mark.parametrize("min_shared", [16, 10_000])  # the shared-prefix layout, then one padded batch
def test_chunked_logprobs_and_gradients_equal_the_full_logits(chunk, min_shared):
    model = big_vocab_model()
    args = batch()
    expected, grads = values_and_grads(lambda: full_logits_logprobs(model, *args, 0.7), model)
    got, got_grads = values_and_grads(
        lambda: completion_logprobs(model, *args, temperature=0.7, min_shared=min_shared, chunk=chunk), model)
    assert got.dtype == torch.float32 and bool((got[args[3] == 0] == 0).all())
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    for a, b in zip(got_grads, grads):  # fp32 sums over the 50k vocabulary in another order: relative to the scale
        torch.testing.assert_close(a, b, atol=5e-6 * float(b.abs().max()), rtol=1e-4)


def test_token_logprobs_against_fp64():
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(11, 16, generator=gen, requires_grad=True)
    head = torch.nn.Linear(16, VOCAB, bias=True)
    targets = torch.randint(0, VOCAB, (11,), generator=gen)
    got = token_logprobs(hidden, head, targets, temperature=1.3, chunk=4)
    exact = torch.log_softmax((hidden.double() @ head.weight.double().T + head.bias.double()) / 1.3, -1)
    torch.testing.assert_close(got.double(), exact.gather(1, targets[:, None])[:, 0], atol=1e-5, rtol=0)
    got.sum().backward()
    assert hidden.grad is not None and head.weight.grad is not None


def test_linear_head_equals_the_checkpointed_path_of_other_heads():
    """A linear head takes the fused function, any other module the per-chunk checkpoints: the
    same values and the same gradients of hidden, weight and bias."""
    gen = torch.Generator().manual_seed(5)
    linear = torch.nn.Linear(16, VOCAB, bias=True)
    hidden = torch.randn(13, 16, generator=gen)
    targets = torch.randint(0, VOCAB, (13,), generator=gen)
    weights = torch.rand(13, generator=gen)
    results = []
    for head in (linear, torch.nn.Sequential(linear)):
        linear.zero_grad()
        h = hidden.clone().requires_grad_(True)
        got = token_logprobs(h, head, targets, temperature=0.9, chunk=4)
        (got * weights).sum().backward()
        results.append((got.detach(), h.grad, linear.weight.grad.clone(), linear.bias.grad.clone()))
    for fused, checkpointed in zip(*results):
        torch.testing.assert_close(fused, checkpointed, atol=2e-6 * float(checkpointed.abs().max()), rtol=1e-5)


def test_heads_that_post_process_their_logits_are_refused():
    model = big_vocab_model()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        lm_head(model)
