"""Block Krylov basis for delta_svd: block Lanczos on G = dW^T dW with full
reorthogonalisation and thick (Krylov-Schur style) restarts.

State of b members, all with the same number K of basis columns:
    Q [b, n, K]  basis: every block exactly as fed to a pass (fp32 values, held in fp64);
                 orthonormal up to that fp32 rounding
    Z [b, n, K]  = fl(G Q) / scale, the passes' products (fp64 copies)
    Y [b, m, K]  = fl(dW Q) (fp32; only U is made from it)
    H [b, K, K]  = Q^T Z (fp64), grown block by block, symmetric by construction
A pass feeds the pending block P [b, n, w] (orthonormal, orthogonal to Q) and returns
dW P, G P; they are appended. The next P is G P with Q's span removed twice (classical
Gram-Schmidt, twice is enough) and orthonormalised (``next_block``; ops/svd.py may instead
pass G V_k, the images of the top k Ritz vectors, once they stand clear: their new directions
are the Ritz residuals', the direction Krylov-Schur restarts extend along). With G P every
pass, G Q lies in span(Q, P) in exact arithmetic and span(Q) after j passes is the block
Krylov space K_j(G, X_0): the top Ritz
value's error falls like T_{j-1}(1 + 2 gamma)^-2, gamma = (lambda_1 - lambda_{p+1}) /
(lambda_{p+1} - lambda_n), i.e. by exp(-4 sqrt(gamma)) per pass on weak gaps where block
subspace iteration gives (lambda_{p+1} / lambda_1)^2 (Saad, "Numerical Methods for Large
Eigenvalue Problems", 2011, ch. 6; Musco & Musco 2015).

A restart keeps the top r Ritz vectors: Q <- Q C_r, Z <- Z C_r, Y <- Y C_r, H <- C_r^T H C_r
(no pass needed: the images are linear in Q). P, orthogonal to the old span, stays
orthogonal to the new one, so the kept space extends as a Krylov-Schur decomposition.

Rounding (for the honest bound of ops/svd.py): ``err`` [b] tracks an upper bound on
||Z - G Q / scale||_2 in units of ||dW||_F^2 / scale, from each pass's rounding contract
(ops/delta_products.py, ops/svd_rounding.py) and the restarts (orthonormal C_r: the bound carries over).
"""

from __future__ import annotations

import math

import torch

from rlsignals.ops.svd_rounding import ORTHO_SLACK, U64


