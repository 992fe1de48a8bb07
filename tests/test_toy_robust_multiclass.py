"""The K-class optimum: exact ILP against brute force, the LP (max flow on the double cover)
against HiGHS, the grid bounds against the two-class max flow, and the certificates themselves."""
import itertools
import math

import numpy as np
import pytest
import torch

from dmat_core.robust import optimum2d as optimum
from dmat_core.robust import optimum2d_multiclass as mc
from dmat_core.studies.at_classifier_setup import ring_classes
from dmat_core.toys.mixtures import GaussianMixture


def brute_force(w, eu, ev):
    """The maximum-weight independent set by enumerating every subset."""
    n, best = len(w), 0.0
    for bits in itertools.product([False, True], repeat=n):
        keep = np.array(bits)
        if not (keep[eu] & keep[ev]).any():
            best = max(best, w[keep].sum())
    return best


def test_triangle_lp_is_fractional_ilp_is_not():
    """Three points of three classes, pairwise within 2 eps, mass 1/3 each: only one can be
    kept robust (ILP 1/3); the LP puts 1/2 on each (1/2), its half-integral optimum."""
    xs = [[[0.0, 0.0]], [[0.1, 0.0]], [[0.05, 0.08]]]
    r = mc.optimal_robust_accuracy_discrete_multiclass(xs, [[1 / 3]] * 3, eps=0.1)
    assert r["value"] == pytest.approx(1 / 3) and r["n_edges"] == 3
    assert sum(k.sum() for k in r["keep"]) == 1
    value, x, slack = mc.lp_relaxation(r["w"], r["eu"], r["ev"])
    assert value == pytest.approx(0.5, abs=1e-8) and np.allclose(x, 0.5) and slack < 1e-8
    bound, _ = mc.lp_relaxation_highs(r["w"], r["eu"], r["ev"])
    assert bound == pytest.approx(0.5, abs=1e-8)
    keep = mc.greedy_independent_set(r["w"], r["eu"], r["ev"], x)
    assert keep.sum() == 1                                   # rounding repairs to a feasible set


