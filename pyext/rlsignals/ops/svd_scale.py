"""Updates too small or too large for fp32 passes: found after the first pass, solved on a
copy scaled by a power of two.

A pass squares dW (Z = dW^T dW X, ||dW||_F^2 summed in fp32 per row), so its entries'
squares must stay within fp32's normal range: an update with entries of about 1e-25 has
squares of 1e-50, below fp32's smallest subnormal, and a pass returns Z = 0 and
||dW||_F^2 = 0 as if dW were zero; one with entries of about 1e20 overflows. The first
pass's ||dW||_F^2 (its sum over rows is fp64) tells which members are outside the safe
range SAFE_FROB2 = [2^-60, 2^60], or overflowed; for them, the largest |entry| of dW is
taken without squaring anything (``max_abs_delta``), and

    max |dW| = 0            the update is exactly zero (S = 0, exact);
    inputs not finite       the member is non-finite (its results NaN);
    otherwise               dW is solved as 2^e dW, with 2^e max |dW| in [0.5, 1).

The scaled operands are after' = 2^e after and before' = 2^e before (``scaled_operands``),
each exact in fp32 wherever a product by 2^e neither overflows nor leaves the normal range,
so a pass rounds 2^e dW exactly as it rounds dW: the certificate of the scaled solve is one
for 2^e dW, and S = 2^-e S' (ops/svd_outputs.py accounts for the rounding of S' 2^-e to
fp32, which is not exact once S is subnormal). Entries where after == before are zero in
both operands (they are zero in dW, and could overflow once scaled up); where they differ,
|after|, |before| <= 2^24 |after - before|, so scaling up cannot overflow. Scaling down can
push small entries below the normal range: an absolute error under 2^-149 per entry,
inside the pass's rounding contract (ops/svd_rounding.py) at ||2^e dW||_F^2 >= 1/4.

Inside the safe range, underflow in a pass adds at most (m + n) sqrt(m n) 2^-149 ||P||_F to
||Z||, under 2^-56 ||dW||_F^2 ||P||_F for every shape a tensor can have; overflow cannot
happen (every partial sum is at most sqrt(m n) ||dW||_F^2 ||P||_F).
"""

from __future__ import annotations

import torch

from rlsignals.ops.svd_rows import Rows

SAFE_FROB2 = (2.0 ** -60, 2.0 ** 60)
# Rows per chunk while scanning a member: about 4 Mi elements of fp64 at a time.
_CHUNK_ELEMS = 1 << 22


def out_of_range(frob2: torch.Tensor) -> torch.Tensor:
    """bool [b]: the first pass's ||dW||_F^2 (fp64 [b]) lies outside SAFE_FROB2."""
    low, high = SAFE_FROB2
    return (frob2 < low) | (frob2 > high)


def _chunks(t: torch.Tensor):
    rows = max(1, _CHUNK_ELEMS // max(1, t.shape[-1]))
    return range(0, t.shape[0], rows), rows


def max_abs_delta(after: torch.Tensor, before: torch.Tensor | None, members: torch.Tensor, rows: Rows
                  ) -> torch.Tensor:
    """fp64 [b] (CPU): max |after[i] - before[i]| over all ranks' rows of each listed member,
    the difference taken in fp64 (exact for bf16 and fp16 inputs; for fp32 rounded once,
    which cannot make a nonzero difference zero)."""
    out = torch.zeros(members.numel(), dtype=torch.float64, device=after.device)
    for j, i in enumerate(members.tolist()):
        starts, size = _chunks(after[i])
        for start in starts:
            d = after[i, start:start + size].double()
            if before is not None:
                d = d - before[i, start:start + size].double()
            out[j] = torch.maximum(out[j], d.abs().amax()) if d.numel() else out[j]
    return rows.max(out).cpu()


def inputs_finite(after: torch.Tensor, before: torch.Tensor | None, members: torch.Tensor, rows: Rows
                  ) -> torch.Tensor:
    """bool [b] (CPU): whether every rank's rows of the listed members hold finite inputs only."""
    bad = torch.zeros(members.numel(), dtype=torch.float64, device=after.device)
    for j, i in enumerate(members.tolist()):
        for t in (after, before):
            if t is not None and not bool(torch.isfinite(t[i]).all()):
                bad[j] = 1
    return (rows.sum(bad) == 0).cpu()


def exponents(max_abs: torch.Tensor) -> torch.Tensor:
    """int64 [b]: e with 2^e max_abs in [0.5, 1) (max_abs fp64 [b], positive and finite)."""
    return -torch.frexp(max_abs).exponent.long()


def scaled_operands(after: torch.Tensor, before: torch.Tensor | None, members: torch.Tensor,
                    exponent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 (2^e after, 2^e before) [b, m_r, n] of the listed members (module docstring: zero
    where after == before); before' is None where before is."""
    shape = (members.numel(), *after.shape[1:])
    a_out = torch.empty(shape, dtype=torch.float32, device=after.device)
    b_out = None if before is None else torch.empty_like(a_out)
    for j, (i, e) in enumerate(zip(members.tolist(), exponent.tolist())):
        factor = 2.0 ** e  # exact in fp64 for every e a finite fp32 input can need
        starts, size = _chunks(after[i])
        for start in starts:
            part = slice(start, start + size)
            a = after[i, part].double()
            if before is None:
                a_out[j, part] = a * factor
                continue
            b = before[i, part].double()
            same = a == b
            a_out[j, part] = a.masked_fill(same, 0) * factor
            b_out[j, part] = b.masked_fill(same, 0) * factor
    return a_out, b_out
