"""Linear classifiers in the two-class Gaussian world, exactly: robust accuracy, the best robust
linear classifier, the worst-case perturbation and adversarial training with a closed-form inner max.

World (:class:`~dmat_core.toys.gaussians.GaussianWorld`; Schmidt, Santurkar, Tsipras, Talwar &
Madry, NeurIPS 2018): y uniform on {-1, +1}, `x | y ~ N(y mu, Sigma)`. A classifier
`sign(w.x + b)` is robust at (x, y) against `||delta|| <= eps` iff `y (w.x + b) >= eps ||w||_*`,
with `||.||_*` the dual norm (`||w||_1` for an Linf threat, `||w||_2` for L2), and the worst
perturbation is `delta = -y eps dir(w)`, `dir = sign(w)` (Linf) or `w / ||w||_2` (L2). Since
`y (w.x + b) ~ N(w.mu + y b, w' Sigma w)`, the robust accuracy is exact (:func:`robust_accuracy`):

    R(w, b) = 1/2 sum_y Phi((w.mu + y b - eps ||w||_*) / sqrt(w' Sigma w)).

**The best linear robust classifier** (:func:`best_linear_robust`). With `m = w.mu - eps||w||_*
> 0`, `b -> Phi((m + b)/s) + Phi((m - b)/s)` is symmetric and decreasing in |b|, so b = 0; and
if no w has m > 0 no linear classifier beats 1/2 (a constant one reaches it). Then one maximises
the scale-free `(w.mu - eps||w||_*) / ||w||_Sigma`, i.e. (when positive) `w.mu - eps||w||_*`
over the ellipsoid `w' Sigma w <= 1`. With `eps||w||_* = max_{||z|| <= eps} z.w` this is a
max-min of the bilinear `(mu - z).w` over two compact convex sets, so max and min exchange
(von Neumann / Sion) and

    max_w min_z (mu - z).w / ||w||_Sigma = min_{||z|| <= eps} ||mu - z||_{Sigma^-1} =: alpha,

a convex problem in z: the adversary moves the class means towards each other by z and the
answer is the LDA direction of the moved means, `w = Sigma^-1 (mu - z*)`, with robust accuracy
`Phi(alpha)`. L2: the KKT condition gives `z = (I + lam Sigma)^-1 mu`, so `w` is proportional to
the ridge-LDA direction `(Sigma + I/lam)^-1 mu`, with `lam` the root of `||z(lam)||_2 = eps` (a
1-D search, :func:`scipy.optimize.brentq`). Linf: a box-constrained convex quadratic, dual to a
lasso, solved exactly by a primal-dual active-set iteration (fallback L-BFGS-B; convex, so one
start suffices); for `Sigma = s^2 I` it is the soft-thresholding `w = sign(mu) max(|mu| - eps, 0)`.
Every feasible z gives an upper bound `Phi(||mu - z||_{Sigma^-1})` and every w a lower bound
`R(w, 0)`: the result carries both, so their gap certifies the solver.
For equal covariances no classifier at all does better (Bhagoji, Cullina & Mittal, NeurIPS 2019).

**Adversarial training** (:func:`train_linear`) of the 2-logit model `z(x) = (-f/2, f/2)`, `f =
w.x + b` (:func:`two_logit`; its cross-entropy is the logistic loss `softplus(-y f)`), with the
inner maximisations in closed form: PGD-AT (Madry et al. 2018) evaluates the loss at the worst
point above; TRADES (Zhang et al. 2019) needs `max_delta KL(p(x) || p(x + delta))`, a Bregman
divergence of softplus, convex in the logit shift `t = w.delta` in `[-eps||w||_*, eps||w||_*]`,
hence attained at one of the two ends.
tests/test_linear_robust.py checks both against dmat's own PGD and TRADES attacks.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import brentq, minimize
from torch import nn

from ..toys.gaussians import check_covariance, signed_labels
from ..toys.train import lr_at
from .threat import check_budget

Tensor = torch.Tensor
F64 = torch.float64
METHODS = ("standard", "pgd-at", "trades")


def _f64(a) -> Tensor:
    return torch.as_tensor(a, dtype=F64)


def dual_norm(w: Tensor, norm: str) -> Tensor:
    """||w||_1 for an Linf threat, ||w||_2 for L2 (differentiable; last axis)."""
    return w.abs().sum(-1) if norm == "linf" else w.norm(dim=-1)


def dual_direction(w, norm: str) -> Tensor:
    """The unit-threat-norm delta maximising w.delta: sign(w) (Linf) or w / ||w||_2 (L2), 0 for w = 0."""
    _, norm = check_budget(0.0, norm)
    w = _f64(w)
    return w.sign() if norm == "linf" else w / w.norm().clamp_min(1e-300)


def worst_perturbation(w, x, y, eps: float, norm: str = "linf") -> Tensor:
    """The closed-form worst perturbation of `sign(w.x + b)` at (x, y): delta = -y eps dir(w), (n, d)."""
    eps, norm = check_budget(eps, norm)
    x, y = _f64(x), signed_labels(y).to(F64)
    return -eps * y[:, None] * dual_direction(w, norm)[None].expand_as(x)


def robust_margin(w, b, x, y, eps: float, norm: str = "linf") -> Tensor:
    """y (w.x + b) - eps ||w||_*, (n,): the point is robust iff it is >= 0 (exact per point)."""
    eps, norm = check_budget(eps, norm)
    w = _f64(w)
    return signed_labels(y).to(F64) * (_f64(x) @ w + float(b)) - eps * dual_norm(w, norm)


def robust_accuracy(w, b, mu, Sigma, eps: float, norm: str = "linf", per_class: bool = False):
    """Exact robust accuracy of sign(w.x + b) in the world N(y mu, Sigma): the mean over y = -1, +1
    of Phi((w.mu + y b - eps ||w||_*) / sqrt(w' Sigma w)) (with `per_class`, the pair (y=-1, y=+1)).
    w = 0 (a constant classifier) is robust on a class iff its margin y b is > 0."""
    eps, norm = check_budget(eps, norm)
    w, mu, Sigma = _f64(w).reshape(-1), _f64(mu).reshape(-1), _f64(Sigma)
    if w.shape != mu.shape or mu.shape[0] < 1:
        raise ValueError(f"w and mu must be (d,) with d >= 1, got {tuple(w.shape)} and {tuple(mu.shape)}")
    check_covariance(Sigma, mu.shape[0])
    s = float(w @ Sigma @ w) ** 0.5
    m = float(w @ mu - eps * dual_norm(w, norm))
    acc = []
    for y in (-1, 1):
        margin = m + y * float(b)
        acc.append(float(margin > 0) if s == 0 else 0.5 * math.erfc(-margin / s / math.sqrt(2)))
    return tuple(acc) if per_class else sum(acc) / 2


class LinearOptimum(NamedTuple):
    """The best linear robust classifier: `w` (||w||_2 = 1, or 0 when no w beats 1/2), `b`,
    `robust_accuracy` = R(w, b) (achieved), `upper` = Phi(alpha) (certified bound, >= it),
    `alpha` = min over the ball of ||mu - z||_{Sigma^-1}, `z` the adversary's mean shift."""

    w: Tensor
    b: float
    robust_accuracy: float
    upper: float
    alpha: float
    z: Tensor


def _min_shift(mu: np.ndarray, Sigma: np.ndarray, eps: float, norm: str) -> np.ndarray:
    """argmin_{||z|| <= eps} (mu - z)' Sigma^-1 (mu - z) (see the module docstring)."""
    if eps == 0:
        return np.zeros_like(mu)
    if norm == "l2":
        if np.linalg.norm(mu) <= eps:
            return mu.copy()
        lam, V = np.linalg.eigh(Sigma)
        p = V.T @ mu
        size = lambda t: np.linalg.norm(p / (1 + t * lam)) - eps      # noqa: E731, decreasing in t
        hi = 1.0 / lam.max()
        while size(hi) > 0:
            hi *= 4
        t = brentq(size, 0.0, hi, xtol=1e-15 * hi, rtol=4 * np.finfo(float).eps, maxiter=500)
        return V @ (p / (1 + t * lam))
    return _box_shift(mu, Sigma, eps)


def _active_set_solve(mu: np.ndarray, Sigma: np.ndarray, eps: float, s: np.ndarray):
    """Given the signs s of w (0 off the active set A), the exact w, z and whether they satisfy KKT."""
    A, w = s != 0, np.zeros_like(mu)
    if A.any():
        w[A] = np.linalg.solve(Sigma[np.ix_(A, A)], mu[A] - eps * s[A])
    z = mu - Sigma @ w
    tol = 1e-10 * (eps + np.abs(mu).max())
    ok = bool(np.all(np.abs(z[~A]) <= eps + tol) and np.all(w * s >= -tol))
    z[A] = eps * s[A]
    return w, z, ok


def _box_shift(mu: np.ndarray, Sigma: np.ndarray, eps: float) -> np.ndarray:
    """The Linf case, min over |z_i| <= eps of ||mu - z||_{Sigma^-1}, via w = Sigma^-1 (mu - z):
    KKT says z_j = eps sign(w_j) where w_j != 0 and |z_j| <= eps where w_j = 0 (the lasso
    `min 1/2 w'Sigma w - mu.w + eps ||w||_1`). A primal-dual active-set iteration (Fan, Jiao & Lu
    2014; sets from `z + c w`, c the smallest eigenvalue of Sigma) solves it exactly in a few
    linear solves. Where the sets cycle, L-BFGS-B on the box (convex: one start) finds the
    active set and one more exact solve on it finishes (else its own answer is returned)."""
    c = float(np.linalg.eigvalsh(Sigma)[0])
    w, z, key = np.zeros_like(mu), mu.copy(), None
    for _ in range(100):
        v = z + c * w
        s = np.sign(v) * (np.abs(v) > eps)
        if key is not None and np.array_equal(s, key):
            if ok:
                return np.clip(z, -eps, eps)
            break
        key = s
        w, z, ok = _active_set_solve(mu, Sigma, eps, s)
    P = np.linalg.inv(Sigma)
    fun = lambda z: ((mu - z) @ P @ (mu - z), -2 * P @ (mu - z))      # noqa: E731
    res = minimize(fun, np.clip(z, -eps, eps), jac=True, method="L-BFGS-B", bounds=[(-eps, eps)] * mu.shape[0],
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20000})
    z = np.clip(res.x, -eps, eps)
    s = np.sign(z) * (np.abs(z) >= eps * (1 - 1e-9))
    _, z2, ok = _active_set_solve(mu, Sigma, eps, s)
    return np.clip(z2, -eps, eps) if ok else z


def best_linear_robust(mu, Sigma, eps: float, norm: str = "linf") -> LinearOptimum:
    """The linear classifier of highest robust accuracy in the world N(y mu, Sigma) (Sigma positive
    definite): b = 0 and w = Sigma^-1 (mu - z*), z* the shift of the class means the adversary's
    ball allows that brings them closest in Mahalanobis distance (module docstring)."""
    eps, norm = check_budget(eps, norm)
    mu, Sigma = _f64(mu).reshape(-1), _f64(Sigma)
    if mu.shape[0] < 1:
        raise ValueError("mu must have d >= 1 entries")
    check_covariance(Sigma, mu.shape[0])
    lam = torch.linalg.eigvalsh(Sigma)
    if lam.min() <= 1e-12 * lam.max():
        raise ValueError("Sigma must be positive definite for the best linear robust classifier")
    z = _f64(_min_shift(mu.numpy(), Sigma.numpy(), eps, norm))
    u = mu - z
    alpha = float(u @ torch.linalg.solve(Sigma, u)) ** 0.5
    upper = 0.5 * math.erfc(-alpha / math.sqrt(2))
    w = torch.linalg.solve(Sigma, u)
    if alpha <= 1e-12 * float(mu.norm()) or float(w @ mu - eps * dual_norm(w, norm)) <= 0:
        w, b = torch.zeros_like(mu), 1.0                              # a constant classifier: 1/2
    else:
        w, b = w / w.norm(), 0.0
    return LinearOptimum(w, b, robust_accuracy(w, b, mu, Sigma, eps, norm), max(upper, 0.5), alpha, z)


# --------------------------------------------------------------------- the 2-logit model
def two_logit(w, b=0.0) -> nn.Linear:
    """sign(w.x + b) as a float64 nn.Linear(d, 2) with logits (-f/2, f/2): class index 1 is y = +1,
    and its cross-entropy is the logistic loss softplus(-y f). For dmat's attacks (clip=None)."""
    w = _f64(w).reshape(-1)
    lin = nn.Linear(w.shape[0], 2, dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([-w / 2, w / 2]))
        lin.bias.copy_(torch.tensor([-float(b) / 2, float(b) / 2], dtype=F64))
    return lin


def _ce(u: Tensor, ls: float) -> Tensor:
    """Label-smoothed cross-entropy of the 2-logit model as a function of the margin u = y f."""
    return (1 - ls / 2) * F.softplus(-u) + ls / 2 * F.softplus(u)


def _kl(f: Tensor, f2: Tensor) -> Tensor:
    """KL(Bern(sigmoid f) || Bern(sigmoid f2)), elementwise, stable."""
    return torch.sigmoid(f) * (F.softplus(-f2) - F.softplus(-f)) + torch.sigmoid(-f) * (F.softplus(f2) - F.softplus(f))


def trades_perturbation(w, b, x, eps: float, norm: str = "linf") -> Tensor:
    """argmax_{||delta|| <= eps} KL(p(x) || p(x + delta)) of the 2-logit model: +-eps dir(w), (n, d)."""
    eps, norm = check_budget(eps, norm)
    w, x = _f64(w).reshape(-1), _f64(x)
    f, a = x @ w + float(b), eps * dual_norm(w, norm)
    side = torch.where(_kl(f, f + a) >= _kl(f, f - a), 1.0, -1.0).to(F64)
    return eps * side[:, None] * dual_direction(w, norm)[None]


def linear_at_loss(w: Tensor, b: Tensor, x: Tensor, y: Tensor, *, method: str = "pgd-at", eps: float = 0.0,
                   norm: str = "linf", beta: float = 5.0, label_smoothing: float = 0.0) -> Tensor:
    """The batch loss of the 2-logit model (differentiable in w, b), inner maximisation in closed form:
    `standard` CE_ls(f); `pgd-at` CE_ls at the worst point of the CE (dmat's ``pgd_at``: the attack
    maximises plain CE, the outer loss is smoothed); `trades` CE_ls(f) + beta * max over the two
    ends of KL(p(x) || p(x + delta)) (dmat's ``trades``). y in {-1, +1} (float)."""
    f = x @ w + b
    if method == "standard":
        return _ce(y * f, label_smoothing).mean()
    a = eps * dual_norm(w, norm)
    if method == "pgd-at":
        return _ce(y * f - a, label_smoothing).mean()
    if method == "trades":
        kl = torch.maximum(_kl(f, f + a), _kl(f, f - a))
        return _ce(y * f, label_smoothing).mean() + beta * kl.mean()
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


class LinearFit(NamedTuple):
    """A trained linear classifier: `w` (d,), `b`, and the training loss at every step."""

    w: Tensor
    b: float
    losses: list


def train_linear(x, y, *, method: str = "pgd-at", eps: float = 0.0, norm: str = "linf", steps: int = 500,
                 lr: float = 0.05, beta: float = 5.0, seed: int = 0, weight_decay: float = 0.0,
                 label_smoothing: float = 0.0, fit_bias: bool = True, batch: int | None = None) -> LinearFit:
    """Adversarial training of sign(w.x + b) on (x, y) (y in {-1, +1} or {0, 1}) with
    :func:`linear_at_loss`: Adam, cosine-decayed learning rate (:func:`~dmat_core.toys.train.lr_at`),
    full batch unless `batch`, float64, L2 penalty `weight_decay/2 ||w||^2`. The start is
    `w ~ N(0, 1e-6 I/d)` from `seed` (which also draws minibatches). Returns a :class:`LinearFit`."""
    eps, norm = check_budget(eps, norm)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    x, y = _f64(x), signed_labels(y).to(F64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"need x (n, d) with n, d >= 1 and n labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    if int(steps) != steps or steps < 1 or (batch is not None and (int(batch) != batch or batch < 1)):
        raise ValueError(f"steps and batch must be integers >= 1, got {steps}, {batch}")
    if not (lr > 0 and beta >= 0 and weight_decay >= 0 and 0 <= label_smoothing < 1):
        raise ValueError("need lr > 0, beta >= 0, weight_decay >= 0 and 0 <= label_smoothing < 1")
    g = torch.Generator().manual_seed(seed)
    n, d = x.shape
    w = (1e-3 / math.sqrt(d) * torch.randn(d, dtype=F64, generator=g)).requires_grad_(True)
    b = torch.zeros((), dtype=F64, requires_grad=fit_bias)
    opt = torch.optim.Adam([w, b] if fit_bias else [w], lr=lr)
    losses = []
    for t in range(int(steps)):
        for group in opt.param_groups:
            group["lr"] = lr_at(t, int(steps), lr, 0)
        idx = slice(None) if batch is None else torch.randint(n, (int(batch),), generator=g)
        loss = linear_at_loss(w, b, x[idx], y[idx], method=method, eps=eps, norm=norm, beta=beta,
                              label_smoothing=label_smoothing)
        total = loss + weight_decay / 2 * (w ** 2).sum()
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return LinearFit(w.detach().clone(), float(b.detach()), losses)


__all__ = ["robust_accuracy", "robust_margin", "best_linear_robust", "LinearOptimum", "worst_perturbation",
           "trades_perturbation", "dual_norm", "dual_direction", "two_logit", "linear_at_loss",
           "train_linear", "LinearFit", "METHODS"]