@pytest.mark.parametrize("trial", range(5))
def test_discrete_three_classes_equal_brute_force(trial):
    g = torch.Generator().manual_seed(trial)
    xs = [torch.rand(4, 2, generator=g, dtype=torch.float64) for _ in range(3)]
    w = torch.rand(12, generator=g, dtype=torch.float64)
    w = (w / w.sum()).numpy()
    ws = [w[0:4], w[4:8], w[8:12]]
    r = mc.optimal_robust_accuracy_discrete_multiclass(xs, ws, eps=0.12 + 0.03 * trial)
    assert r["n_edges"] > 3                                  # a graph with something to decide
    assert r["value"] == pytest.approx(brute_force(r["w"], r["eu"], r["ev"]), abs=1e-12)
    keep = np.concatenate(r["keep"])
    assert not (keep[r["eu"]] & keep[r["ev"]]).any()
    pts = torch.cat(xs)
    for u, v in itertools.combinations(np.flatnonzero(keep), 2):   # kept points robust
        same = (u // 4) == (v // 4)
        assert same or (pts[u] - pts[v]).norm() > 2 * (0.12 + 0.03 * trial)
    lp, x, _ = mc.lp_relaxation(r["w"], r["eu"], r["ev"])
    bound, x_h = mc.lp_relaxation_highs(r["w"], r["eu"], r["ev"])
    assert lp == pytest.approx(float(r["w"] @ x_h), abs=1e-7)       # the same LP optimum
    assert bound >= lp - 1e-7 and bound == pytest.approx(lp, abs=1e-6)
    assert lp >= r["value"] - 1e-8                                   # a relaxation
    assert set(np.round(2 * x).tolist()) <= {0.0, 1.0, 2.0}          # half-integral


def test_two_classes_discrete_ilp_equals_max_flow(gen):
    x0 = torch.rand(7, 2, generator=gen, dtype=torch.float64)
    x1 = torch.rand(6, 2, generator=gen, dtype=torch.float64)
    w = torch.rand(13, generator=gen, dtype=torch.float64)
    w0, w1 = (w[:7] / w.sum()).numpy(), (w[7:] / w.sum()).numpy()
    flow = optimum.optimal_robust_accuracy_discrete(x0, w0, x1, w1, 0.15)
    ilp = mc.optimal_robust_accuracy_discrete_multiclass([x0, x1], [w0, w1], 0.15)
    assert ilp["value"] == pytest.approx(flow["value"], abs=1e-7)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_two_classes_grid_bounds_equal_the_max_flow(norm):
    """K = 2: the conflict graph is bipartite, the LP is integral, and the new bounds are the
    max-flow answers of bayes_robust_accuracy on the same grid."""
    dist = ring_classes(8, 2, 2.0, 0.3)
    flow = optimum.bayes_robust_accuracy(dist, 0.3, norm, h=0.1)
    r = mc.multiclass_robust_accuracy(dist, 0.3, norm, h=0.1, refine=2)
    assert r["upper"] == pytest.approx(flow["upper"], abs=2e-5)
    assert r["lower_grid"] == pytest.approx(flow["lower"], abs=2e-5)
    assert r["lp_gap"] == pytest.approx(0.0, abs=1e-6)
    assert r["value"] >= flow["value"] - 2e-5 and r["lower"] >= r["lower_grid"]
    assert r["lower"] <= r["value"] <= r["upper"]


def test_three_classes_grid_bounds_bracket_and_certify():
    dist = ring_classes(9, 3, 2.25, 0.3)
    r = mc.multiclass_robust_accuracy(dist, 0.3, "l2", h=0.1, refine=2)
    assert 0.75 < r["lower"] <= r["value"] <= r["upper"] < 0.97 and r["upper"] - r["lower"] < 0.12
    assert r["keep"].shape == (3, len(r["edges"][1]) - 1, len(r["edges"][0]) - 1)
    assert r["upper"] < r["bayes_grid"] < 1                 # robust below clean, clean below 1
    assert mc.check_robust_cells(r["keep"], 0.1, 0.3, "l2") is False   # the point estimate is
    # not certified (centre-point conflicts), unlike the closest-point solution behind `lower`
    wider = mc.multiclass_robust_accuracy(dist, 0.45, "l2", h=0.1, refine=2)
    assert wider["upper"] < r["lower"]                      # a larger budget costs accuracy


def test_feasibility_check_catches_conflicts():
    keep = np.zeros((3, 20, 20), dtype=bool)
    keep[0, 5, 5], keep[1, 5, 13], keep[2, 15, 5] = True, True, True
    assert mc.check_robust_cells(keep, h=0.1, eps=0.3, norm="l2")      # closest points 0.7 apart
    keep[2, 5, 12] = True                                              # next to class 1's cell
    assert not mc.check_robust_cells(keep, h=0.1, eps=0.3, norm="l2")
    keep[2, 5, 12] = False
    keep[1, 5, 13], keep[1, 5, 12] = False, True   # closest points 0.6 apart: balls touch
    assert not mc.check_robust_cells(keep, h=0.1, eps=0.3, norm="l2")
    assert mc.check_robust_cells(keep, h=0.1, eps=0.29, norm="l2")


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_classifier_robust_mass_of_a_threshold(norm):
    """Two Gaussians at -m and m, the threshold x = 0: its robust accuracy is Phi((m - eps)/s)
    exactly; the cell-wise bound is below it and close on a fine grid."""
    m, s, eps, h = 0.5, 0.2, 0.2, 0.01
    dist = GaussianMixture.isotropic([[-m, 0.0], [m, 0.0]], s, labels=[0, 1])
    mu, ex, ey, _ = optimum.class_cell_masses(dist, h, box=(-1.7, 1.7, -1.2, 1.2))
    centres = (ex[:-1] + ex[1:]) / 2
    labels = np.broadcast_to((centres > 0).numpy().astype(int), mu.shape[1:])
    got = mc.classifier_robust_mass(mu.numpy(), labels, h, eps, norm)
    truth = float(torch.special.ndtr(torch.tensor((m - eps) / s)))
    assert truth - 0.03 < got <= truth + 1e-9


def test_bad_input_is_a_clear_error():
    dist = ring_classes(9, 3, 2.25, 0.3)
    with pytest.raises(ValueError, match="eps"):
        mc.multiclass_robust_accuracy(dist, -0.1)
    with pytest.raises(ValueError, match="h must be"):
        mc.multiclass_robust_accuracy(dist, 0.3, h=0.0)
    with pytest.raises(ValueError, match="refine"):
        mc.multiclass_robust_accuracy(dist, 0.3, h=0.1, refine=0)
    with pytest.raises(ValueError, match="too fine"):
        mc.multiclass_robust_accuracy(dist, 0.3, h=0.02, refine=8)
    with pytest.raises(ValueError, match="total"):
        mc.optimal_robust_accuracy_discrete_multiclass([[[0, 0]], [[1, 0]], [[2, 0]]], [[0.5]] * 3, 0.1)
    with pytest.raises(ValueError, match="2 classes"):
        optimum.bayes_robust_accuracy(dist, 0.3)
    assert math.isfinite(mc.lp_relaxation(np.array([0.2, 0.3]), np.zeros(0, int), np.zeros(0, int))[0])
