"""Exact densities: scores against autograd, Tweedie, normalisation, stability, bad input."""
import math

import pytest
import torch

from dmat_core.toys.mixtures import PRESETS, GaussianMixture, make_distribution

SIGMAS = [1e-3, 0.05, 0.3, 1.0, 7.0, 100.0]
SMALL = {"ring8": {}, "grid25": {}, "plane3d": {}, "subspace": {"d": 64, "k": 4},
         "anisotropic": {"d": 8}}


def _points(dist, sigma, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = dist.sample(n, g)
    return x0 + sigma * torch.randn(x0.shape, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("sigma", SIGMAS)
def test_score_is_autograd_of_log_prob(name, sigma):
    dist = make_distribution(name, **SMALL[name])
    x = _points(dist, sigma).requires_grad_(True)
    (g,) = torch.autograd.grad(dist.log_prob(x, sigma).sum(), x)
    s = dist.score(x, sigma)
    assert torch.isfinite(s).all()
    scale = s.abs().max().clamp_min(1.0)
    assert (g - s).abs().max() / scale < 1e-8


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tweedie(name):
    dist = make_distribution(name, **SMALL[name])
    for sigma in SIGMAS:
        x = _points(dist, sigma)
        D = dist.denoiser(x, sigma)
        assert torch.allclose(D, x + sigma ** 2 * dist.score(x, sigma), rtol=1e-10, atol=1e-10)


def test_denoiser_is_posterior_mean_monte_carlo():
    """E[x0 | x] by importance weighting of prior samples agrees with the closed form."""
    dist = make_distribution("ring8")
    g = torch.Generator().manual_seed(3)
    x0 = dist.sample(400_000, g)
    x = torch.tensor([[1.2, 0.9], [0.0, 0.0], [-2.5, 0.3]], dtype=torch.float64)
    sigma = 0.7
    logw = -((x[:, None] - x0[None]) ** 2).sum(-1) / (2 * sigma ** 2)
    w = torch.softmax(logw, 1)
    mc = w @ x0
    assert torch.allclose(dist.denoiser(x, sigma), mc, atol=0.02)


@pytest.mark.parametrize("name", ["ring8", "grid25"])
@pytest.mark.parametrize("sigma", [0.0, 0.2, 1.0])
def test_log_prob_integrates_to_one(name, sigma):
    dist = make_distribution(name)
    lim, n = 2.5 + 0.5 + 6 * max(sigma, 0.1), 801
    t = torch.linspace(-lim, lim, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(t, t, indexing="xy")
    p = dist.log_prob(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1), sigma).exp()
    h = (t[1] - t[0]) ** 2
    assert abs(float(p.sum() * h) - 1) < 1e-4


def test_stable_for_sharp_modes_and_far_points():
    dist = GaussianMixture.isotropic(torch.tensor([[0.0, 0.0], [5.0, 0.0]]), std=1e-3)
    x = torch.tensor([[1e3, -1e3], [2.5, 0.0], [0.0, 0.0]], dtype=torch.float64)
    for sigma in [0.0, 1e-3, 1.0, 100.0]:
        for f in (dist.log_prob, dist.score, dist.denoiser):
            assert torch.isfinite(f(x, sigma)).all(), (f.__name__, sigma)


def test_rank_deficient_covariances_and_labels():
    covs = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.2], [0.2, 0.3]]])
    dist = GaussianMixture.from_covariances([0.3, 0.7], [[0.0, 0.0], [2.0, 1.0]], covs, labels=[0, 1])
    assert not dist.full_rank
    assert torch.allclose(dist.covariances(), covs.double(), atol=1e-12)
    x = _points(dist, 0.5)
    s_all = dist.score(x, 0.5)
    # class-conditional: component 1 alone is a plain Gaussian
    s1 = dist.score(x, 0.5, labels=torch.ones(len(x), dtype=torch.long))
    S = covs[1].double() + 0.25 * torch.eye(2, dtype=torch.float64)
    assert torch.allclose(s1, -(x - torch.tensor([2.0, 1.0], dtype=torch.float64)) @ torch.linalg.inv(S))
    assert not torch.allclose(s_all, s1)
    with pytest.raises(ValueError, match="no density at sigma = 0"):
        dist.log_prob(x, 0.0)


def test_sample_statistics_and_entropy():
    dist = make_distribution("anisotropic", d=6)
    x = dist.sample(200_000, torch.Generator().manual_seed(0))
    cov = torch.cov(x.T)
    assert torch.allclose(cov, dist.covariances()[0], atol=0.02)
    H, err = dist.entropy()
    assert err == 0.0
    assert abs(H - float(-dist.log_prob(x).mean())) < 0.02
    ring = make_distribution("ring8")
    H8, err8 = ring.entropy()
    # well-separated equal modes: H = log 8 + Gaussian entropy (exact up to overlap, ~1e-20 here)
    assert abs(H8 - (math.log(8) + 1 + math.log(2 * math.pi * 0.01))) < 4 * err8


def test_subspace_high_dimension():
    dist = make_distribution("subspace", d=3072, k=8)
    x = dist.sample(16, torch.Generator().manual_seed(0))
    U = dist.U[0]
    assert (x - x @ U @ U.T).abs().max() < 1e-10
    D = dist.denoiser(x + 0.01 * torch.randn_like(x), 0.01)
    assert (D - D @ U @ U.T).norm(dim=1).max() < 1e-8       # Tweedie projects onto the subspace


@pytest.mark.parametrize("bad, match", [
    (lambda d: make_distribution("nope"), "unknown distribution"),
    (lambda d: d.sample(0), "positive integer"),
    (lambda d: d.score(torch.zeros(3, 2), -0.1), "sigma must be finite and >= 0"),
    (lambda d: d.score(torch.zeros(3, 3), 0.1), r"x must be \(B, 2\)"),
    (lambda d: d.log_prob(torch.zeros(3, 2), torch.tensor([0.1, 0.2])), "2 entries for a batch of 3"),
    (lambda d: d.denoiser(torch.zeros(2, 2), float("nan")), "finite"),
])
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bad(make_distribution("ring8"))
