"""Exact robust accuracy of a given classifier on 2D toys.

On a known 2D distribution a number that image-scale work can only bound by attacks
(docs/science.md section 5) is computed exactly. Notebook-style use:

    res = exact_robust_accuracy(clf, x_test, y_test, eps=0.3, norm="l2")   # res.acc, res.lower

**Robust accuracy of one classifier** f at (x, y): f(x') = y for every x' in the threat ball
B(x, eps). :func:`exact_robust_accuracy` searches a dense grid of the ball around every point
(every misclassified grid point is a *witness*: an upper bound on robust accuracy), then
closes the gap from below by interval bound propagation (IBP, Gowal et al. 2018) over a
branch-and-bound partition of the ball into squares (a *certificate*: a lower bound). For a
ReLU MLP the two meet, so `acc == lower` up to the `undecided` points it reports.

:func:`pgd_agreement` sets PGD (Madry et al. 2018) beside the exact answer: every PGD
success is a witness, so PGD can only miss points. The number these are measured against,
the best robust accuracy *any* classifier reaches on the distribution, is computed in
:mod:`dmat_core.robust.optimum2d` (two classes) and :mod:`dmat_core.robust.optimum2d_multiclass`
(K >= 3 classes).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from .threat import check_budget

Tensor = torch.Tensor


_check = check_budget   # the same budget contract as the attacks


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{j != y} z_j per row: > 0 iff the prediction is y without a tie."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return z_y - logits.scatter(1, y[:, None], -math.inf).amax(1)


# ----------------------------------------------------------------------- robust accuracy of f
def ball_grid(eps: float, norm: str = "l2", resolution: int = 33) -> Tensor:
    """Offsets (M, 2) densely covering the 2D threat ball, boundary included, float64.

    Linf: the `resolution` x `resolution` lattice of [-eps, eps]^2 (corners included).
    L2: the same lattice's points inside the disc plus points on the circle at the lattice
    spacing (the worst point of a smooth classifier lies on the boundary).
    """
    eps, norm = _check(eps, norm)
    if int(resolution) != resolution or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution}")
    t = torch.linspace(-eps, eps, int(resolution), dtype=torch.float64)
    grid = torch.cartesian_prod(t, t)                                   # (res^2, 2)
    if norm == "linf":
        return grid
    inside = grid[grid.norm(dim=1) <= eps]
    h = 2 * eps / (resolution - 1)
    n_circ = max(8, math.ceil(2 * math.pi * eps / max(h, 1e-12)))
    a = torch.arange(n_circ, dtype=torch.float64) * (2 * math.pi / n_circ)
    return torch.cat([inside, eps * torch.stack([a.cos(), a.sin()], 1)])


def _ibp_layers(model: nn.Module):
    """The Linear/ReLU layers of a model IBP can bound (nn.Linear, nn.Sequential, or a
    module whose `.net` is one, as :class:`~dmat_core.robust.classifiers.ToyMLP`); None otherwise."""
    net = getattr(model, "net", model)
    layers = [net] if isinstance(net, nn.Linear) else list(net) if isinstance(net, nn.Sequential) else None
    if not layers or not isinstance(layers[-1], nn.Linear):
        return None
    if not all(isinstance(m, (nn.Linear, nn.ReLU, nn.Identity)) for m in layers):
        return None
    return layers


@torch.no_grad()
def ibp_margin_lower(layers, lo: Tensor, hi: Tensor, y: Tensor) -> Tensor:
    """A lower bound of min over the box [lo, hi] of the margin z_y - max_{j != y} z_j, (N,).

    Interval arithmetic through Linear (centre/radius form) and ReLU (monotone); the last
    Linear is folded into each margin row W_y - W_j so its bound is not loosened twice.
    """
    c, r = (lo + hi) / 2, (hi - lo) / 2
    for m in layers[:-1]:
        if isinstance(m, nn.Linear):
            W = m.weight.to(c.dtype)
            c, r = c @ W.T + (0 if m.bias is None else m.bias.to(c.dtype)), r @ W.abs().T
        elif isinstance(m, nn.ReLU):
            l_, u_ = (c - r).clamp_min(0), (c + r).clamp_min(0)
            c, r = (l_ + u_) / 2, (u_ - l_) / 2
    last = layers[-1]
    W = last.weight.to(c.dtype)                                             # (K, H)
    b = torch.zeros(W.shape[0], dtype=c.dtype) if last.bias is None else last.bias.to(c.dtype)
    dW = W[y][:, None, :] - W[None]                                         # (N, K, H)
    db = b[y][:, None] - b[None]                                            # (N, K)
    lb = (dW * c[:, None]).sum(-1) - (dW.abs() * r[:, None]).sum(-1) + db   # (N, K)
    lb = lb.scatter(1, y[:, None], math.inf)
    return lb.amin(1)


@dataclass
class RobustAccuracy:
    """What :func:`exact_robust_accuracy` found.

    acc: robust accuracy counting every point without a witness as robust (an upper bound;
        the exact value when `undecided == 0`). lower: the certified fraction (a lower bound;
        None when the model is not a Linear/ReLU net IBP can bound). dense_acc: the dense grid
        search alone. robust: (B,) bool, no witness. status: (B,) int, 1 certified robust,
        -1 witness found, 0 undecided. x_adv: (B, 2) a witness where one was found, else the
        grid point of smallest margin. n_grid: points searched per ball.
    """

    acc: float
    lower: float | None
    dense_acc: float
    undecided: int
    robust: Tensor
    status: Tensor
    x_adv: Tensor
    n_grid: int

    def __float__(self) -> float:
        return self.acc


def _split_chunks(n: int, per: int):
    step = max(1, per)
    return [(i, min(i + step, n)) for i in range(0, n, step)]


@torch.no_grad()
def exact_robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "l2",
                          resolution: int = 33, certify: bool = True, max_depth: int = 12,
                          max_boxes: int = 2_000_000, chunk: int = 1 << 17) -> RobustAccuracy:
    """Robust accuracy of a 2D classifier by dense search of each threat ball, certified by IBP.

    1. a point misclassified at x is not robust (x is its own witness);
    2. dense search: the model on :func:`ball_grid` around every other point; a grid point
       with margin <= 0 is a witness (vectorised, `chunk` model rows at a time);
    3. (`certify`) branch and bound for the points left: the ball's bounding square is split
       into quarters up to `max_depth` times; a square whose IBP margin bound is > 0 is safe,
       the centre of an open square (moved into the ball) is tried as a witness. A point whose
       squares are all safe is certified robust.

    Args:
        model: logits (B, K) from raw 2D coordinates (no [0, 1] box); evaluated in float64.
        x: (B, 2) points. y: (B,) integer labels. eps: radius >= 0. norm: 'l2' or 'linf'.
        resolution: grid points per diameter of the ball (33: spacing eps/16).
        certify: run step 3 (only for Linear/ReLU nets; otherwise `lower` is None).
        max_depth, max_boxes: limits of the branch and bound (points still open: `undecided`).
    Returns: a :class:`RobustAccuracy` (`float(res)` is `res.acc`).
    """
    eps, norm = _check(eps, norm)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be (B, 2) points of a 2D toy, got {tuple(x.shape)}")
    y = torch.as_tensor(y).long().reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels for {x.shape[0]} points")
    f = copy.deepcopy(model).double().eval()
    x = x.detach().double()
    B = x.shape[0]
    offsets = ball_grid(eps, norm, resolution)                             # (M, 2)
    M = offsets.shape[0]
    status = torch.zeros(B, dtype=torch.long)
    x_adv = x.clone()
    # 1. clean prediction
    clean = torch.cat([margin(f(x[a:b]), y[a:b]) for a, b in _split_chunks(B, chunk)])
    status[clean <= 0] = -1
    # 2. dense search of the ball around the points still robust
    todo = torch.nonzero(status == 0).squeeze(1)
    for a, b in _split_chunks(len(todo), chunk // M):
        idx = todo[a:b]
        pts = (x[idx][:, None, :] + offsets[None]).reshape(-1, 2)          # (n*M, 2)
        m = margin(f(pts), y[idx].repeat_interleave(M)).reshape(-1, M)     # (n, M)
        m_min, j = m.min(1)
        x_adv[idx] = x[idx] + offsets[j]
        status[idx[m_min <= 0]] = -1
    dense_acc = float((status == 0).double().mean())
    # 3. branch and bound with IBP
    layers = _ibp_layers(f) if certify else None
    undecided = int((status == 0).sum())
    if layers is not None:
        status, undecided = _branch_and_bound(f, layers, x, y, eps, norm, status, x_adv,
                                              max_depth, max_boxes, chunk)
    robust = status >= 0
    lower = float((status == 1).double().mean()) if layers is not None else None
    return RobustAccuracy(float(robust.double().mean()), lower, dense_acc, undecided, robust,
                          status, x_adv.to(x.dtype), M)


def _branch_and_bound(f, layers, x, y, eps, norm, status, x_adv, max_depth, max_boxes, chunk):
    status = status.clone()
    pid = torch.nonzero(status == 0).squeeze(1)                            # one box per point
    centres = torch.zeros(len(pid), 2, dtype=torch.float64)                # box centre - x
    half = eps                                                             # box half-width
    quarters = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=torch.float64)
    for depth in range(max_depth + 1):
        if norm == "l2":   # keep the squares that meet the disc (their union covers the ball)
            near = (centres.abs() - half).clamp_min(0).norm(dim=1)
            pid, centres = pid[near <= eps], centres[near <= eps]
        lb = torch.cat([ibp_margin_lower(layers, x[pid[a:b]] + centres[a:b] - half,
                                         x[pid[a:b]] + centres[a:b] + half, y[pid[a:b]])
                        for a, b in _split_chunks(len(pid), chunk)]) if len(pid) else centres[:, 0]
        pid, centres = pid[lb <= 0], centres[lb <= 0]                      # open squares
        w = centres
        if norm == "l2":
            w = w * (eps / w.norm(dim=1).clamp_min(1e-300)).clamp(max=1.0)[:, None]
        if len(pid):
            m = torch.cat([margin(f(x[pid[a:b]] + w[a:b]), y[pid[a:b]])
                           for a, b in _split_chunks(len(pid), chunk)])
            bad = m <= 0
            x_adv[pid[bad]] = x[pid[bad]] + w[bad]
            status[pid[bad]] = -1
            alive = status[pid] == 0
            pid, centres = pid[alive], centres[alive]
        if len(pid) == 0 or depth == max_depth or 4 * len(pid) > max_boxes:
            break
        half = half / 2
        centres = (centres[:, None, :] + half * quarters[None]).reshape(-1, 2)
        pid = pid.repeat_interleave(4)
    open_pts = torch.unique(pid)
    certified = status == 0
    certified[open_pts] = False
    status[certified] = 1
    return status, len(open_pts)


def pgd_agreement(model: nn.Module, x: Tensor, y: Tensor, res: RobustAccuracy, eps: float,
                  norm: str = "l2", steps: int = 50, restarts: int = 3, seed: int = 0) -> dict:
    """PGD (Madry et al. 2018, CE loss, random starts, `clip=None`) beside an exact result.

    Every PGD success is a true witness, so `pgd_acc >= acc` and `pgd_only` (points PGD breaks
    that the exact search calls robust) must be 0; `exact_only` counts the points PGD misses.
    """
    from .attacks import pgd
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        param = next(model.parameters(), None)
        dtype = x.dtype if param is None else param.dtype
        xa = pgd(model, x.to(dtype), y, eps=eps, norm=norm, steps=steps, restarts=restarts, clip=None)
    with torch.no_grad():
        pgd_robust = model(xa).argmax(1) == y
    exact = res.robust
    return {"pgd_acc": float(pgd_robust.double().mean()), "exact_acc": res.acc,
            "pgd_only": int((exact & ~pgd_robust).sum()),
            "exact_only": int((~exact & pgd_robust).sum()),
            "gap": float(pgd_robust.double().mean()) - res.acc}


__all__ = ["exact_robust_accuracy", "RobustAccuracy", "ball_grid", "ibp_margin_lower", "margin",
           "pgd_agreement"]
