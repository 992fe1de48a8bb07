"""The two-class Gaussian world and its Gaussian generators: sampling, estimators, and the
closed-form KL and W2 against sample estimates (dmat_core/toys/gaussians.py)."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.optimize import linear_sum_assignment

from dmat_core.toys.gaussians import (GENERATORS, GaussianWorld, fit_gaussian, gaussian_kl, gaussian_w2,
                                      generator_quality, isotropic, ledoit_wolf, lowrank, make_generator,
                                      make_world, mean_angle, pseudo_label, signed_labels)
from dmat_core.toys.mixtures import GaussianMixture

F64 = torch.float64


def _random_gaussian(d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(d, d, dtype=F64, generator=g)
    return scale * torch.randn(d, dtype=F64, generator=g), B @ B.T / d + 0.3 * torch.eye(d, dtype=F64)


def _law(m, S):
    return GaussianMixture.from_covariances([1.0], m[None], S[None])


def test_world_samples_have_the_world_law(gen):
    world = make_world("lowrank", d=6, rank=2, seed=1)
    x, y = world.sample(60_000, gen)
    assert set(y.tolist()) == {-1, 1} and abs(float((y == 1).double().mean()) - 0.5) < 4 * 0.5 / math.sqrt(60_000)
    for c in (-1, 1):
        m, S = world.law(c)
        xc = x[y == c]
        assert (xc.mean(0) - m).abs().max() < 5 * S.diagonal().max().sqrt() / math.sqrt(len(xc))
        assert (torch.cov(xc.T) - S).abs().max() < 0.05 * S.abs().max()
    mix = world.as_mixture()
    assert torch.allclose(mix.means[1], world.mu) and torch.allclose(mix.covariances()[0], world.Sigma)


def test_presets():
    iso = isotropic(d=256)
    assert torch.equal(iso.mu.abs(), torch.ones(256, dtype=F64))
    assert torch.allclose(iso.Sigma, 16.0 * torch.eye(256, dtype=F64))
    assert iso.bayes_accuracy() == pytest.approx(0.5 * math.erfc(-4 / math.sqrt(2)), abs=1e-14)   # Phi(d^1/4)
    w = lowrank(d=32, rank=3, spike=5.0, std=2.0, align=0.6, seed=2)
    lam = torch.linalg.eigvalsh(w.Sigma)
    assert torch.allclose(lam[-3:], torch.full((3,), 4.0 * 6.0, dtype=F64))
    assert torch.allclose(lam[:-3], torch.full((29,), 4.0, dtype=F64))
    u = w.mu / w.mu.norm()                       # the spike holds at least align^2 of mu's direction
    assert float(u @ w.Sigma @ u) >= 4.0 * (1 + 5.0 * 0.6 ** 2) - 1e-9
    assert w.bayes_accuracy() < isotropic(d=32, std=2.0, seed=2).bayes_accuracy()


@pytest.mark.parametrize("seed", [0, 1])
def test_kl_against_monte_carlo(seed, gen):
    """KL(p || q) = E_p[log p - log q], both directions, within 5 standard errors."""
    (m0, S0), (m1, S1) = _random_gaussian(3, seed), _random_gaussian(3, seed + 10, scale=0.5)
    for (ma, Sa), (mb, Sb) in (((m0, S0), (m1, S1)), ((m1, S1), (m0, S0))):
        p, q = _law(ma, Sa), _law(mb, Sb)
        x = p.sample(200_000, gen)
        r = p.log_prob(x) - q.log_prob(x)
        assert abs(gaussian_kl(ma, Sa, mb, Sb) - float(r.mean())) < 5 * float(r.std()) / math.sqrt(len(r))
    assert gaussian_kl(m0, S0, m0, S0) == pytest.approx(0.0, abs=1e-12)


def test_w2_is_the_frechet_distance_of_fid():
    """The eigendecomposition route equals FID's formula with scipy.linalg.sqrtm."""
    (m0, S0), (m1, S1) = _random_gaussian(5, 3), _random_gaussian(5, 4)
    a, b = S0.numpy(), S1.numpy()
    fid = float(((m0 - m1) ** 2).sum()) + np.trace(a + b - 2 * scipy.linalg.sqrtm(a @ b).real)
    assert gaussian_w2(m0, S0, m1, S1) ** 2 == pytest.approx(fid, rel=1e-9)
    assert gaussian_w2(m0, S0, m0, S0) == pytest.approx(0.0, abs=1e-6)


def test_w2_against_samples(gen):
    """1D: the quantile coupling of sorted samples; 2D: an exact optimal assignment of samples."""
    m0, m1 = torch.tensor([0.3], dtype=F64), torch.tensor([-1.0], dtype=F64)
    S0, S1 = torch.tensor([[2.0]], dtype=F64), torch.tensor([[0.5]], dtype=F64)
    a, b = _law(m0, S0).sample(400_000, gen), _law(m1, S1).sample(400_000, gen)
    w2_1d = float(((a.sort(0).values - b.sort(0).values) ** 2).mean().sqrt())
    assert w2_1d == pytest.approx(gaussian_w2(m0, S0, m1, S1), rel=5e-3)
    m0, S0 = torch.zeros(2, dtype=F64), torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=F64)
    m1, S1 = torch.tensor([1.0, -1.0], dtype=F64), torch.tensor([[0.5, -0.2], [-0.2, 0.3]], dtype=F64)
    a, b = _law(m0, S0).sample(1000, gen).numpy(), _law(m1, S1).sample(1000, gen).numpy()
    cost = ((a[:, None] - b[None]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    assert math.sqrt(cost[r, c].mean()) == pytest.approx(gaussian_w2(m0, S0, m1, S1), rel=0.03)


def test_singular_covariances():
    m, S = _random_gaussian(4, 5)
    P = torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64))
    assert gaussian_kl(m, S, m, P) == math.inf and gaussian_kl(m, P, m, S) == math.inf
    assert math.isfinite(gaussian_w2(m, S, m, P)) and gaussian_w2(m, P, m, P) == pytest.approx(0, abs=1e-7)


