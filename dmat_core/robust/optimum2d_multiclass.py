"""The best robust accuracy any classifier can reach on K >= 3 classes of a 2D mixture, certified.

:func:`~dmat_core.robust.optimum2d.bayes_robust_accuracy` solves two classes exactly (a max flow).
With K classes the reasoning holds pairwise: a classifier is robust on sets S_1, ..., S_K
(every point of S_c keeps label c in its whole eps-ball) only if their eps-neighbourhoods are
pairwise disjoint, and any such sets are reached (label B(S_c, eps) with c, the rest anyhow).
Two points of different classes *conflict* when ||x_c - x_c'|| <= 2 eps, and on discrete
measures the optimum is a maximum-weight independent set of a K-partite conflict graph:

    A*_eps = max { sum_c mu_c(S_c) : no conflict edge inside S_1 u ... u S_K }      (an ILP)

For K = 2 the graph is bipartite and a max flow solves it; for K >= 3 the problem is NP-hard in
general. A grid of cells with exact masses (:func:`~dmat_core.robust.optimum2d.class_cell_masses`)
brackets it between two certified numbers:

* **upper**: two cells conflict when their *farthest* points are within 2 eps (a relaxation of
  the continuous problem, as for two classes), and the ILP is relaxed to its LP
  (0 <= x <= 1, x_u + x_v <= 1 per edge). That LP is solved exactly as a max flow on the
  bipartite double cover of the graph (each node u split into u', u'' with half its mass, each
  edge uv into u'v'' and v'u''): its optimum is half the double cover's maximum-weight
  independent set, and x_u = (keep u' + keep u'') / 2 is a half-integral optimal solution
  (Nemhauser & Trotter 1975; Hochbaum 1983). Integer capacities: no solver tolerance enters the
  bound. :func:`lp_relaxation_highs` solves the same LP with HiGHS and a dual certificate (the
  cross-check of the tests). Plus the mass outside the grid and of the cells left out.
* **lower**: the best of two robust classifiers that actually exist. (i) An integral solution on
  *closest*-point conflicts (a restriction: kept cells of different classes are more than 2 eps
  apart): the LP solution on that graph rounded (ones kept, halves then the rest added by mass
  where no kept neighbour forbids it), its feasibility checked independently by dilating each
  class's kept cells (:func:`check_robust_cells`). (ii) The nearest-kept-cell classifier of a
  grid solution, on a grid `refine` times finer, credited only with the fine cells whose whole
  eps-ball stays in their own class (:func:`classifier_robust_mass`).

    opt = multiclass_robust_accuracy(dist, eps=0.3, norm="l2", h=0.03)   # opt["lower"], ["upper"]

:func:`optimal_robust_accuracy_discrete_multiclass` solves small discrete instances exactly
(HiGHS MILP), for tests and hand examples.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .exact2d import _check, _split_chunks
from .optimum2d import (_SCALE, _grid_conflicts, _independent_set, _light_cells, _vec_norm, class_cell_masses,
                        conflict_offsets)

__all__ = ["multiclass_robust_accuracy", "optimal_robust_accuracy_discrete_multiclass",
           "lp_relaxation", "lp_relaxation_highs", "independent_set_ilp", "greedy_independent_set",
           "check_robust_cells", "classifier_robust_mass"]


# ----------------------------------------------------------------------- the graph problems
def lp_relaxation(w: np.ndarray, eu: np.ndarray, ev: np.ndarray):
    """max w.x over 0 <= x <= 1, x_u + x_v <= 1 per edge, by a max flow on the double cover.

    w: (n,) masses (total <= 1); eu, ev: (E,) the end nodes of each edge. Returns
    (value, x, slack): the LP optimum of the masses rounded to multiples of 2^-30, a
    half-integral optimal x (n,), and the most rounding can move the optimum (so the float
    LP optimum is <= value + slack)."""
    w = np.asarray(w, dtype=np.float64)
    n = len(w)
    ends = np.concatenate([eu, ev]), np.concatenate([ev, eu])        # u' - v'' and v' - u''
    keep1, keep2, slack = _independent_set(w / 2, w / 2, *ends)
    x = (keep1.astype(np.float64) + keep2) / 2
    return math.fsum(w * x), x, slack if n else 0.0


def _edge_matrix(n: int, eu: np.ndarray, ev: np.ndarray):
    """The (E, n) incidence matrix of the edges: row e has ones at columns eu[e] and ev[e]."""
    from scipy.sparse import csr_array
    rows = np.repeat(np.arange(len(eu), dtype=np.int64), 2)
    cols = np.stack([eu, ev], 1).reshape(-1).astype(np.int64)
    return csr_array((np.ones(len(cols)), (rows, cols)), shape=(len(eu), n))


def lp_relaxation_highs(w: np.ndarray, eu: np.ndarray, ev: np.ndarray):
    """The same LP by HiGHS (scipy.optimize.linprog), bounded by a dual certificate.

    Returns (bound, x): `bound` = sum(y) + sum(max(0, w - A^T y)) for the solver's edge duals
    y >= 0, which is >= w.x for every LP-feasible x whatever the solver's tolerances (weak
    duality); x the solver's primal solution."""
    from scipy.optimize import linprog
    w = np.asarray(w, dtype=np.float64)
    if len(eu) == 0:
        return math.fsum(w.clip(min=0)), np.ones_like(w)
    A = _edge_matrix(len(w), eu, ev)
    scale = float(w.max()) or 1.0                          # masses ~1e-6: objective of order 1
    res = linprog(-w / scale, A_ub=A, b_ub=np.ones(A.shape[0]), bounds=(0, 1), method="highs")
    if res.status != 0:
        raise RuntimeError(f"the LP solver failed: {res.message}")
    y = np.clip(-res.ineqlin.marginals, 0, None) * scale   # (E,) >= 0
    z = np.clip(w - A.T @ y, 0, None)                      # (n,) the duals of x <= 1
    return math.fsum(y) + math.fsum(z), np.asarray(res.x)


