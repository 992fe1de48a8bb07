"""The best robust accuracy any classifier can reach on a known 2D distribution, two classes.

Size: one module of about 340 lines on purpose: one algorithm: the grid of cells, its conflict
graph, the max flow and the two bounds only make sense together.

The reference against which the exact robust accuracy of one classifier
(:mod:`dmat_core.robust.exact2d`) is read; image-scale work can only bound it (docs/science.md
section 5). Notebook-style use:

    opt = bayes_robust_accuracy(two_class_mixture, eps=0.3, norm="l2")     # opt["value"], ["lower"]

**Optimal robust accuracy over all classifiers**, two classes with measures mu0, mu1
(priors included, mu0 + mu1 = 1). Points x0 of class 0 and x1 of class 1 *conflict* when their
balls intersect, ||x0 - x1|| <= 2 eps: no classifier is robust at both. A classifier is
robust on two sets S0, S1 only if no pair conflicts, and any such pair of sets is reached
(label the eps-neighbourhood of S0 with 0, the rest 1). For discrete measures this makes

    A*_eps = max { mu0(S0) + mu1(S1) : no conflict between S0 and S1 }
           = 1 - (maximum flow from mu0 to mu1 through the conflict edges)      (Konig)

(Bhagoji, Cullina & Mittal, NeurIPS 2019; Pydi & Jog, ICML 2020: the flow is the optimal
coupling of mu0 and mu1 with cost 1{||x0 - x1|| > 2 eps}; with equal priors
A* = (1 + D_eps(P0, P1)) / 2, D_eps the eps-expanded total variation). A continuous mixture is
discretised on a grid of square cells with *exact* class masses (products of normal CDFs).
Calling two cells in conflict when their *farthest* points are within 2 eps relaxes the
problem (an upper bound, plus the mass outside the grid); when their *closest* points are, it
restricts it (a lower bound: the kept cells are robust under an actual classifier):

    A*(grid, closest-point conflicts) <= A*_eps(P) <= A*(grid, farthest-point conflicts) + tail.

The robust optimum is not the robust accuracy of the Bayes classifier (:func:`bayes_classifier`):
it gives up thin or low-mass regions whose points cannot be kept robust. For K >= 3 classes the
graph is K-partite and the optimum NP-hard in general: :mod:`dmat_core.robust.optimum2d_multiclass`
brackets it between certified bounds.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
from torch import nn

from .exact2d import _check, _split_chunks

Tensor = torch.Tensor
_SCALE = 2 ** 30          # masses -> integer capacities for the max flow (total mass <= 1)


def _vec_norm(v: Tensor, norm: str) -> Tensor:
    return v.abs().amax(-1) if norm == "linf" else v.norm(dim=-1)


# ----------------------------------------------------------------------- the Bayes classifier
class BayesClassifier(nn.Module):
    """The exact Bayes classifier of a labelled mixture: logits log pi_c + log p(x | c)."""

    def __init__(self, dist):
        super().__init__()
        self.dist = dist
        K = dist.num_classes
        prior = torch.zeros(K, dtype=torch.float64).index_add_(0, dist.labels, dist.weights)
        self.register_buffer("log_prior", prior.log())

    def forward(self, x: Tensor) -> Tensor:
        cols = [self.dist.log_prob(x.double(), 0.0, torch.full((x.shape[0],), c, dtype=torch.long))
                for c in range(self.dist.num_classes)]
        return (torch.stack(cols, 1) + self.log_prior).to(x.dtype)


def bayes_classifier(dist) -> BayesClassifier:
    """The clean-optimal classifier argmax_c pi_c p(x | c) of a labelled mixture (exact)."""
    return BayesClassifier(dist)


# ----------------------------------------------------------------------- optimal robust accuracy
def _max_flow(n: int, src: np.ndarray, dst: np.ndarray, cap: np.ndarray, s: int, t: int):
    """Maximum s-t flow with integer capacities; returns (value, source side of a min cut).

    scipy's Dinic when scipy is installed, otherwise a pure-Python Dinic (same answer,
    for small graphs).
    """
    try:
        from scipy.sparse import csr_array
        from scipy.sparse.csgraph import breadth_first_order, maximum_flow
    except ImportError:
        return _max_flow_python(n, src, dst, cap, s, t)
    C = csr_array((cap.astype(np.int32), (src, dst)), shape=(n, n))
    res = maximum_flow(C, s, t, method="dinic")
    R = (C - res.flow).tocsr()                                             # residual capacities
    R.data = (R.data > 0).astype(np.int8)
    R.eliminate_zeros()
    side = np.zeros(n, dtype=bool)
    side[breadth_first_order(R, s, directed=True, return_predecessors=False)] = True
    return int(res.flow_value), side


def _max_flow_python(n, src, dst, cap, s, t):
    head = [[] for _ in range(n)]
    to, rc = [], []
    for u, v, c in zip(src.tolist(), dst.tolist(), cap.tolist()):
        head[u].append(len(to)), to.append(v), rc.append(int(c))
        head[v].append(len(to)), to.append(u), rc.append(0)
    flow = 0
    while True:
        level = [-1] * n
        level[s] = 0
        q = deque([s])
        while q:
            u = q.popleft()
            for e in head[u]:
                if rc[e] > 0 and level[to[e]] < 0:
                    level[to[e]] = level[u] + 1
                    q.append(to[e])
        if level[t] < 0:
            side = np.array([lv >= 0 for lv in level])
            return flow, side
        it = [0] * n

        def push(u, f):
            if u == t:
                return f
            while it[u] < len(head[u]):
                e = head[u][it[u]]
                v = to[e]
                if rc[e] > 0 and level[v] == level[u] + 1:
                    got = push(v, min(f, rc[e]))
                    if got:
                        rc[e] -= got
                        rc[e ^ 1] += got
                        return got
                it[u] += 1
            return 0
        while True:
            f = push(s, 1 << 62)
            if not f:
                break
            flow += f


def _independent_set(w0: np.ndarray, w1: np.ndarray, e0: np.ndarray, e1: np.ndarray):
    """Max-weight set of class-0 and class-1 nodes with no conflict edge (e0[i], e1[i]).

    Returns (keep0, keep1, slack): the optimal sets of the integer-rounded problem, and the
    most their float weight can fall short of the float optimum (rounding)."""
    n0, n1 = len(w0), len(w1)
    s, t = n0 + n1, n0 + n1 + 1
    c0 = np.rint(w0 * _SCALE).astype(np.int64)
    c1 = np.rint(w1 * _SCALE).astype(np.int64)
    if c0.sum() + c1.sum() >= 2 ** 31 - 1:
        raise ValueError("total mass must be <= 1")
    i32 = np.int32
    src = np.concatenate([np.full(n0, s, i32), e0.astype(i32), n0 + np.arange(n1, dtype=i32)])
    dst = np.concatenate([np.arange(n0, dtype=i32), n0 + e1.astype(i32), np.full(n1, t, i32)])
    cap = np.concatenate([c0.astype(i32), np.full(len(e0), 2 ** 31 - 1, i32), c1.astype(i32)])
    _, side = _max_flow(n0 + n1 + 2, src, dst, cap, s, t)
    keep0, keep1 = side[:n0], ~side[n0:n0 + n1]       # the cut removes the others (a cover)
    return keep0, keep1, (n0 + n1) / _SCALE


def optimal_robust_accuracy_discrete(x0, w0, x1, w1, eps: float, norm: str = "l2") -> dict:
    """The best robust accuracy any classifier reaches on two discrete class measures.

    x0 (n0, d) with masses w0 (class 0), x1 (n1, d) with w1 (class 1), sum of masses <= 1.
    Exact (Bhagoji et al. 2019): total mass minus the maximum flow through the conflict
    graph ||x0 - x1|| <= 2 eps. Returns `value`, the robust sets `keep0`, `keep1` (bool) and
    `slack` (how much rounding the masses to multiples of 2^-30 can cost, <= (n0 + n1) 2^-30).
    """
    eps, norm = _check(eps, norm)
    x0, x1 = torch.as_tensor(x0, dtype=torch.float64), torch.as_tensor(x1, dtype=torch.float64)
    w0 = np.asarray(w0, dtype=np.float64).reshape(-1)
    w1 = np.asarray(w1, dtype=np.float64).reshape(-1)
    if (w0 < 0).any() or (w1 < 0).any() or w0.sum() + w1.sum() > 1 + 1e-9:
        raise ValueError("masses must be >= 0 with a total <= 1")
    e0, e1 = [], []
    for a, b in _split_chunks(len(x0), max(1, 2 ** 22 // max(len(x1), 1))):
        d = _vec_norm(x0[a:b, None, :] - x1[None], norm)                   # (b - a, n1)
        i, j = torch.nonzero(d <= 2 * eps, as_tuple=True)
        e0.append(i.numpy() + a), e1.append(j.numpy())
    e0 = np.concatenate(e0) if e0 else np.zeros(0, np.int64)
    e1 = np.concatenate(e1) if e1 else np.zeros(0, np.int64)
    keep0, keep1, slack = _independent_set(w0, w1, e0, e1)
    return {"value": float(w0[keep0].sum() + w1[keep1].sum()), "keep0": keep0, "keep1": keep1,
            "slack": slack, "n_edges": len(e0)}


def _axis_stds(dist) -> Tensor:
    """(K, 2) standard deviation of each component along x and y; error if not axis-aligned."""
    K, d = dist.means.shape
    if d != 2:
        raise ValueError(f"the optimal robust accuracy is computed for 2D mixtures, got d={d}")
    r = dist.U.shape[2]
    if r == 0:
        return dist.nu.sqrt()[:, None].expand(K, 2).clone()
    U = dist.U.abs()
    if r != 2 or not torch.allclose(U.amax(1), torch.ones(K, 2, dtype=U.dtype), atol=1e-12):
        raise ValueError("cell masses are exact only for isotropic or axis-aligned components")
    var = torch.einsum("kdr,kr->kd", dist.U ** 2, dist.lam)               # variance per axis
    return var.sqrt()


def _interval_mass(edges: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(K, n) mass of N(mean_k, std_k^2) in each interval [edges[i], edges[i+1]] (std 0: a point)."""
    z = edges[None, :] - mean[:, None]                                     # (K, n + 1)
    s = std[:, None]
    cdf = torch.where(s > 0, torch.special.ndtr(z / s.clamp_min(1e-300)), (z >= 0).double())
    return (cdf[:, 1:] - cdf[:, :-1]).clamp_min(0)


