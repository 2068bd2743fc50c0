"""A shared prefix run once is the same computation as running each full sequence: logits and
gradients (``prefix_logits``), greedy generation (``generate``)."""

from __future__ import annotations

import torch

from rlsignals.demo.pretrain import build_model
from rlsignals.demo.tokenizer import build_tokenizer
from rlsignals.lm.prefix import pad_right, prefix_logits
from rlsignals.trainer.loss import answer_loss


def test_logits_and_gradients_match_full_sequences():
    torch.manual_seed(0)
    model = build_model(build_tokenizer(), num_hidden_layers=2, hidden_size=32, intermediate_size=64)
    prefix = torch.randint(4, 100, (23,)).tolist()
    suffixes = [torch.randint(4, 100, (n,)).tolist() for n in (5, 9, 1, 7)]
    ids, mask = pad_right(suffixes, 0)
    weights = torch.randn(*ids.shape, model.config.vocab_size)

    logits = prefix_logits(model, prefix, ids, mask)
    (logits * weights * mask[..., None]).sum().backward()
    shared = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    total = 0.0
    for i, s in enumerate(suffixes):
        full = model(input_ids=torch.tensor([prefix + s])).logits[0, len(prefix):]
        torch.testing.assert_close(logits[i, :len(s)], full, atol=1e-5, rtol=1e-5)
        total = total + (full * weights[i, :len(s)]).sum()
    total.backward()
    for p, g in zip(model.parameters(), shared):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)


def test_empty_prefix_and_answer_loss():
    torch.manual_seed(1)
    model = build_model(build_tokenizer(), num_hidden_layers=1, hidden_size=32, intermediate_size=64)
    ids, mask = pad_right([[5, 6, 7], [8, 9]], 0)
    logits = prefix_logits(model, [], ids, mask)
    torch.testing.assert_close(logits[1, :2], model(input_ids=ids[1:, :2]).logits[0])
    loss_mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    expected = torch.nn.functional.cross_entropy(
        torch.stack([logits[0, 0], logits[0, 1], logits[1, 0]]), torch.tensor([6, 7, 9]))
    torch.testing.assert_close(answer_loss(logits, ids, loss_mask), expected)


def test_generate_with_the_prefix_run_once_matches_plain_generate():
    from rlsignals.demo import task
    from rlsignals.demo.assets import load_default_model
    from rlsignals.demo.pretrain import generate_replies, prefix_ids, prompt_ids
    from rlsignals.lm.generate import generate

    model, tok = load_default_model()
    rows = task.generate_dataset(12, seed=4)
    prefix = prefix_ids(tok)
    suffixes = [prompt_ids(tok, r["prompt"])[len(prefix):] for r in rows]
    new = generate(model, [prefix + s for s in suffixes], pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                   max_new_tokens=task.MAX_NEW_TOKENS).completion_ids
    plain = generate_replies(model, tok, [r["prompt"] for r in rows])
    assert tok.batch_decode(new, skip_special_tokens=True) == [p[0] for p in plain]
    sampled = generate(model, [prefix + s for s in suffixes[:3] for _ in range(4)], pad_id=tok.pad_token_id,
                       eos_id=tok.eos_token_id, max_new_tokens=task.MAX_NEW_TOKENS, do_sample=True, top_k=None,
                       top_p=None).completion_ids
    assert sampled.shape[0] == 12 and sampled.shape[1] <= task.MAX_NEW_TOKENS