def independent_set_ilp(w: np.ndarray, eu: np.ndarray, ev: np.ndarray, time_limit: float | None = None):
    """Maximum-weight independent set by HiGHS MILP: (keep (n,) bool, proved optimal: bool).
    With a time limit, the best set found (feasibility checked here)."""
    from scipy.optimize import LinearConstraint, milp
    w = np.asarray(w, dtype=np.float64)
    if len(eu) == 0:
        return w > 0, True
    scale = float(w.max()) or 1.0
    res = milp(-w / scale, integrality=np.ones(len(w)), bounds=(0, 1),
               constraints=LinearConstraint(_edge_matrix(len(w), eu, ev), -np.inf, 1.0),
               options={} if time_limit is None else {"time_limit": float(time_limit)})
    if res.x is None:
        raise RuntimeError(f"the MILP solver found no solution: {res.message}")
    keep = np.asarray(res.x) > 0.5
    if (keep[eu] & keep[ev]).any():
        raise RuntimeError("the MILP solution keeps both ends of a conflict edge")
    return keep, res.status == 0


def greedy_independent_set(w: np.ndarray, eu: np.ndarray, ev: np.ndarray, x=None) -> np.ndarray:
    """A maximal independent set: nodes with x = 1 first (an LP solution), then x = 1/2, then
    the rest, heaviest first within each tier, each kept when no neighbour is. (n,) bool."""
    from scipy.sparse import csr_array
    n = len(w)
    adj = csr_array((np.ones(2 * len(eu), dtype=np.int8), (np.concatenate([eu, ev]), np.concatenate([ev, eu]))),
                    shape=(n, n))
    x = np.ones(n) if x is None else np.asarray(x)
    tier = np.where(x > 1 - 1e-6, 0, np.where(x > 1e-6, 1, 2))
    order = np.lexsort((-np.asarray(w), tier))             # by tier, heaviest first
    keep, blocked = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    ptr, idx = adj.indptr, adj.indices
    for i in order:
        if not blocked[i]:
            keep[i] = True
            blocked[idx[ptr[i]:ptr[i + 1]]] = True
    return keep