def combine(rows: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """B coef for a basis B stored transposed (``rows`` = B^T [b, K, n], coef [b, K, w]):
    [b, n, w], computed as (coef^T B^T)^T so that BLAS reads the rows contiguously."""
    return (coef.mT @ rows).mT


def orthonormal(x: torch.Tensor) -> torch.Tensor:
    """Q of the thin QR of each member of x [b, n, w], one LAPACK call per member (on the CPU
    torch's batched QR of tall thin blocks is slower than a loop of these calls)."""
    if x.shape[0] == 0:
        return torch.linalg.qr(x).Q
    return torch.stack([torch.linalg.qr(member).Q for member in x])


class Krylov:
    """The block Krylov state of the members still iterating (module docstring).

    Q, Z and Y are stored transposed, one basis column per row ([b, capacity, n]), filled
    from the first row, their capacity doubled when full (no copy per pass); ``qt``, ``zt``
    and ``yt`` are the [b, K, n] (resp. [b, K, m]) views of the K columns in use. Every
    product then reads them as contiguous rows (``combine``), and a new block writes (and
    page-faults) only its own rows' memory.
    """

    def __init__(self, scale: torch.Tensor, n: int, m_local: int, device: torch.device, capacity: int):
        b = scale.shape[0]
        self.scale = scale                                                   # fp64 [b]
        self._q = torch.empty(b, capacity, n, dtype=torch.float64, device=device)
        self._z = torch.empty(b, capacity, n, dtype=torch.float64, device=device)
        self._y = torch.empty(b, capacity, m_local, device=device)
        self.width = 0
        self.h = torch.zeros(b, 0, 0, dtype=torch.float64, device=device)
        self.err = torch.zeros(b, dtype=torch.float64, device=device)

    def _reserve(self, width: int) -> None:
        """Room for ``width`` columns in the buffers."""
        capacity = self._q.shape[1]
        if width <= capacity:
            return
        capacity = max(width, 2 * capacity)
        for name in ("_q", "_z", "_y"):
            old = getattr(self, name)
            grown = old.new_empty(old.shape[0], capacity, old.shape[2])
            grown[:, :self.width] = old[:, :self.width]
            setattr(self, name, grown)

    @property
    def qt(self) -> torch.Tensor:
        return self._q[:, :self.width]

    @property
    def zt(self) -> torch.Tensor:
        return self._z[:, :self.width]

    @property
    def yt(self) -> torch.Tensor:
        return self._y[:, :self.width]

    def subset(self, keep: torch.Tensor, *, room: bool = False) -> Krylov:
        """The state of the members where ``keep`` (bool [b], on the state's device) is True
        (this state itself when all are kept). Only the columns in use are copied; ``room``
        keeps the buffers' spare capacity (for a state that goes on iterating)."""
        if bool(keep.all()):
            return self
        new = Krylov.__new__(Krylov)
        new.width = self.width
        for name in ("scale", "h", "err"):
            setattr(new, name, getattr(self, name)[keep])
        rows = keep.nonzero()[:, 0].tolist()
        for name in ("_q", "_z", "_y"):
            old = getattr(self, name)
            buf = old.new_empty(len(rows), old.shape[1] if room else self.width, old.shape[2])
            for j, i in enumerate(rows):
                buf[j, :self.width] = old[i, :self.width]
            setattr(new, name, buf)
        return new

    def append(self, block: torch.Tensor, y: torch.Tensor, z: torch.Tensor, rounding: float) -> None:
        """Add the fed block P (fp32 [b, n, w]) with Y = dW P and Z = G P (the pass's results)."""
        old, w = self.width, block.shape[2]
        self._reserve(old + w)
        self._q[:, old:old + w] = block.mT
        self._z[:, old:old + w] = z.mT.double() / self.scale[:, None, None]
        self._y[:, old:old + w] = y.mT
        self.width = old + w
        cross = self.qt @ self._z[:, old:old + w].mT                         # Q^T Z_new [b, K + w, w]
        h = torch.empty(block.shape[0], old + w, old + w, dtype=torch.float64, device=block.device)
        h[:, :old, :old] = self.h
        h[:, :, old:] = cross
        h[:, old:, :old] = cross[:, :old].mT
        h[:, old:, old:] = (cross[:, old:] + cross[:, old:].mT) / 2
        self.h = h
        norm_p = torch.linalg.matrix_norm(self._q[:, old:old + w])
        self.err = torch.sqrt(self.err.square() + (rounding * norm_p).square())

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ritz values fp64 [b, K] (descending) and coefficients C [b, K, K]: Ritz vectors Q C."""
        theta, coef = torch.linalg.eigh(self.h)
        return theta.flip(1), coef.flip(2)

    def residuals(self, coef: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For the given columns c_i of C: ||Z c_i - Q c_i theta_i|| (fp64 [b, j]) and the images
        Z c_i, transposed (fp64 [b, j, n]: what ``next_block`` takes to extend along them)."""
        images = combine(self.zt, coef)
        r = images - combine(self.qt, coef) * theta[:, None, :]
        return torch.linalg.vector_norm(r, dim=1), images.mT

    def next_block(self, images: torch.Tensor) -> torch.Tensor:
        """The next block to feed (fp32 [b, n, w]) from ``images`` (fp64 [b, w, n], transposed:
        G applied to vectors of span(Q), over scale): span(Q) removed (twice), orthonormalised,
        then once more against Q after the QR."""
        qt = self.qt
        new = images
        for _ in range(2):
            new = new - (qt @ new.mT).mT @ qt
        new = orthonormal(new.mT).mT.contiguous()
        new = new - (qt @ new.mT).mT @ qt
        return orthonormal(new.mT).float()

    def restart(self, coef: torch.Tensor) -> None:
        """Keep the span of the Ritz vectors Q coef (coef: fp64 [b, K, r], orthonormal columns)."""
        r = coef.shape[2]
        qt, zt, yt = coef.mT @ self.qt, coef.mT @ self.zt, (coef.mT @ self.yt.double()).float()
        self._q[:, :r], self._z[:, :r], self._y[:, :r] = qt, zt, yt
        self.width = r
        h = coef.mT @ self.h @ coef
        self.h = (h + h.mT) / 2
        self.err = self.err * (1 + ORTHO_SLACK)


def ritz_block(state: Krylov, coef: torch.Tensor, theta: torch.Tensor):
    """For the Ritz vectors V = Q coef (coef fp64 [b, K, w]): V (fp64 [b, n, w]), and the
    inputs of eigenvalue_bounds in units of ||dW||_F^2 / scale: R^T R, V^T R (R = Z coef - V
    diag(theta)) and the certified margin on ||computed G V - exact G V||_2 / scale (pass
    rounding through coef, the fp64 work here, and V's departure from orthonormality)."""
    vecs = combine(state.qt, coef)
    resid = combine(state.zt, coef) - vecs * theta[:, None, :]
    n, w = vecs.shape[1], coef.shape[2]
    eye = torch.eye(w, dtype=torch.float64, device=coef.device)
    orth_err = torch.linalg.matrix_norm(vecs.mT @ vecs - eye)
    coef_norm = torch.linalg.matrix_norm(coef, ord=2) * (1 + ORTHO_SLACK)
    k_cols = state.width
    margin = (state.err * coef_norm + math.sqrt(w) * (k_cols + n + 64) * U64 * coef_norm
              + 2 * (orth_err + (n + w) * U64))
    return vecs, resid.mT @ resid, vecs.mT @ resid, margin
