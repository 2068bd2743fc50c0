"""The live angle signal: GAIN-RL's prefill angles of each prompt of a step,
read from the training forward of the current policy (no extra forward).

While ``capture()`` is active, a forward pre-hook on the scorer's module (by
default the input of the last decoder layer's ``mlp.up_proj``, the module
``rlsignals.signals.scoring`` hooks) keeps a detached view of its input. A causal
model's hidden states of the prompt tokens do not depend on the completion, so
the training forward over [prompt | completion] holds, for every prompt, the
states a prefill of the prompt alone would give. ``compute`` packs, for one
sample row per prompt, the rows [0, question_end) of its prompt (prefix P, then
question Q; trailing template tokens left out) and calls the fused, packed
``angle_stats``:

    intra = || mean_{i in Q} u_i ||^2,   inter = < mean_{i in Q} u_i , mean_{j in P} u_j >,
    score = intra_weight * intra + inter_weight * inter,     u_i = h_i / ||h_i||

which is what ``score_prompts`` gives on the same model and prompts (fp32
rounding apart). Two layouts of the training forward are understood (see
``loss.completion_logprobs``): one padded batch [N, L, d] (prompt tokens where
the prompt mask is 1), or the shared prefix alone [1, S, d] followed by the
right-padded rest [N, L', d].
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from rlsignals.ops.angle import angle_stats
from rlsignals.signals.capture import resolve_module
from rlsignals.trainer.shared_prefix import shared_prefix_len

ANGLE_SIGNALS = ("precomputed", "live")  # which angle the GAIN-RL update reads
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

        def hook(_module: nn.Module, args: tuple) -> None:
            self._captured.append(args[0].detach())

        handle = self.module.register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()

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
        pieces, prefix_lens, lengths = [], [], []
        for n in rows:
            prefix_len, question_end = self.split(prompts[n])
            if shared:
                head = self._captured[0][0, :min(shared, question_end)]
                tail = main[n, :max(question_end - shared, 0)]
                pieces += [head, tail]
            else:
                positions = prompt_mask[n].nonzero()[:question_end, 0].to(main.device)
                pieces.append(main[n, positions])
            prefix_lens.append(prefix_len)
            lengths.append(question_end)
        hidden = torch.cat(pieces).reshape(-1, main.shape[-1])
        cu_seqlens = torch.tensor([0, *lengths]).cumsum(0)
        stats = angle_stats(hidden, cu_seqlens, torch.tensor(prefix_lens), backend=self.backend)
        intra, inter = stats.intra.cpu().tolist(), stats.inter.cpu().tolist()
        self._captured = []
        return {"intra": intra, "inter": inter,
                "score": [self.intra_weight * a + self.inter_weight * b for a, b in zip(intra, inter)]}