# ----------------------------------------------------------------------- discrete measures
def optimal_robust_accuracy_discrete_multiclass(xs, ws, eps: float, norm: str = "l2") -> dict:
    """The best robust accuracy any classifier reaches on K discrete class measures, exactly.

    xs: K arrays (n_c, d) of points; ws: K arrays (n_c,) of masses (total <= 1). Solves the ILP
    of the module docstring with HiGHS (small instances). Returns `value`, `keep` (K bool
    arrays: the points kept robust), `n_edges` and the graph (`w`, `eu`, `ev`: global ids)."""
    eps, norm = _check(eps, norm)
    if len(xs) != len(ws) or len(xs) < 2:
        raise ValueError("give one array of points and one of masses per class (K >= 2)")
    ws = [np.asarray(w, dtype=np.float64).reshape(-1) for w in ws]
    xs = [torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(len(w), -1) for x, w in zip(xs, ws)]
    w = np.concatenate(ws)
    if (w < 0).any() or w.sum() > 1 + 1e-9:
        raise ValueError("masses must be >= 0 with a total <= 1")
    off = np.cumsum([0] + [len(v) for v in ws])
    eu, ev = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c in range(len(xs)):
        for c2 in range(c + 1, len(xs)):
            for a, b in _split_chunks(len(xs[c]), max(1, 2 ** 22 // max(len(xs[c2]), 1))):
                d = _vec_norm(xs[c][a:b, None, :] - xs[c2][None], norm)          # (b - a, n_c2)
                i, j = torch.nonzero(d <= 2 * eps, as_tuple=True)
                eu.append(i.numpy() + a + off[c]), ev.append(j.numpy() + off[c2])
    eu, ev = np.concatenate(eu), np.concatenate(ev)
    keep, optimal = independent_set_ilp(w, eu, ev)
    if not optimal:
        raise RuntimeError("the MILP solver stopped before proving optimality")
    return {"value": math.fsum(w[keep]), "keep": [keep[off[c]:off[c + 1]] for c in range(len(xs))],
            "n_edges": len(eu), "w": w, "eu": eu, "ev": ev}


# ----------------------------------------------------------------------- the grid
def _structure(h: float, radius: float, norm: str, mode: str):
    """The conflict offsets as a boolean structuring element (2R+1, 2R+1) and its radius R."""
    off = conflict_offsets(h, radius, norm, mode)
    R = int(np.abs(off).max())
    s = np.zeros((2 * R + 1, 2 * R + 1), dtype=bool)
    s[off[:, 0] + R, off[:, 1] + R] = True
    return s, R


def check_robust_cells(keep: np.ndarray, h: float, eps: float, norm: str) -> bool:
    """True when no two kept cells of different classes have closest points within 2 eps, so
    that a classifier robust on every kept cell exists. `keep`: (K, ny, nx) bool. Independent
    of any edge list: each class's kept cells are dilated by the closest-point offsets."""
    from scipy.ndimage import binary_dilation
    struct, _ = _structure(h, 2 * eps, norm, "min")
    for c in range(keep.shape[0]):
        if keep[c].any():
            reach = binary_dilation(keep[c], structure=struct)
            if any((reach & keep[c2]).any() for c2 in range(keep.shape[0]) if c2 != c):
                return False
    return True


def classifier_robust_mass(mu: np.ndarray, labels: np.ndarray, h: float, eps: float, norm: str) -> float:
    """A lower bound of the robust accuracy of the cell-wise constant classifier `labels`
    ((ny, nx) int, -1: no class) on cells of side h with class masses mu (K, ny, nx): the mass
    of the cells of class c whose every point has its eps-ball inside cells labelled c."""
    from scipy.ndimage import binary_dilation
    struct, R = _structure(h, eps, norm, "min")
    total = []
    for c in range(mu.shape[0]):
        other = np.pad(labels != c, R, constant_values=True)        # beyond the grid: not c
        safe = ~binary_dilation(other, structure=struct)[R:-R, R:-R]
        total.append(math.fsum(mu[c][safe]))
    return math.fsum(total)


def nearest_kept_labels(keep: np.ndarray, refine: int = 1) -> np.ndarray:
    """The classifier that labels every cell (of a grid `refine` times finer) with the class of
    the nearest kept cell: robust on kept sets more than 2 eps apart. (ny*r, nx*r) int."""
    from scipy.ndimage import distance_transform_edt
    fine = keep.repeat(refine, 1).repeat(refine, 2)                 # (K, ny*r, nx*r)
    kept = fine.any(0)
    if not kept.any():
        return np.full(kept.shape, -1)
    _, (i, j) = distance_transform_edt(~kept, return_indices=True)
    return fine.argmax(0)[i, j]


def _graph(mu: np.ndarray, active: np.ndarray, h: float, radius: float, norm: str, mode: str):
    """Masses of the active cells (class-major ids) and the conflict edges between classes."""
    K = mu.shape[0]
    off = np.concatenate([[0], np.cumsum(active.reshape(K, -1).sum(1))])
    eu, ev = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c in range(K):
        for c2 in range(c + 1, K):
            a, b = _grid_conflicts(active[c], active[c2], h, radius, norm, mode)
            eu.append(a.astype(np.int64) + off[c]), ev.append(b.astype(np.int64) + off[c2])
    w = np.concatenate([mu[c][active[c]] for c in range(K)])
    return w, np.concatenate(eu), np.concatenate(ev), off


def _to_grid(keep: np.ndarray, active: np.ndarray, off: np.ndarray) -> np.ndarray:
    out = np.zeros_like(active)
    for c in range(active.shape[0]):
        out[c][active[c]] = keep[off[c]:off[c + 1]]
    return out


def multiclass_robust_accuracy(dist, eps: float, norm: str = "l2", h: float = 0.03, box=None,
                               n_std: float = 6.5, refine: int = 2, drop: float = 1e-5) -> dict:
    """Certified bounds on the best robust accuracy any classifier reaches on a K-class 2D mixture.

    `dist`: a :class:`~dmat_core.toys.mixtures.GaussianMixture` in 2D, isotropic or axis-aligned
    components, `labels` its classes. Cells of side `h` with exact masses; the lightest cells of
    each class (`drop` of its mass) are left out of the graphs. Returns a dict with `lower` and
    `upper` (module docstring), `lower_grid` (the closest-point solution alone), `value` (a
    point estimate: the rounded LP solution on centre-point conflicts, or `lower` if larger;
    not a bound), `lp_gap` (upper LP optimum minus the integral solution rounded from it: 0
    where the LP is integral), `tail`, `slack` (left-out mass and rounding), `h`, `refine`,
    `n_cells`, `n_edges` (centre graph), `bayes_grid` (clean optimum of the grid), `keep`
    ((K, ny, nx) bool: the cells of the point estimate), `edges` (grid lines) and `seconds`.
    """
    eps, norm = _check(eps, norm)
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"h must be a positive grid step, got {h}")
    if int(refine) != refine or refine < 1:
        raise ValueError(f"refine must be an integer >= 1, got {refine}")
    t0 = time.perf_counter()
    mu, ex, ey, tail = class_cell_masses(dist, h, box, n_std)
    if mu.shape[1] * mu.shape[2] * refine ** 2 > 4_000_000:
        raise ValueError(f"grid of {mu.shape[1]} x {mu.shape[2]} cells (refined x{refine}) is too fine; raise h")
    mu = mu.numpy()
    active = np.stack([~_light_cells(m, drop) & (m * _SCALE >= 0.5) for m in mu])   # (K, ny, nx)
    dropped = float(mu[~active].sum())
    x0, y0 = float(ex[0]), float(ey[0])
    hf = h / refine                                        # the fine grid nests in the coarse one
    fine_box = (x0, x0 + (refine * mu.shape[2] - 0.5) * hf, y0, y0 + (refine * mu.shape[1] - 0.5) * hf)
    mu_fine = class_cell_masses(dist, hf, fine_box)[0].numpy()
    out = {"eps": eps, "norm": norm, "h": h, "refine": refine, "tail": tail, "n_cells": int(mu[0].size),
           "bayes_grid": float(mu.max(0).sum()), "edges": (ex.numpy(), ey.numpy())}
    solutions = {}
    for mode in ("max", "min", "centre"):
        w, eu, ev, off = _graph(mu, active, h, 2 * eps, norm, mode)
        lp, x, slack = lp_relaxation(w, eu, ev)
        keep = greedy_independent_set(w, eu, ev, x)
        if (keep[eu] & keep[ev]).any():
            raise RuntimeError("the rounded solution keeps both ends of a conflict edge")
        solutions[mode] = (math.fsum(w[keep]), _to_grid(keep, active, off))
        if mode == "max":
            out.update(upper=min(1.0, lp + slack + dropped + tail), lp_gap=lp - solutions[mode][0],
                       slack=slack + dropped)
        elif mode == "centre":
            out["n_edges"] = len(eu)
    value_min, keep_min = solutions["min"]
    if not check_robust_cells(keep_min, h, eps, norm):
        raise RuntimeError("the closest-point solution keeps conflicting cells")
    fine = [classifier_robust_mass(mu_fine, nearest_kept_labels(k, refine), hf, eps, norm)
            for _, k in solutions.values()]
    out.update(lower_grid=value_min, lower=max(value_min, *fine))
    out["value"] = max(solutions["centre"][0], out["lower"])
    out["keep"] = solutions["centre"][1]
    out["seconds"] = time.perf_counter() - t0
    return out