def class_cell_masses(dist, h: float, box=None, n_std: float = 6.5):
    """Exact class masses of the cells of a square grid of side h over `box`.

    Returns (mu (K, ny, nx) float64 with class priors included, edges_x, edges_y, tail),
    tail = mixture mass outside the box. `box` = (x0, x1, y0, y1); default: the means'
    bounding box widened by n_std of the widest component, snapped to the grid.
    """
    std = _axis_stds(dist)
    if box is None:
        pad = n_std * float(std.max())
        lo, hi = dist.means.amin(0) - pad, dist.means.amax(0) + pad
        box = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    x0, x1, y0, y1 = box
    nx, ny = max(1, math.ceil((x1 - x0) / h)), max(1, math.ceil((y1 - y0) / h))
    ex = x0 + h * torch.arange(nx + 1, dtype=torch.float64)
    ey = y0 + h * torch.arange(ny + 1, dtype=torch.float64)
    mx = _interval_mass(ex, dist.means[:, 0], std[:, 0])                   # (K, nx)
    my = _interval_mass(ey, dist.means[:, 1], std[:, 1])                   # (K, ny)
    per = dist.weights[:, None, None] * my[:, :, None] * mx[:, None, :]   # (K, ny, nx)
    mu = torch.stack([per[dist.labels == c].sum(0) for c in range(dist.num_classes)])
    tail = float((dist.weights * (1 - mx.sum(1) * my.sum(1))).sum().clamp_min(0))
    return mu, ex, ey, tail


