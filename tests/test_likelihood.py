"""The PF-ODE log-likelihood of a denoiser (dmat_core/diffusion/likelihood.py), checked where the
answer is known: the exact denoisers of the toy presets, a linear (Gaussian) denoiser in closed
form, Hutchinson's estimate against the exact trace, and a collapsed model against the truth.

The PF-ODE from sigma_min carries the model's density at sigma_min, so the exact denoiser of a
mixture is compared with `log_prob(x, sigma=sigma_min)`: the density at 0 does not exist for
plane3d (rank 2 in R^3), and for full-rank presets it differs by O(d sigma_min^2 / var)."""
import math

import pytest
import torch
from torch import nn

from dmat_core.diffusion.likelihood import log_likelihood
from dmat_core.toys.mixtures import PRESETS, GaussianMixture, make_distribution

SMIN, SMAX = 0.002, 80.0
LOW_D = [name for name, make in PRESETS.items() if make().dim <= 8]


def held_out(dist, n, seed=1):
    return dist.sample(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", LOW_D)
def test_exact_denoiser_gives_the_exact_density(name):
    dist = make_distribution(name)
    x = held_out(dist, 300)
    r = log_likelihood(dist.denoiser, x)
    exact = dist.log_prob(x, SMIN)
    diff = r["log_likelihood"] - exact
    assert r["method"] == "exact" and r["stderr"] is None and r["log_likelihood"].dtype == torch.float64
    assert abs(float(diff.mean())) < 0.02 and float(diff.abs().max()) < 0.02, (name, diff.abs().max())
    # what is left is mostly the prior term: with the true p_sigma_max it is the integrator's error
    true_prior = r["log_likelihood"] - r["log_prior"] + dist.log_prob(r["x_T"], SMAX)
    assert float((true_prior - exact).abs().mean()) < 2e-4
    assert 20 < r["nfe"] < 1000 and r["nfe_total"] == r["nfe"]


def test_exact_trace_above_eight_dimensions():
    """`exact` is allowed in any d (one backward pass per coordinate): anisotropic, d = 16."""
    dist = make_distribution("anisotropic")
    x = held_out(dist, 100)
    r = log_likelihood(dist.denoiser, x, method="exact", chunk=40)
    assert float((r["log_likelihood"] - dist.log_prob(x, SMIN)).abs().max()) < 0.02


def test_hutchinson_in_256_dimensions():
    """subspace (d = 256, rank 8): `auto` is Hutchinson; the mean error is within 4 standard errors."""
    dist = make_distribution("subspace")
    x = held_out(dist, 96)
    r = log_likelihood(dist.denoiser, x, n_probe=8, generator=torch.Generator().manual_seed(0))
    diff = r["log_likelihood"] - dist.log_prob(x, SMIN)
    se = float(r["stderr"].pow(2).sum().sqrt() / len(x))
    assert r["method"] == "hutchinson" and r["n_probe"] == 8 and 0 < se < 2
    assert abs(float(diff.mean())) < 4 * se


# ------------------------------------------------------------------ a Gaussian, in closed form
def gaussian(d, seed):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    lam = torch.logspace(0, -2, d, dtype=torch.float64)
    m = torch.randn(d, dtype=torch.float64, generator=g)
    return Q, lam, m


class LinearDenoiser(nn.Module):
    """The exact denoiser of N(m, Q diag(lam) Q^T): D = m + Q diag(lam / (lam + s^2)) Q^T (x - m)."""

    def __init__(self, Q, lam, m, dtype=torch.float64):
        super().__init__()
        self.register_buffer("Q", Q.to(dtype))
        self.register_buffer("lam", lam.to(dtype))
        self.m = nn.Parameter(m.to(dtype))
        self.labels_seen = []

    def forward(self, x, sigma, labels=None):
        self.labels_seen.append(labels)
        flat = x.reshape(x.shape[0], -1)
        y = (flat - self.m) @ self.Q
        return (self.m + (y * self.lam / (self.lam + sigma ** 2)) @ self.Q.T).reshape(x.shape)


def closed_form(Q, lam, m, x0):
    """The model's log q_smin(x0): the linear flow scales each eigen-coordinate of x - m by
    sqrt((lam + s^2) / (lam + smin^2)), so x_T and the log-determinant are explicit."""
    ratio = (lam + SMAX ** 2) / (lam + SMIN ** 2)
    xT = m + ((x0 - m) @ Q * ratio.sqrt()) @ Q.T
    d = x0.shape[1]
    prior = -0.5 * (xT ** 2).sum(1) / SMAX ** 2 - d * (math.log(SMAX) + 0.5 * math.log(2 * math.pi))
    return prior + 0.5 * ratio.log().sum()


def test_linear_denoiser_matches_the_closed_form():
    Q, lam, m = gaussian(3, 0)
    D = LinearDenoiser(Q, lam, m)
    x = m + torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) @ (Q * lam.sqrt()).T
    labels = torch.arange(200) % 3
    r = log_likelihood(D, x.reshape(200, 1, 3), labels=labels, chunk=64)   # any point shape, 4 chunks
    assert float((r["log_likelihood"] - closed_form(Q, lam, m, x)).abs().max()) < 1e-3
    assert r["x_T"].shape == (200, 1, 3) and r["nfe_total"] > r["nfe"]
    assert all(torch.equal(lab, labels[:64]) for lab in D.labels_seen[:3])
    # against the true density at sigma_min only the prior term differs: about x_T . m / smax^2
    # per point (first order in |m| / smax), second order in 1 / smax on the mean
    true = torch.distributions.MultivariateNormal(m, Q @ torch.diag(lam + SMIN ** 2) @ Q.T).log_prob(x)
    diff = r["log_likelihood"] - true
    assert float(diff.abs().max()) < 5 * float(m.norm()) / SMAX and abs(float(diff.mean())) < 2e-3


