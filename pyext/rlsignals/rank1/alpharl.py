"""AlphaRL: predict where RL training is going from early rank-1 trajectories.

Per module, checkpoint t has the top singular triplet (sigma_t, u_t, v_t) of its
update dW_t = W_t - W_0. The feature is x_t = sigma_t u_t (the update's
principal direction, scaled).

Signs: a singular pair is defined up to (u, v) -> (-u, -v). Signs are aligned
looking backwards only: checkpoint t is flipped when <u_t, u_{t-1}> < 0 (after
t-1 was aligned); the first checkpoint anchors. (The released code anchors on
the last checkpoint, which uses the future.)

Fit: a 1-component PLS regression (scikit-learn ``PLSRegression``) between the
rows x_t and the accuracies y_t. With ``scale`` the columns of x (and y) are
first standardised, z = (x - x_mean) / x_std (a constant column keeps std 1);
without it z = x - x_mean. The model is y = y_mean + y_std * q * s with the
x-score s = <z, r> (r = the x-rotation); its in-sample R^2 is the module's
"linearity", and the leave-one-out R^2 (Q^2 = 1 - PRESS / SS_tot) says how well
it predicts an unseen checkpoint. Inversion to a target accuracy (what
``PLSRegression.inverse_transform`` does): s* = (target - y_mean) / (y_std q),
x* = x_mean + s* (p * x_std) (p = the x-loadings). The predicted update of the
module is x* v_T^T with v_T from the latest fitted checkpoint T.

Two PLS modes, named after the update rule they go with (``PLS_SCALE``):

- ``update="released"``: the released scripts' rule, faithful to them:
  scikit-learn's default ``scale=True`` (AlphaPLS.py / AlphaPredVector.py),
  and the update x* v_T^T added to W_T;
- ``update="replace"``: ours, ``scale=False`` (the features are already in
  weight units, and standardising lets coordinates that barely move weigh as
  much as those that carry the update), and the rank-1 part of W_T's update
  swapped for the prediction, (x* - x_T) v_T^T.

With two checkpoints both scalings give the same prediction; with three or
more they differ (a median 11% in the predicted update on real runs).

Alternatives with the same output (a predicted feature x*): a per-coordinate
least-squares line in the training step (``linear_in_step``), and two-point
weight extrapolation W_0 + a (W_T - W_0), which needs the weights themselves
(see pipeline code).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


def align_signs(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u [C, m], v [C, n] in checkpoint order -> aligned (u, v) and the flips [C] bool."""
    u, v = u.clone(), v.clone()
    flips = torch.zeros(u.shape[0], dtype=torch.bool)
    for t in range(1, u.shape[0]):
        if float(u[t] @ u[t - 1]) < 0:
            u[t], v[t], flips[t] = -u[t], -v[t], True
    return u, v, flips


@dataclasses.dataclass
class PLSFit:
    """A 1-component PLS fit of accuracy on rank-1 features, and its inversion."""

    r2: float            # in-sample R^2 (the linearity score)
    r2_loo: float        # leave-one-out R^2 (NaN with fewer than 3 checkpoints)
    intercept: float
    slope: float         # y_std * q: accuracy per unit of x-score
    x_mean: np.ndarray   # [m]
    loading: np.ndarray  # p * x_std [m]: feature change per unit of x-score

    def invert(self, target: float) -> np.ndarray:
        """The feature x* at which the fit predicts accuracy ``target``."""
        if self.slope == 0 or not np.isfinite(self.slope):
            raise ValueError("the PLS fit has zero slope: accuracy does not move with this module's feature")
        score = (target - self.intercept) / self.slope
        return self.x_mean + score * self.loading


def _pls(features: np.ndarray, acc: np.ndarray, scale: bool):
    from sklearn.cross_decomposition import PLSRegression

    return PLSRegression(n_components=1, scale=scale).fit(features, acc)


def _r2(acc: np.ndarray, predicted: np.ndarray) -> float:
    total = float(((acc - acc.mean()) ** 2).sum())
    return 1.0 - float(((acc - predicted) ** 2).sum()) / total if total > 0 else float("nan")