def conflict_offsets(h: float, radius: float, norm: str, mode: str = "centre") -> np.ndarray:
    """(M, 2) offsets (rows, columns) of the cells of a grid of side h within `radius` of a cell,
    measured between centres (`centre`), closest points (`min`) or farthest points (`max`)."""
    R = int(math.floor(radius / h + 1e-9)) + 1
    d = np.arange(-R, R + 1)
    di, dj = np.meshgrid(d, d, indexing="ij")
    off = np.stack([di.ravel(), dj.ravel()], 1)
    gap = {"centre": np.abs(off), "min": np.maximum(np.abs(off) - 1, 0), "max": np.abs(off) + 1}[mode]
    dist = gap.max(1) * h if norm == "linf" else np.sqrt((gap.astype(np.float64) ** 2).sum(1)) * h
    return off[dist <= radius * (1 + 1e-12)]


def _grid_conflicts(act0: np.ndarray, act1: np.ndarray, h: float, radius: float, norm: str,
                    mode: str = "centre"):
    """Conflict edges between active cells of a grid of side h, as (class-0 id, class-1 id).

    Two cells conflict when the distance between them is <= radius, measured between their
    centres (`centre`), their closest points (`min`: some pair of points conflicts) or their
    farthest points (`max`: every pair of points conflicts).
    """
    off = conflict_offsets(h, radius, norm, mode)
    ny, nx = act0.shape
    r0, c0 = np.nonzero(act0)
    id0 = np.arange(len(r0))
    id0 = id0.astype(np.int32)
    id1 = -np.ones(act1.shape, dtype=np.int32)
    id1[act1] = np.arange(int(act1.sum()), dtype=np.int32)
    e0, e1 = [np.zeros(0, np.int32)], [np.zeros(0, np.int32)]
    for a, b in off:
        r, c = r0 + a, c0 + b
        ok = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
        j = np.full(len(r0), -1, dtype=np.int32)
        j[ok] = id1[r[ok], c[ok]]
        hit = j >= 0
        e0.append(id0[hit]), e1.append(j[hit])
    return np.concatenate(e0), np.concatenate(e1)