def test_a_float32_module_keeps_its_gradients_to_itself():
    Q, lam, m = gaussian(3, 2)
    D = LinearDenoiser(Q, lam, m, dtype=torch.float32)
    x = m + torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.3
    r = log_likelihood(D, x.float())
    assert D.m.grad is None and not r["log_likelihood"].requires_grad
    assert float((r["log_likelihood"] - closed_form(Q, lam, m, x)).abs().max()) < 1e-2


def test_hutchinson_is_unbiased_and_its_standard_error_is_honest():
    """A linear denoiser in d = 12 with a full covariance (Rademacher probes then have variance):
    per point, (estimate - exact) / stderr behaves like a standard normal."""
    Q, lam, m = gaussian(12, 4)
    D = LinearDenoiser(Q, lam, m)
    x = m + torch.randn(60, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) @ (Q * lam.sqrt()).T
    r = log_likelihood(D, x, method="hutchinson", n_probe=32, generator=torch.Generator().manual_seed(6))
    err = r["log_likelihood"] - closed_form(Q, lam, m, x)
    se_mean = float(r["stderr"].pow(2).sum().sqrt() / len(x))
    assert float(r["stderr"].min()) > 0
    assert abs(float(err.mean())) < 4 * se_mean
    z = err / r["stderr"]
    assert 0.7 < float(z.std()) < 1.5, float(z.std())


def test_a_collapsed_model_loses_on_held_out_points():
    """The exact denoiser of ring8 with modes of std 0.02 instead of 0.1: its samples sit on the
    modes, but the likelihood it gives held-out true points is far lower than the truth's."""
    true = make_distribution("ring8")
    collapsed = GaussianMixture.isotropic(true.means, 0.02, weights=true.weights, name="collapsed")
    x = held_out(true, 200)
    ll_true = log_likelihood(true.denoiser, x)["log_likelihood"]
    ll_col = log_likelihood(collapsed.denoiser, x)["log_likelihood"]
    assert float(ll_col.mean()) < float(ll_true.mean()) - 5
    assert float((ll_col - collapsed.log_prob(x, SMIN)).abs().mean()) < 0.02


@pytest.mark.parametrize("kwargs, msg", [
    (dict(method="trace"), "method must be one of"),
    (dict(method="hutchinson", n_probe=1), "n_probe must be an integer >= 2"),
    (dict(sigma_min=1.0, sigma_max=0.5), "need 0 < sigma_min < sigma_max"),
    (dict(chunk=0), "chunk must be an integer >= 1"),
])
def test_bad_arguments(kwargs, msg):
    dist = make_distribution("ring8")
    with pytest.raises(ValueError, match=msg):
        log_likelihood(dist.denoiser, torch.zeros(2, 2), **kwargs)