def test_ledoit_wolf_is_the_closed_form(gen):
    x = torch.randn(30, 5, dtype=F64, generator=gen) @ torch.diag(torch.arange(1.0, 6.0, dtype=F64))
    cov, a = ledoit_wolf(x)
    xc = x - x.mean(0)
    S = xc.T @ xc / 30
    mu = S.trace() / 5
    beta = sum(((v[:, None] * v[None] - S) ** 2).sum() for v in xc) / (5 * 30 ** 2)
    delta = ((S - mu * torch.eye(5, dtype=F64)) ** 2).sum() / 5
    assert a == pytest.approx(float(min(beta, delta) / delta), rel=1e-12) and 0 < a < 1
    assert torch.allclose(cov, (1 - a) * S + a * mu * torch.eye(5, dtype=F64))
    big = torch.randn(20_000, 5, dtype=F64, generator=gen) @ torch.diag(torch.arange(1.0, 6.0, dtype=F64))
    assert ledoit_wolf(big)[1] < 0.01                      # plenty of data: (almost) no shrinkage
    assert torch.equal(fit_gaussian(x, "shrinkage")[1], cov)


def test_generators_and_their_exact_quality(gen):
    world = isotropic(d=16, std=2.0, seed=0)
    x, y = world.sample(20, gen)
    q = {k: generator_quality(world, make_generator(k, world, x, y, k=8, generator=gen)) for k in GENERATORS}
    assert all(v == pytest.approx(0, abs=1e-9) for v in q["truth"].values())
    assert q["mle"]["kl_pq"] == math.inf and q["mle"]["kl_qp"] == math.inf     # n per class < d: singular
    assert math.isfinite(q["shrinkage"]["kl_pq"]) and math.isfinite(q["shrinkage"]["kl_qp"])
    assert q["mle"]["mean_angle_deg"] == pytest.approx(q["shrinkage"]["mean_angle_deg"])
    for k in ("kl_pq", "kl_qp", "w2", "mean_angle_deg", "mean_error"):       # 8x the labelled data helps
        assert q["more-labelled"][k] < q["shrinkage"][k]
    assert q["pseudo-label"]["w2"] < q["shrinkage"]["w2"]
    bad = make_generator("pseudo-label", world, x, y, k=8, labeller=lambda p: -p @ world.mu, generator=gen)
    assert generator_quality(world, bad)["mean_angle_deg"] > 90       # wrong labels, wrong mean


def test_pseudo_labels_and_angles(gen):
    world = make_world("lowrank", d=8, rank=2, std=1.0, seed=3)
    x, y = world.sample(200, gen)
    pool, truth = world.sample(4000, gen)
    acc = {k: float((pseudo_label(x, y, pool, k) == truth).double().mean()) for k in ("mean", "lda")}
    w = (y[:, None] * x).mean(0)                                  # the `mean` labeller, exactly
    exact = 0.5 * math.erfc(-float(w @ world.mu) / float(w @ world.Sigma @ w) ** 0.5 / math.sqrt(2))
    assert abs(acc["mean"] - exact) < 4 * math.sqrt(exact * (1 - exact) / 4000)
    assert acc["lda"] > max(acc["mean"], world.bayes_accuracy() - 0.02)     # LDA knows Sigma matters
    assert mean_angle(world.mu, world.mu) == pytest.approx(0, abs=1e-6)
    assert mean_angle(-world.mu, world.mu) == pytest.approx(180)
    assert torch.equal(signed_labels(torch.tensor([0, 1, 1])), torch.tensor([-1, 1, 1]))


def test_bad_input_is_named(gen):
    world = isotropic(d=4)
    x, y = world.sample(10, gen)
    cases = [(lambda: isotropic(d=0), "d must be"), (lambda: world.sample(0), "n must be"),
             (lambda: make_generator("gan", world, x, y), "unknown generator 'gan'"),
             (lambda: make_world("ring", d=3), "unknown Gaussian world 'ring'"),
             (lambda: fit_gaussian(x, "oas"), "unknown estimator 'oas'"),
             (lambda: fit_gaussian(torch.zeros(0, 3)), "n >= 1"),
             (lambda: signed_labels(torch.tensor([-1, 0, 1])), "labels must lie"),
             (lambda: make_generator("mle", world, x[y == 1], y[y == 1]), "no point of class y = -1"),
             (lambda: make_generator("more-labelled", world, x, y, k=0), "k must be"),
             (lambda: GaussianWorld(torch.ones(2), -torch.eye(2)), "positive semi-definite"),
             (lambda: pseudo_label(x, y, x, "svm"), "unknown labeller 'svm'")]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()
