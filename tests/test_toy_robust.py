"""Exact robust accuracy and the optimal robust accuracy on 2D toys, against truths that
cannot be faked: a linear classifier's distance to its boundary, PGD witnesses, brute force
over every pair of robust sets, and the closed forms of two point masses and two Gaussians."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from dmat_core import toy_robust as tr
from dmat_core.classifiers import ToyMLP
from dmat_core.toys import GaussianMixture, ring8


def _linear(w, b):
    """Logits (0, w.x + b): class 1 on the side w.x + b > 0."""
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0], list(w)]))
        lin.bias.copy_(torch.tensor([0.0, b]))
    return lin


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_classifier_is_robust_exactly_beyond_eps_from_its_boundary(norm, gen):
    w, b, eps = torch.tensor([0.8, -0.6], dtype=torch.float64), 0.1, 0.25
    model = _linear(w.tolist(), b)
    x = 2 * torch.rand(600, 2, generator=gen, dtype=torch.float64) - 1
    y = torch.randint(0, 2, (600,), generator=gen)
    signed = (2 * y - 1) * (x @ w + b)               # > 0: correctly classified
    dual = w.norm() if norm == "l2" else w.abs().sum()  # distance in `norm` to the line
    truth = signed / dual > eps
    res = tr.exact_robust_accuracy(model, x, y, eps, norm, resolution=17)
    assert torch.equal(res.robust, truth)
    assert res.acc == pytest.approx(float(truth.double().mean()))
    assert res.lower == res.acc and res.undecided == 0
    assert abs(res.dense_acc - res.acc) <= 2 / 600   # the grid alone: at most a point or two
    assert float(res) == res.acc
    bad = ~res.robust                                 # every witness lies in the ball, misclassified
    gap = (res.x_adv[bad] - x[bad])
    size = gap.norm(dim=1) if norm == "l2" else gap.abs().amax(1)
    assert (size <= eps + 1e-12).all()
    assert ((2 * y[bad] - 1) * (res.x_adv[bad] @ w + b) <= 0).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_finds_nothing_the_exact_search_misses(norm):
    torch.manual_seed(5)
    model = ToyMLP(2, 2, width=32, depth=2)            # a random ReLU net: a curved boundary
    x = 4 * torch.rand(300, 2, generator=torch.Generator().manual_seed(1)) - 2
    y = model(x).argmax(1)                             # every point clean-correct
    res = tr.exact_robust_accuracy(model, x, y, 0.5, norm, resolution=17)
    assert res.undecided == 0 and res.lower == res.acc        # certified: exact
    agree = tr.pgd_agreement(model, x, y, res, 0.5, norm, steps=40, restarts=3)
    assert agree["pgd_only"] == 0 and agree["pgd_acc"] >= res.acc
    assert agree["exact_only"] <= 0.1 * len(x)                # PGD misses a few pockets
    assert 0.05 < res.acc < 0.95                              # a case with both outcomes


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_finds_what_dense_search_finds_on_a_linear_classifier(norm, gen):
    model = _linear([0.6, 0.8], -0.2)
    x = 2 * torch.rand(400, 2, generator=gen) - 1
    y = torch.randint(0, 2, (400,), generator=gen)
    res = tr.exact_robust_accuracy(model, x, y, 0.2, norm, resolution=9)
    agree = tr.pgd_agreement(model, x, y, res, 0.2, norm, steps=10, restarts=1)
    assert agree["pgd_only"] == 0 and agree["exact_only"] == 0
    assert agree["pgd_acc"] == pytest.approx(res.acc)


def test_ball_grid_covers_the_ball_and_its_boundary():
    g = tr.ball_grid(0.3, "linf", 5)
    assert g.shape == (25, 2) and g.abs().max() == pytest.approx(0.3)
    assert {tuple(v) for v in g[(g.abs() == 0.3).all(1)].tolist()} == {(a, b) for a in (-0.3, 0.3)
                                                                    for b in (-0.3, 0.3)}
    g = tr.ball_grid(0.3, "l2", 9)
    r = g.norm(dim=1)
    assert (r <= 0.3 + 1e-12).all() and (r > 0.3 - 1e-12).sum() >= 8


def test_ibp_bounds_the_margin_from_below(gen):
    torch.manual_seed(0)
    model = ToyMLP(2, 3, width=16, depth=2).double()
    layers = tr._ibp_layers(model)
    lo = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    hi = lo + 0.1
    y = torch.randint(0, 3, (50,), generator=gen)
    lb = tr.ibp_margin_lower(layers, lo, hi, y)
    u = torch.rand(50, 200, 2, generator=gen, dtype=torch.float64)
    pts = (lo[:, None] + 0.1 * u).reshape(-1, 2)
    m = tr.margin(model(pts), y.repeat_interleave(200)).reshape(50, 200)
    assert (lb <= m.min(1).values + 1e-12).all()


# ----------------------------------------------------------------------- optimal robust accuracy
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_two_point_masses(norm):
    d = 1.0
    for eps, want in [(0.2, 1.0), (0.49, 1.0), (0.51, 0.7), (2.0, 0.7)]:
        r = tr.optimal_robust_accuracy_discrete([[0.0, 0.0]], [0.3], [[d, 0.0]], [0.7], eps, norm)
        assert r["value"] == pytest.approx(want, abs=1e-8), eps


def test_discrete_optimum_equals_brute_force(gen):
    for trial in range(6):
        n = 6
        x0 = torch.rand(n, 2, generator=gen, dtype=torch.float64)
        x1 = torch.rand(n, 2, generator=gen, dtype=torch.float64)
        w = torch.rand(2 * n, generator=gen, dtype=torch.float64)
        w0, w1 = (w[:n] / w.sum()).numpy(), (w[n:] / w.sum()).numpy()
        eps = 0.1 + 0.05 * trial
        conflict = ((x0[:, None] - x1[None]).norm(dim=-1) <= 2 * eps).numpy()
        best = 0.0
        for keep0 in itertools.product([0, 1], repeat=n):          # every robust set of class 0,
            k0 = np.array(keep0, bool)                              # then all compatible class-1 points
            k1 = ~conflict[k0].any(0)
            best = max(best, w0[k0].sum() + w1[k1].sum())
        r = tr.optimal_robust_accuracy_discrete(x0, w0, x1, w1, eps, "l2")
        assert r["value"] == pytest.approx(best, abs=1e-7)
        assert not conflict[r["keep0"]][:, r["keep1"]].any()        # the sets it returns are robust


def test_python_max_flow_equals_scipy(gen):
    pytest.importorskip("scipy")
    for _ in range(5):
        n = 30
        m = 120
        src = torch.randint(0, n, (m,), generator=gen).numpy()
        dst = torch.randint(0, n, (m,), generator=gen).numpy()
        cap = torch.randint(1, 50, (m,), generator=gen).numpy()
        keep = src != dst
        args = (n, src[keep], dst[keep], cap[keep], 0, n - 1)
        v1, side1 = tr._max_flow(*args)
        v2, side2 = tr._max_flow_python(*args)
        assert v1 == v2
        cut = lambda side: cap[keep][side[src[keep]] & ~side[dst[keep]]].sum()  # noqa: E731
        assert cut(side1) == v1 and cut(side2) == v2          # both sides are minimum cuts


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_two_gaussians_closed_form(norm):
    """N((-m, 0), s^2 I) vs N((m, 0), s^2 I), equal priors: A* = Phi((m - eps)/s) for eps < m
    (the problem is one-dimensional along x; the midpoint threshold is optimal), 1/2 beyond."""
    m, s = 0.5, 0.2
    dist = GaussianMixture.isotropic([[-m, 0.0], [m, 0.0]], s, labels=[0, 1])
    for eps in (0.0, 0.2, 0.6):
        truth = float(torch.special.ndtr(torch.tensor((m - eps) / s))) if eps < m else 0.5
        r = tr.bayes_robust_accuracy(dist, eps, norm, h=0.05)
        assert r["lower"] - 1e-6 <= truth <= r["upper"] + 1e-6
        assert r["value"] == pytest.approx(truth, abs=0.01)
        assert r["upper"] - r["lower"] < 0.06
        assert r["keep"].shape == (2, len(r["edges"][1]) - 1, len(r["edges"][0]) - 1)
    assert tr.bayes_robust_accuracy(dist, 0.0, norm, h=0.05)["bayes_grid"] == pytest.approx(
        float(torch.special.ndtr(torch.tensor(m / s))), abs=1e-6)


def test_cell_masses_are_exact():
    dist = GaussianMixture.isotropic([[0.0, 0.0], [1.0, 0.5]], 0.3, weights=[0.25, 0.75], labels=[0, 1])
    mu, ex, ey, tail = tr.class_cell_masses(dist, 0.1)
    assert mu[0].sum() + mu[1].sum() + tail == pytest.approx(1.0, abs=1e-12)
    assert mu[0].sum() == pytest.approx(0.25, abs=1e-8) and tail < 1e-8


def test_bayes_classifier_is_the_posterior_argmax(gen):
    dist = ring8()
    dist.labels = torch.arange(8) % 2
    x = dist.sample(500, gen)
    resp = dist.responsibilities(x)
    post = torch.stack([resp[:, dist.labels == c].sum(1) for c in (0, 1)], 1)
    assert torch.equal(tr.bayes_classifier(dist)(x).argmax(1), post.argmax(1))


def test_bad_input_is_a_clear_error():
    model, x, y = _linear([1.0, 0.0], 0.0), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="eps"):
        tr.exact_robust_accuracy(model, x, y, -0.1)
    with pytest.raises(ValueError, match="norm"):
        tr.exact_robust_accuracy(model, x, y, 0.1, "l1")
    with pytest.raises(ValueError, match="resolution"):
        tr.exact_robust_accuracy(model, x, y, 0.1, resolution=1)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        tr.exact_robust_accuracy(model, torch.zeros(4, 3), y, 0.1)
    dist = GaussianMixture.isotropic([[0.0, 0.0], [1.0, 0.0]], 0.3, labels=[0, 1])
    with pytest.raises(ValueError, match="eps"):
        tr.bayes_robust_accuracy(dist, -1.0)
    with pytest.raises(ValueError, match="norm"):
        tr.bayes_robust_accuracy(dist, 0.1, "l3")
    with pytest.raises(ValueError, match="2 classes"):
        tr.bayes_robust_accuracy(GaussianMixture.isotropic([[0, 0], [1, 0], [2, 0]], 0.3), 0.1)
    rot = GaussianMixture.from_covariances(torch.ones(2), [[0.0, 0.0], [1.0, 0.0]],
                                           [[[1.0, 0.5], [0.5, 1.0]]] * 2, labels=[0, 1])
    with pytest.raises(ValueError, match="axis-aligned"):
        tr.bayes_robust_accuracy(rot, 0.1)
    with pytest.raises(ValueError, match="total"):
        tr.optimal_robust_accuracy_discrete([[0, 0]], [0.8], [[1, 0]], [0.8], 0.1)
