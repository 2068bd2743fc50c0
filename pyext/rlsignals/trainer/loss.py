"""The policy-gradient loss, token level.

For sample n with advantage A_n and completion tokens t (mask m_nt), with
log pi(y_t) from the trainer (at the sampling temperature, ``logprobs.py``), pi_old its
value before the batch's first update (detached; with one update per batch the ratio is 1
and only its gradient acts, from the second update on the clip acts) and IS weight w_nt
(correction.py):

    ratio = exp(log pi - log pi_old)
    pg_nt = -w_nt * min(ratio A_n, clip(ratio, 1 - eps, 1 + eps) A_n)
    kl_nt = exp(r) - r - 1,  r = log pi_ref - log pi      (k3; only when kl_coef > 0)
    loss  = sum_nt m_nt (pg_nt + kl_coef kl_nt) / num_tokens

(every token counts once across the batch: no per-sequence length normalisation).
num_tokens defaults to sum_nt m_nt; a micro-batch, or a data-parallel rank, passes the
token count of its whole (global) mini-batch, so that its loss is its share of the
mini-batch's and the accumulated gradients are those of the whole mini-batch.
"""

from __future__ import annotations

import torch


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                mask: torch.Tensor, *, clip_eps: float = 0.2, kl_coef: float = 0.0,
                ref_logp: torch.Tensor | None = None,
                num_tokens: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level clipped PG loss (see module docstring); returns (loss, metrics). The
    metrics (loss, kl, clip_frac) are token means over ``num_tokens`` as well."""
    mask = mask.to(logp.dtype)
    denominator = mask.sum().clamp_min(1) if num_tokens is None else max(float(num_tokens), 1.0)
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None].to(logp.dtype)
    pg = -weights * torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    per_token = pg
    kl = torch.zeros((), device=logp.device)
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs the reference log-probs")
        r = ref_logp - logp
        kl_tok = torch.exp(r) - r - 1
        per_token = per_token + kl_coef * kl_tok
        kl = (kl_tok * mask).sum() / denominator
    loss = (per_token * mask).sum() / denominator
    return loss, {"loss": float(loss.detach()), "kl": float(kl.detach()),
                  "clip_frac": float((((ratio - 1).abs() > clip_eps).to(logp.dtype) * mask).sum() / denominator)}


def answer_loss(logits: torch.Tensor, suffix_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the suffix tokens where ``loss_mask`` [B, S] is 1 (SFT).

    Token t of the suffix is predicted by the logits at t-1, so the first suffix
    token is never scored (the demo's answers never start a suffix).
    """
    pred = logits[:, :-1].float()
    target = suffix_ids[:, 1:]
    weight = loss_mask[:, 1:].to(pred.dtype)
    nll = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    return (nll * weight.reshape(-1)).sum() / weight.sum().clamp_min(1.0)
