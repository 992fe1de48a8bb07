"""The Tweedie-shrinkage sampler: the standard sampler at sigma_s = 0 (bit for bit), D(x, sigma_s)
at its end, and its likelihood against the closed form of a Gaussian pushed through the map."""
import math

import pytest
import torch

from dmat_core.diffusion.edm import edm_sigmas
from dmat_core.diffusion.samplers import latent_noise, run
from dmat_core.diffusion.shrinkage import (invert_denoiser, shrinkage_log_likelihood, shrinkage_run,
                                           stop_at)
from dmat_core.toys.mixtures import GaussianMixture, ring8
from dmat_core.toys.train import make_toy_model


def test_at_zero_it_is_the_standard_sampler_bit_for_bit():
    model = make_toy_model(2, 1.4, seed=3).eval()
    for p in model.parameters():                 # an untrained net is c_skip x: make it non-trivial
        p.data += 0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1))
    z = latent_noise(300, 2, torch.Generator().manual_seed(0))
    for kw in ({}, {"sigma_min": 0.02}):
        with torch.no_grad():
            want = run(model, z, "heun", 18, trajectory=True, **kw)
            got = shrinkage_run(model, z, 0.0, 18, trajectory=True, **kw)
        assert torch.equal(got, want)
    assert torch.equal(stop_at(edm_sigmas(18), 0.0), edm_sigmas(18))


def test_the_sampler_stops_at_sigma_s_and_returns_the_denoised_state():
    dist = ring8()
    z = latent_noise(200, 2, torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = stop_at(edm_sigmas(18), 0.1)
    assert float(grid[-2]) == 0.1 and float(grid[-1]) == 0 and bool((grid[:-2] > 0.1).all())
    assert torch.equal(grid[:-2], edm_sigmas(18)[edm_sigmas(18) > 0.1])
    traj = shrinkage_run(dist.denoiser, z, 0.1, 18, trajectory=True)
    assert traj.shape[0] == len(grid)
    assert torch.allclose(traj[-1], dist.denoiser(traj[-2], 0.1), atol=1e-12)
    below = stop_at(edm_sigmas(18), 1e-4)           # below the grid's smallest level: one more step
    assert len(below) == len(edm_sigmas(18)) + 1 and float(below[-2]) == 1e-4


def test_likelihood_matches_the_gaussian_closed_form():
    """N(m, diag(v)) and its exact denoiser: the ODE's state at sigma_s is N(m, v + sigma_s^2) and
    D(x, sigma_s) = m + v / (v + sigma_s^2) (x - m), so the sampler returns N(m, v^2 / (v + sigma_s^2)):
    its log-density at held-out points is known in closed form."""
    v = torch.tensor([0.5, 0.08], dtype=torch.float64)
    m = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    dist = GaussianMixture.from_covariances([1.0], m, v[None])
    y = dist.sample(40, torch.Generator().manual_seed(1))
    for s in (0.05, 0.3):
        out = shrinkage_log_likelihood(dist.denoiser, y, s)
        var = v ** 2 / (v + s ** 2)
        want = (-0.5 * ((y - m) ** 2 / var + torch.log(2 * math.pi * var))).sum(1)
        assert bool(out["converged"].all())
        # the change of variables alone is exact: the true density at sigma_s of the preimage
        exact = dist.log_prob(out["preimage"], s) - out["log_det"]
        assert (exact - want).abs().max() < 1e-8, s
        # through the ODE, what is left is its prior term (about |m| / sigma_max per point,
        # tests/test_likelihood.py) and the integrator's error
        diff = out["log_likelihood"] - want
        assert float(diff.abs().max()) < 5 * float(m.norm()) / 80 and abs(float(diff.mean())) < 2e-3, s
        assert torch.allclose(out["log_det"], torch.log(v / (v + s ** 2)).sum().expand(40), atol=1e-9)
    # the shrunk model puts less density on true points than the truth: a proper score sees it
    assert float(out["log_likelihood"].mean()) < float(dist.log_prob(y).mean()) - 0.1


def test_the_exact_mixture_denoiser_inverts_everywhere():
    dist = ring8()
    x = 3 * torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for s in (0.01, 0.2, 1.0):
        y = dist.denoiser(x, s)
        inv = invert_denoiser(dist.denoiser, y, s)
        assert bool(inv["converged"].all()) and (inv["x"] - x).abs().max() < 1e-6, s
        assert bool(torch.isfinite(inv["log_det"]).all())


def test_a_map_that_cannot_be_inverted_is_reported_not_dropped():
    """D(x) = mu (a point mass): every y other than mu has no preimage."""
    D = lambda x, s, labels=None: torch.zeros_like(x) + 0.5
    out = invert_denoiser(D, torch.randn(5, 2, dtype=torch.float64), 0.1, max_iter=3)
    assert not out["converged"].any() and bool(out["log_det"].isnan().all())


@pytest.mark.parametrize("sigma_s", [-0.1, 80.0, float("nan")])
def test_bad_sigma_s(sigma_s):
    with pytest.raises(ValueError, match="sigma_s"):
        stop_at(edm_sigmas(18), sigma_s)
