"""The best robust accuracy any classifier reaches on 2D toys, against truths that cannot
be faked: brute force over every pair of robust sets, a second max-flow solver, the closed
forms of two point masses and two Gaussians, exact cell masses and the posterior argmax."""
import itertools

import numpy as np
import pytest
import torch

from dmat_core.robust import optimum2d as optimum
from dmat_core.toys.mixtures import GaussianMixture, ring8


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_two_point_masses(norm):
    d = 1.0
    for eps, want in [(0.2, 1.0), (0.49, 1.0), (0.51, 0.7), (2.0, 0.7)]:
        r = optimum.optimal_robust_accuracy_discrete([[0.0, 0.0]], [0.3], [[d, 0.0]], [0.7], eps, norm)
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
        r = optimum.optimal_robust_accuracy_discrete(x0, w0, x1, w1, eps, "l2")
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
        v1, side1 = optimum._max_flow(*args)
        v2, side2 = optimum._max_flow_python(*args)
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
        r = optimum.bayes_robust_accuracy(dist, eps, norm, h=0.05)
        assert r["lower"] - 1e-6 <= truth <= r["upper"] + 1e-6
        assert r["value"] == pytest.approx(truth, abs=0.01)
        assert r["upper"] - r["lower"] < 0.06
        assert r["keep"].shape == (2, len(r["edges"][1]) - 1, len(r["edges"][0]) - 1)
    assert optimum.bayes_robust_accuracy(dist, 0.0, norm, h=0.05)["bayes_grid"] == pytest.approx(
        float(torch.special.ndtr(torch.tensor(m / s))), abs=1e-6)


def test_cell_masses_are_exact():
    dist = GaussianMixture.isotropic([[0.0, 0.0], [1.0, 0.5]], 0.3, weights=[0.25, 0.75], labels=[0, 1])
    mu, ex, ey, tail = optimum.class_cell_masses(dist, 0.1)
    assert mu[0].sum() + mu[1].sum() + tail == pytest.approx(1.0, abs=1e-12)
    assert mu[0].sum() == pytest.approx(0.25, abs=1e-8) and tail < 1e-8


def test_bayes_classifier_is_the_posterior_argmax(gen):
    dist = ring8()
    dist.labels = torch.arange(8) % 2
    x = dist.sample(500, gen)
    resp = dist.responsibilities(x)
    post = torch.stack([resp[:, dist.labels == c].sum(1) for c in (0, 1)], 1)
    assert torch.equal(optimum.bayes_classifier(dist)(x).argmax(1), post.argmax(1))


def test_bad_input_is_a_clear_error():
    dist = GaussianMixture.isotropic([[0.0, 0.0], [1.0, 0.0]], 0.3, labels=[0, 1])
    with pytest.raises(ValueError, match="eps"):
        optimum.bayes_robust_accuracy(dist, -1.0)
    with pytest.raises(ValueError, match="norm"):
        optimum.bayes_robust_accuracy(dist, 0.1, "l3")
    with pytest.raises(ValueError, match="2 classes"):
        optimum.bayes_robust_accuracy(GaussianMixture.isotropic([[0, 0], [1, 0], [2, 0]], 0.3), 0.1)
    rot = GaussianMixture.from_covariances(torch.ones(2), [[0.0, 0.0], [1.0, 0.0]],
                                           [[[1.0, 0.5], [0.5, 1.0]]] * 2, labels=[0, 1])
    with pytest.raises(ValueError, match="axis-aligned"):
        optimum.bayes_robust_accuracy(rot, 0.1)
    with pytest.raises(ValueError, match="total"):
        optimum.optimal_robust_accuracy_discrete([[0, 0]], [0.8], [[1, 0]], [0.8], 0.1)