def fit_pls(features: torch.Tensor | np.ndarray, acc: torch.Tensor | np.ndarray, scale: bool = False) -> PLSFit:
    """features [C, m] (rows = checkpoints), acc [C]; C >= 2 and acc not constant.
    ``scale``: standardise columns first (scikit-learn's default, the released
    scripts' choice) or not (ours); see the module docstring."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(acc, dtype=np.float64).ravel()
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"need one accuracy per checkpoint and at least 2 checkpoints, got {x.shape[0]} "
                         f"feature rows and {y.shape[0]} accuracies")
    if np.ptp(y) == 0:
        raise ValueError("accuracy is the same at every fitted checkpoint: nothing to fit")
    model = _pls(x, y, scale)
    r2 = _r2(y, model.predict(x).ravel())
    if x.shape[0] >= 3:
        loo = np.array([_pls(np.delete(x, c, 0), np.delete(y, c), scale).predict(x[c:c + 1]).ravel()[0]
                        for c in range(x.shape[0])])
        r2_loo = _r2(y, loo)
    else:
        r2_loo = float("nan")
    # in feature and accuracy units: the score s moves accuracy by y_std * q and x by p * x_std
    return PLSFit(r2=r2, r2_loo=r2_loo, intercept=float(np.ravel(model.intercept_)[0]),
                  slope=float(model.y_loadings_[0, 0] * np.ravel(model._y_std)[0]), x_mean=model._x_mean.copy(),
                  loading=model.x_loadings_[:, 0] * model._x_std)


UPDATES = ("released", "replace")
# PLS column scaling that goes with each update rule (see the module docstring)
PLS_SCALE = {"released": True, "replace": False}


def aligned_features(sigma, u: torch.Tensor, v: torch.Tensor) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """sigma [C], u [C, m], v [C, n] in checkpoint order -> (features x_t = sigma_t u_t
    [C, m] after backward sign alignment, the aligned v [C, n], the flips [C])."""
    u, v, flips = align_signs(u, v)
    features = (torch.as_tensor(sigma, dtype=torch.float32)[:, None] * u.float()).numpy()
    return features, v, flips


def alpharl_update(sigma, u: torch.Tensor, v: torch.Tensor, accuracy, target_accuracy: float,
                   update: str = "released") -> tuple[torch.Tensor, PLSFit, torch.Tensor]:
    """One module's AlphaRL step: (predicted update [m, n] fp32, the PLS fit, sign flips [C]).

    The update is x* v_T^T with a scale=True PLS (``update="released"``, as the
    released scripts) or (x* - x_T) v_T^T with a scale=False PLS (``"replace"``,
    ours: the rank-1 part of the latest update swapped for the prediction)."""
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    features, v, flips = aligned_features(sigma, u, v)
    fit = fit_pls(features, accuracy, scale=PLS_SCALE[update])
    x_star = fit.invert(target_accuracy)
    increment = x_star if update == "released" else x_star - features[-1]
    return torch.outer(torch.as_tensor(increment, dtype=torch.float32), v[-1].float()), fit, flips


def linear_in_step(features: torch.Tensor | np.ndarray, steps, target_step: float) -> tuple[np.ndarray, float]:
    """Least-squares line x_t = a + b * step per coordinate, evaluated at ``target_step``.
    Returns (x*, in-sample R^2 of the line over all coordinates)."""
    x = np.asarray(features, dtype=np.float64)
    s = np.asarray(steps, dtype=np.float64)
    if len(np.unique(s)) < 2:
        raise ValueError("linear_in_step needs checkpoints at two or more distinct steps")
    design = np.stack([np.ones_like(s), s], 1)
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    fitted = design @ coef
    total = float(((x - x.mean(0)) ** 2).sum())
    r2 = 1.0 - float(((x - fitted) ** 2).sum()) / total if total > 0 else float("nan")
    return coef[0] + coef[1] * target_step, r2
