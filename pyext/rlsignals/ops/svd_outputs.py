"""delta_svd's result type and the buffers that its members' results are written into as
they finish (ops/svd.py)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from rlsignals.ops.svd_rows import Rows
from rlsignals.ops.svd_settings import Settings


class DeltaSVD(NamedTuple):
    """Top-k singular triplets of after - before. Shapes for a batch of B matrices [m, n];
    an unbatched [m, n] input gives the same without the leading B.

    S: fp32 [B, k], descending. U: fp32 [B, m, k] (with a process group: this rank's rows).
    V: fp32 [B, n, k]. frob: fp32 [B], ||after - before||_F.
    err_bound: fp32 [B], certified bound on max_i |S_i - sigma_i| / sigma_1 (ops/svd.py's
        docstring; 0 for a zero delta, inf when sigma_1 could not be bounded away from 0,
        as on dense spectra that stop without the fp64 pass: the fp32 rounding margin
        (ops/svd_rounding.py, about 4 (m + n) 2^-24 ||dW||_F^2) then exceeds sigma_1^2).
    iters: int64 [B], passes over the inputs (products) this member took, the fp64 one included
        (and, for a member solved scaled, the first pass that found it out of range).
    nonfinite: bool [B], True where after or before has a NaN/inf entry; that member's S, U,
        V, frob, err_bound, err_estimate and basis are NaN, certified is False, and the others
        are unaffected. (A finite update too large or too small for fp32 passes is solved
        scaled by a power of two: ops/svd_scale.py.)
    basis: fp32 [B, n, p], the top p Ritz vectors (V its first k columns). Pass it as
        ``init`` for the next checkpoint of the same module.
    err_estimate: fp32 [B], a-posteriori estimate of max_i |S_i - sigma_i| / sigma_1 (the
        residual/gap test of ARPACK-style solvers; not a bound: ops/svd.py's docstring).
    certified: bool [B], err_bound <= tol.
    vector_estimate: fp32 [B], the vectors' own error estimate: max_i r_i / delta_i, the
        estimated sine of the angle of each v_i to the true one (Davis-Kahan with the Ritz gap
        delta_i; u_i = dW v_i / S_i is as close or closer). Not a bound (same caveats as
        err_estimate); 0 for a zero delta.
    vectors_undetermined: bool [B], the top is not separated: sigma_1 / sigma_2 is so near 1
        that the Ritz gap is too small for fp32 passes to resolve u_i, v_i to vector_tol, and
        the member stopped on its values (S still to tol); vector_estimate is then well above
        vector_tol. Never with vector_tol=math.inf. (A member cut short by max_iters can miss
        vector_tol with a separated top: its vector_estimate says so.)
    """

    S: torch.Tensor
    U: torch.Tensor
    V: torch.Tensor
    frob: torch.Tensor
    err_bound: torch.Tensor
    iters: torch.Tensor
    nonfinite: torch.Tensor
    basis: torch.Tensor
    err_estimate: torch.Tensor
    certified: torch.Tensor
    vector_estimate: torch.Tensor
    vectors_undetermined: torch.Tensor


def _round_up(x: torch.Tensor) -> torch.Tensor:
    """fp32 of fp64 ``x``, never below it."""
    x32 = x.float()
    return torch.where(x32.double() < x, torch.nextafter(x32, torch.full_like(x32, math.inf)), x32)


def _fix_signs(u: torch.Tensor, v: torch.Tensor, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip (u_i, v_i) so the first entry of largest |.| of u_i (of v_i where u_i = 0) is > 0."""
    mag, val = rows.first_largest(u)
    ref_v = torch.gather(v, 1, v.abs().argmax(1, keepdim=True))[:, 0]
    sign = torch.where(mag > 0, val.sign(), ref_v.sign())
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)[:, None, :]
    return u * sign, v * sign


class Outputs:
    """Results being filled in, member by member, as members finish; NaN until then."""

    def __init__(self, num: int, m: int, n: int, settings: Settings, device: torch.device,
                 unit: torch.Tensor | None = None):
        """``unit``: fp64 [num], 2^-e for members solved as 2^e dW (ops/svd_scale.py), else 1."""
        nan, k = math.nan, settings.k
        self.settings = settings
        self.unit = torch.ones(num, dtype=torch.float64, device=device) if unit is None else unit.to(device)
        self.S = torch.full((num, k), nan, device=device)
        self.U = torch.full((num, m, k), nan, device=device)
        self.V = torch.full((num, n, k), nan, device=device)
        self.frob = torch.full((num,), nan, device=device)
        self.err_bound = torch.full((num,), nan, device=device)
        self.err_estimate = torch.full((num,), nan, device=device)
        self.certified = torch.zeros(num, dtype=torch.bool, device=device)
        self.vector_estimate = torch.full((num,), nan, device=device)
        self.undetermined = torch.zeros(num, dtype=torch.bool, device=device)
        self.iters = torch.zeros(num, dtype=torch.int64)
        self.nonfinite = torch.zeros(num, dtype=torch.bool)
        self.basis = torch.full((num, n, settings.p), nan, device=device)

    def store(self, members: torch.Tensor, scale: torch.Tensor, theta: torch.Tensor, left: torch.Tensor,
              vecs: torch.Tensor, bound: torch.Tensor, estimate: torch.Tensor, vector: torch.Tensor,
              undetermined: torch.Tensor, basis: torch.Tensor) -> None:
        """Results of finished members. scale: fp64 [b] the pass's ||dW||_F^2; theta: fp64
        [b, k] Ritz values / scale; left: fp64 [b, m_r, k] dW V (this rank's rows); vecs:
        [b, n, k] V; bound, estimate, vector (the vectors' estimate): fp64 [b]; undetermined:
        bool [b], stopped with the top not separated; basis: [b, n, p].
        S and frob are scaled back by ``unit``; the estimate is raised to the rounding of S to
        fp32 where that is larger (S subnormal: the bound accounts for it by taking the rounded
        S, ops/svd_certify.py)."""
        at = members.to(self.S.device)
        rows = self.settings.rows
        unit = self.unit[at]
        exact = torch.sqrt(theta.clamp_min(0) * scale[:, None]) * unit[:, None]
        s = exact.float()
        top = exact[:, 0]
        rounding = (s.double() - exact).abs().amax(1) / torch.where(top > 0, top, 1)
        norms = rows.sum(left.square().sum(1)).sqrt()[:, None, :]
        u = torch.where(norms > 0, left / torch.where(norms > 0, norms, 1), 0)
        u, v = _fix_signs(u, vecs.double(), rows)
        err = _round_up(bound)
        self.S[at], self.U[at], self.V[at] = s, u.float(), v.float()
        self.frob[at] = (scale.sqrt() * unit).float()
        self.err_bound[at], self.err_estimate[at] = err, _round_up(torch.maximum(estimate, rounding))
        self.certified[at] = err <= self.settings.tol
        self.vector_estimate[at] = _round_up(vector)
        self.undetermined[at] = undetermined.to(self.undetermined.device)
        self.basis[at] = basis.float()

    def store_zero(self, members: torch.Tensor, block: torch.Tensor) -> None:
        """dW = 0: S = 0, U = 0, V = the start's first k columns, exact (bound and estimate 0)."""
        b, k = members.numel(), self.settings.k
        zeros = torch.zeros(b, dtype=torch.float64, device=block.device)
        left = torch.zeros(b, self.U.shape[1], k, dtype=torch.float64, device=block.device)
        self.store(members, zeros, torch.zeros(b, k, dtype=torch.float64, device=block.device), left,
                   block[:, :, :k], zeros, zeros, zeros, torch.zeros_like(zeros, dtype=torch.bool), block)

    def take(self, members: torch.Tensor, other: Outputs) -> None:
        """The results of ``other`` (a solve of these members alone, e.g. rescaled) as theirs;
        its passes are added to those these members have taken here."""
        at = members.to(self.S.device)
        for name in ("S", "U", "V", "frob", "err_bound", "err_estimate", "certified", "vector_estimate",
                     "undetermined", "basis"):
            getattr(self, name)[at] = getattr(other, name)
        self.iters[members] += other.iters
        self.nonfinite[members] = other.nonfinite

    def result(self) -> DeltaSVD:
        device = self.S.device
        return DeltaSVD(self.S, self.U, self.V, self.frob, self.err_bound, self.iters.to(device),
                        self.nonfinite.to(device), self.basis, self.err_estimate, self.certified,
                        self.vector_estimate, self.undetermined)
