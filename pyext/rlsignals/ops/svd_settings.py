"""The settings of one delta_svd call, shared by every stage of the solver (ops/svd.py)."""

from __future__ import annotations

import dataclasses

from rlsignals.ops.svd_rows import Rows


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one delta_svd call solves for, and how.

    k: triplets asked for. p: columns of the wide block (default_block_size). tol,
    vector_tol: the stopping tests of the values and of the vectors' angles. max_iters:
    passes per member at most. m: rows of dW over all ranks (``rows.rows``). backend: the
    fused product's backend (a name resolve_backend returned). rows: the row slabs of dW
    over the ranks of a process group, or all of them here (ops/svd_rows.py).
    """

    k: int
    p: int
    tol: float
    vector_tol: float
    max_iters: int
    backend: str
    rows: Rows

    @property
    def m(self) -> int:
        return self.rows.rows
