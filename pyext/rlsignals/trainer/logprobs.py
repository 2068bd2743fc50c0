"""Log-probabilities of the sampled completion tokens, without full-vocabulary logits.

For sample n with prompt p_n and completion y_n (mask m_nt), the trainer needs

    log pi(y_nt | p_n, y_n,<t) = z_{nt, y_nt} - logsumexp_v z_{nt, v},   z_nt = lm_head(h_nt) / T

where h_nt is the decoder's final hidden state at the position that predicts y_nt and T
the sampling temperature. The decoder runs as usual (through the wrapped training module,
so DDP and FSDP2 see their forward), asked for the logits of one position only
(``logits_to_keep=1``); a forward hook takes its final hidden states. The LM head then
runs only at the K positions with m_nt = 1, CHUNK of them at a time, each chunk's logits
in fp32 (``token_logprobs``). For a linear head (``_LinearHeadLogprobs``) the forward
keeps the [K] results and log-partitions (and the last chunk's softmax); the backward
recomputes one other chunk's logits at a time and adds each chunk's share of the head's
weight gradient into one buffer. Any other head runs under per-chunk activation
checkpointing. The peak of the head is O(CHUNK x V) plus one weight gradient, instead of
O(N x (P + T) x V) for the batch's logits and their fp32 copy. Results equal
``log_softmax(logits / T).gather(y)`` of the full forward to fp32 rounding, gradients too.

When the prompts share a prefix of at least ``min_shared`` tokens (a few-shot prefix, or
the G samples of one prompt) the prefix runs once (``lm.prefix.SharedPrefix``, under
autograd: gradients reach the parameters through its keys/values too) and only the rest
of each prompt and its completion run on top (right-padded).

Under FSDP2 the LM head's weight is read after the root module's forward: the root keeps
its parameters unsharded until its backward (``reshard_after_forward`` is False for the
root), so the head runs on whole weights and its gradient joins the root's reduce-scatter.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rlsignals.lm.prefix import SharedPrefix, continuation_inputs, decoder, pad_right, shared_prefix_len

DEFAULT_CHUNK = 256
UNSUPPORTED_HEADS = ("final_logit_softcapping", "logit_scale")


def _chunk_logprobs(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = head(hidden).float() / temperature
    return logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, 1)


class _LinearHeadLogprobs(torch.autograd.Function):
    """log softmax((h W^T + b) / T)[y] of K rows, CHUNK rows at a time, for a linear head.

    Forward keeps the [K] results, the [K] log-partitions lse and the softmax of the last
    chunk. Backward, with g = dL/dlogp, takes that chunk first (then frees its softmax) and
    recomputes each other chunk's logits z; it forms dL/dz = g (onehot(y) - exp(z - lse)) / T;
    dL/dh = dL/dz W and dL/db = sum dL/dz per chunk, and dL/dW = sum over chunks of
    dL/dz^T h into ONE buffer: the head's weight gradient (V x d) is held once, not once
    per chunk and once for their sum, as autograd does when each chunk is a separate use
    of W. A batch of one chunk thus runs the head once forward and never recomputes it."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        starts = range(0, hidden.shape[0], chunk)
        ctx.last_softmax = None
        for at in starts:
            rows = slice(at, at + chunk)
            logits = nn.functional.linear(hidden[rows], weight, bias).float() / temperature
            lse[rows] = torch.logsumexp(logits, 1)
            out[rows] = logits.gather(1, targets[rows, None])[:, 0] - lse[rows]
            if at == starts[-1] and any(ctx.needs_input_grad[:3]):
                ctx.last_softmax = logits.sub_(lse[rows, None]).exp_()
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = grad_b = None
        for at in reversed(range(0, hidden.shape[0], ctx.chunk)):
            rows = slice(at, at + ctx.chunk)
            softmax, ctx.last_softmax = ctx.last_softmax, None
            if softmax is None:
                logits = nn.functional.linear(hidden[rows], weight, bias).float() / ctx.temperature
                softmax = logits.sub_(lse[rows, None]).exp_()
            g = grad_out[rows, None].float()
            grad_z = softmax.mul_(-g)
            del softmax
            grad_z.scatter_add_(1, targets[rows, None], g)
            grad_z = grad_z.div_(ctx.temperature).to(weight.dtype)
            if need_h:
                torch.matmul(grad_z, weight, out=grad_h[rows])
            if need_w:
                grad_w = grad_z.T @ hidden[rows] if grad_w is None else grad_w.addmm_(grad_z.T, hidden[rows])
            if need_b:
                grad_b = grad_z.sum(0) if grad_b is None else grad_b.add_(grad_z.sum(0))
        return grad_h, grad_w, grad_b, None, None, None