def _light_cells(m: np.ndarray, budget: float) -> np.ndarray:
    """Mask of the lightest cells whose total mass is <= budget (dropped from the graph)."""
    flat = m.ravel()
    order = np.argsort(flat, kind="stable")
    light = np.zeros(flat.shape, dtype=bool)
    light[order[np.cumsum(flat[order]) <= budget]] = True
    return light.reshape(m.shape)


def _grid_optimum(mu: np.ndarray, h: float, radius: float, norm: str, mode: str,
                  drop: float = 1e-5):
    act0 = ~_light_cells(mu[0], drop) & (mu[0] * _SCALE >= 0.5)
    act1 = ~_light_cells(mu[1], drop) & (mu[1] * _SCALE >= 0.5)
    e0, e1 = _grid_conflicts(act0, act1, h, radius, norm, mode)
    w0, w1 = mu[0][act0], mu[1][act1]
    keep0, keep1, slack = _independent_set(w0, w1, e0, e1)
    k0, k1 = np.zeros_like(act0), np.zeros_like(act1)
    k0[act0], k1[act1] = keep0, keep1
    dropped = float(mu[0][~act0].sum() + mu[1][~act1].sum())   # the lightest cells, <= 2 drop
    return float(w0[keep0].sum() + w1[keep1].sum()), k0, k1, slack + dropped, len(e0)


def bayes_robust_accuracy(dist, eps: float, norm: str = "l2", h: float = 0.03, box=None,
                          n_std: float = 6.5) -> dict:
    """The best robust accuracy any classifier can reach on a 2-class 2D mixture, certified.

    `dist`: a :class:`~dmat_core.toys.mixtures.GaussianMixture` in 2D with `labels` in {0, 1} and
    isotropic or axis-aligned components. The plane is cut into square cells of side `h`
    with exact class masses; the optimum over the cells (a max flow, module docstring) is
    computed three times, with two cells in conflict when the distance between them is <= 2 eps
    measured between

    * their farthest points (every pair of points conflicts): a relaxation, so
      `upper` = that optimum + tail + slack >= A*_eps(dist);
    * their closest points (some pair may conflict): the robust cells it keeps are kept by an
      actual classifier (label 0 within eps of the class-0 cells), so `lower` <= A*_eps(dist);
    * their centres: `value`, the point estimate (error within [lower, upper]).

    The lightest cells of each class, 1e-5 of its mass, are left out of the graph (counted
    as lost, and added to `slack` in the upper bound). Returns a dict with `value`, `lower`,
    `upper`, `tail` (mass outside the grid), `slack` (those cells and the rounding of masses to
    2^-30), `h`, `n_cells`, `n_edges` (centre graph), `bayes_grid`
    (sum over cells of the larger class mass: the clean optimum of the grid, eps = 0), `keep`
    ((2, ny, nx) bool: the cells each class keeps robustly in the point estimate) and the grid
    `edges` (x, y) for plots.
    """
    eps, norm = _check(eps, norm)
    if dist.num_classes != 2:
        raise ValueError(f"bayes_robust_accuracy is exact for 2 classes, got {dist.num_classes}: "
                         "use dmat_core.robust.optimum2d_multiclass.multiclass_robust_accuracy "
                         "(certified bounds)")
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"h must be a positive grid step, got {h}")
    mu, ex, ey, tail = class_cell_masses(dist, h, box, n_std)
    if mu.shape[1] * mu.shape[2] > 4_000_000:
        raise ValueError(f"grid of {mu.shape[1]} x {mu.shape[2]} cells is too fine; raise h")
    mu = mu.numpy()
    value, k0, k1, slack, n_edges = _grid_optimum(mu, h, 2 * eps, norm, "centre")
    lower, *_ = _grid_optimum(mu, h, 2 * eps, norm, "min")
    up, _, _, slack_up, _ = _grid_optimum(mu, h, 2 * eps, norm, "max")
    return {"value": value, "lower": lower, "upper": min(1.0, up + tail + slack_up), "eps": eps,
            "norm": norm, "h": h, "tail": tail, "slack": slack, "n_cells": int(mu[0].size),
            "n_edges": n_edges, "bayes_grid": float(np.maximum(mu[0], mu[1]).sum()),
            "keep": np.stack([k0, k1]), "edges": (ex.numpy(), ey.numpy())}


__all__ = ["bayes_classifier", "BayesClassifier", "bayes_robust_accuracy",
           "optimal_robust_accuracy_discrete", "class_cell_masses", "conflict_offsets"]
