"""The live angle signal: GAIN-RL's prefill angles of each prompt of a step,
read from the training forward of the current policy (no extra forward).

While ``capture()`` is active, a forward pre-hook on the scorer's module (by
default the input of the last decoder layer's ``mlp.up_proj``, the module
``rlsignals.signals.scoring`` hooks) keeps a detached view of its input. A causal
model's hidden states of the prompt tokens do not depend on the completion, so
the training forward over [prompt | completion] holds, for every prompt, the
states a prefill of the prompt alone would give. ``compute`` reads, for one
sample row per prompt, the rows of its prefix P and question Q (trailing
template tokens left out) and reduces them as the scorer does
(``signals.reduce``: unit-row sums of spans, then)

    intra = || mean_{i in Q} u_i ||^2,   inter = < mean_{i in Q} u_i , mean_{j in P} u_j >,
    score = intra_weight * intra + inter_weight * inter,     u_i = h_i / ||h_i||

which is what ``score_prompts`` gives on the same model and prompts (fp32
rounding apart). Two layouts of the training forward are understood (see
``loss.completion_logprobs``): one padded batch [N, L, d] (prompt tokens
where the prompt mask is 1, gathered), or the shared prefix alone [1, S, d]
followed by the right-padded rest [N, L', d]; in the second, a block of a
prompt is read in two parts (rows of the shared head, rows of its own row)
whose sums add, as the scorer adds a cached prefix's sums.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from rlsignals.lm.capture import collect_inputs, resolve_module
from rlsignals.lm.prefix import shared_prefix_len
from rlsignals.signals.reduce import add_sums, angle_stats_from_sums, prefix_question_sums

Split = Callable[[list[int]], tuple[int, int]]  # prompt ids -> (prefix length, question end)


class LiveAngles:
    """Angle signal of the prompts of each training forward.

    model: the policy (unwrapped); split: prompt ids -> (prefix_len, question_end)
    (e.g. ``TemplateBounds.detect(template).split``); module: the hooked module's name
    (default: last decoder layer's mlp.up_proj)."""

    def __init__(self, model: nn.Module, split: Split, *, module: str | None = None, intra_weight: float = 1.0,
                 inter_weight: float = 1.0, backend: str = "auto"):
        self.module_name, self.module = resolve_module(model, module)
        self.split, self.backend = split, backend
        self.intra_weight, self.inter_weight = intra_weight, inter_weight
        self._captured: list[torch.Tensor] = []

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Keep the hooked module's inputs of the forwards run inside the block."""
        self._captured = []
        with collect_inputs(self.module, self._captured):
            yield

    @torch.no_grad()
    def compute(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, rows: Sequence[int],
                min_shared: int) -> dict[str, list[float]]:
        """intra, inter, score (lists, one per entry of ``rows``) of the prompts of sample rows
        ``rows`` of the captured forward; prompt_ids/prompt_mask [N, P] as given to
        ``completion_logprobs`` with the same ``min_shared``."""
        prompts = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids, prompt_mask)]
        shared = shared_prefix_len(prompts)
        shared = shared if shared >= min_shared else 0
        expected = 2 if shared else 1
        if len(self._captured) != expected:
            raise RuntimeError(f"the hooked module {self.module_name!r} ran {len(self._captured)} time(s) in the "
                               f"captured forward, expected {expected}")
        main = self._captured[-1]
        bounds = [self.split(prompts[n]) for n in rows]
        width = main.shape[1]
        if shared:  # head rows [0, shared) in captured[0]; row n of main holds prompt tokens shared, shared+1, ...
            head_p, head_q = prefix_question_sums(self._captured[0][0], [0] * len(bounds),
                                                  [min(p, shared) for p, _ in bounds],
                                                  [min(q, shared) for _, q in bounds], self.backend)
            starts = [n * width for n in rows]
            main_p, main_q = prefix_question_sums(main, starts,
                                                  [s + max(p - shared, 0) for s, (p, _) in zip(starts, bounds)],
                                                  [s + max(q - shared, 0) for s, (_, q) in zip(starts, bounds)],
                                                  self.backend)
            prefix, question = add_sums(head_p, main_p), add_sums(head_q, main_q)
        else:  # prompt n's tokens sit where its mask is 1 (left pads, or [prefix | pads | rest]): gather them
            packed = torch.cat([main[n, prompt_mask[n].nonzero()[:q, 0].to(main.device)]
                                for n, (_, q) in zip(rows, bounds)])
            starts = torch.tensor([0] + [q for _, q in bounds]).cumsum(0)[:-1].tolist()
            prefix, question = prefix_question_sums(packed, starts, [s + p for s, (p, _) in zip(starts, bounds)],
                                                    [s + q for s, (_, q) in zip(starts, bounds)], self.backend)
        stats = angle_stats_from_sums(prefix, question)
        intra, inter = stats.intra.cpu().tolist(), stats.inter.cpu().tolist()
        self._captured = []
        return {"intra": intra, "inter": inter,
                "score": [self.intra_weight * a + self.inter_weight * b for a, b in zip(intra, inter)]}