def token_logprobs(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, temperature: float = 1.0,
                   chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """log softmax(head(hidden) / temperature) at ``targets``: hidden [K, d], targets [K] int
    -> fp32 [K], ``chunk`` rows at a time (module docstring): a linear head through
    ``_LinearHeadLogprobs``, any other head under per-chunk activation checkpointing."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [K, d] and targets [K]; got {tuple(hidden.shape)} and "
                         f"{tuple(targets.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if type(head) is nn.Linear:
        return _LinearHeadLogprobs.apply(hidden, head.weight, head.bias, targets, temperature, chunk)
    parts = []
    for rows, picked in zip(hidden.split(chunk), targets.split(chunk)):
        if torch.is_grad_enabled() and rows.requires_grad:
            parts.append(checkpoint(_chunk_logprobs, rows, head, picked, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(rows, head, picked, temperature))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def _unwrapped(model: nn.Module) -> nn.Module:
    """The transformers model inside a DistributedDataParallel wrapper (or the model)."""
    return getattr(model, "module", model)


def lm_head(model: nn.Module) -> nn.Module:
    """The output embedding of a transformers causal LM; ValueError for heads that post-process
    their logits (soft-capping, scaling), which the chunked log-probabilities do not apply."""
    inner = _unwrapped(model)
    config = getattr(inner, "config", None)
    for key in UNSUPPORTED_HEADS:
        if getattr(config, key, None) not in (None, 1.0):
            raise ValueError(f"{type(inner).__name__} applies {key} to its logits; the trainer's chunked "
                             "log-probabilities do not support it")
    return inner.get_output_embeddings()


def final_hidden(model: nn.Module, inputs: dict) -> torch.Tensor:
    """The decoder's final hidden states [B, L, d] of ``model(**inputs)``, run through ``model``
    (a DDP/FSDP-wrapped module runs its own forward) with the logits of one position only."""
    captured: list[torch.Tensor] = []
    handle = decoder(_unwrapped(model)).register_forward_hook(lambda _module, _args, output: captured.append(output[0]))
    try:
        model(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1]


def completion_logprobs(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        completion_ids: torch.Tensor, completion_mask: torch.Tensor, temperature: float = 1.0,
                        min_shared: int = 16, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """log pi(y_t | ...) of each completion token, fp32 [N, T] (0 at padding). Differentiable.

    prompt_ids/prompt_mask [N, P]: prompts left-padded (or [prefix | pads | rest]);
    completion_ids/completion_mask [N, T]. See the module docstring."""
    device = next(model.parameters()).device
    head = lm_head(model)
    rows = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids, prompt_mask)]
    shared = shared_prefix_len(rows)
    if shared >= min_shared:
        ids, mask = pad_right([r[shared:] + c.tolist() for r, c in zip(rows, completion_ids)], 0)
        prefix = SharedPrefix.run(_unwrapped(model), rows[0][:shared])
        inputs = continuation_inputs(prefix, _unwrapped(model), ids.to(device), mask.to(device))
        starts = torch.tensor([len(r) - shared - 1 for r in rows], device=device)  # predicts completion token 0
    else:
        ids = torch.cat([prompt_ids, completion_ids], 1).to(device)
        mask = torch.cat([prompt_mask, completion_mask], 1).to(device)
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp_min(0),
                  "use_cache": False}
        starts = torch.full((len(rows),), prompt_ids.shape[1] - 1, device=device)
    hidden = final_hidden(model, inputs)
    keep = completion_mask.to(device).bool()
    positions = starts[:, None] + torch.arange(completion_ids.shape[1], device=device)[None, :]
    batch_rows = torch.arange(len(rows), device=device)[:, None].expand_as(positions)
    picked = hidden[batch_rows[keep], positions[keep]]
    logp = token_logprobs(picked, head, completion_ids.to(device)[keep], temperature, chunk)
    return torch.zeros(keep.shape, dtype=torch.float32, device=device).masked_scatter(keep, logp)
