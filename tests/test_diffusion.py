"""Diffusion conventions: preconditioning, conversions, the DDPM <-> EDM map."""
import math

import torch

from dmat_core.diffusion.edm import (EDMPrecond, alpha_bar_from_sigma, ddpm_alphas_bar, eps_from_x0,
                                     pf_ode_velocity, score_from_x0, sigma_from_alpha_bar, x0_from_eps,
                                     x0_from_score)
from dmat_core.toys.mixtures import GaussianMixture


class Zero(torch.nn.Module):
    def forward(self, x, c_noise, labels=None):
        assert c_noise.shape == (x.shape[0],)
        return torch.zeros_like(x)


def test_precond_with_zero_net_is_exact_for_gaussian_of_std_sigma_data():
    """For N(0, sd^2 I) the ideal denoiser is sd^2/(sd^2+sigma^2) x = c_skip x: F* = 0."""
    sd = 0.5
    D = EDMPrecond(Zero(), sigma_data=sd)
    dist = GaussianMixture.isotropic(torch.zeros(1, 3), std=sd)
    x = torch.randn(16, 3, dtype=torch.float64)
    sigma = torch.logspace(-2, 1.5, 16, dtype=torch.float64)
    assert torch.allclose(D(x, sigma), dist.denoiser(x, sigma), atol=1e-12)


def test_precond_coefficients_and_weight():
    D = EDMPrecond(Zero(), sigma_data=0.5)
    s = torch.tensor([0.1, 1.0, 10.0])
    c_skip, c_out, c_in = D.coefficients(s)
    # EDM appendix B.6: unit-variance network input and unit-variance effective target
    # (x0 - c_skip x) / c_out for x = x0 + sigma n, Var x0 = sd^2
    assert torch.allclose(c_in ** 2 * (s ** 2 + 0.25), torch.ones(3))
    assert torch.allclose(((1 - c_skip) ** 2 * 0.25 + c_skip ** 2 * s ** 2) / c_out ** 2, torch.ones(3))
    w = EDMPrecond.loss_weight(s)
    assert torch.allclose(w * c_out ** 2, torch.ones(3))      # lambda(sigma) c_out^2 = 1


def test_conversions_round_trip():
    x, x0 = torch.randn(8, 4), torch.randn(8, 4)
    sigma = torch.rand(8) + 0.1
    eps = eps_from_x0(x, x0, sigma)
    assert torch.allclose(x0_from_eps(x, eps, sigma), x0, atol=1e-6)
    score = score_from_x0(x, x0, sigma)
    assert torch.allclose(x0_from_score(x, score, sigma), x0, atol=1e-5)
    D = lambda x, s, labels=None: x0
    assert torch.allclose(pf_ode_velocity(D, x, sigma), eps, atol=1e-6)


def test_ddpm_point_is_edm_point():
    """x_t = sqrt(ab) x0 + sqrt(1-ab) eps  <=>  x_t / sqrt(ab) = x0 + sigma_t eps."""
    ab = ddpm_alphas_bar(1000, "cosine")[1:]
    sig = sigma_from_alpha_bar(ab)
    x0, eps = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    for t in (0, 10, 500, 998):
        xt = ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * eps
        assert torch.allclose(xt / ab[t].sqrt(), x0 + sig[t] * eps)
    assert torch.allclose(alpha_bar_from_sigma(sig), ab)
    lin = ddpm_alphas_bar(1000, "linear")
    assert math.isclose(float(lin[-1]), float(torch.prod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))))
