"""Affine-denoiser diffusion models (dmat_core/toys/affine_dm.py): the exact Gaussian law of Heun
samples against dmat's edm_heun, convergence to the data law, and training with dmat's own
trainer and losses (standard and AT for DMs) towards the exact Gaussian denoiser."""
import math

import pytest
import torch

from dmat_core.diffusion.edm import edm_sigmas
from dmat_core.diffusion.losses import ATConfig
from dmat_core.diffusion.samplers import edm_heun
from dmat_core.toys.affine_dm import (AffineDenoiser, affine_parts, denoiser_excess, gaussian_affine,
                                      heun_affine_map, heun_gaussian)
from dmat_core.toys.gaussians import fit_gaussian, gaussian_kl, gaussian_w2
from dmat_core.toys.mixtures import GaussianMixture
from dmat_core.toys.nets import ToyDenoiserMLP, data_std
from dmat_core.toys.train import fit_toy

F64 = torch.float64
D_DIM = 4


def _gaussian(d=D_DIM, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(d, d, dtype=F64, generator=g)
    m = torch.tensor([1.0, -0.5, 0.3, 2.0], dtype=F64)[:d]
    return m, B @ B.T / d + 0.2 * torch.eye(d, dtype=F64)


def _exact(m, S):
    return GaussianMixture.from_covariances([1.0], m[None], S[None]).denoiser


@pytest.fixture(scope="module")
def trained():
    """Standard and adversarial AT for DMs on 20000 points of N(m, S), 1000 steps each (~3 s)."""
    m, S = _gaussian()
    x = GaussianMixture.from_covariances([1.0], m[None], S[None]).sample(20_000, torch.Generator().manual_seed(1))
    models = {}
    for variant in ("standard", "adversarial"):
        D, _ = fit_toy(AffineDenoiser(D_DIM, data_std(x)), x, ATConfig(variant), steps=1000, lr=2e-2,
                       ema=0.9, warmup=20, batch=512, seed=0)
        models[variant] = D
    return m, S, x, models


def test_exact_affine_and_the_knot_model():
    m, S = _gaussian()
    for s in (0.01, 0.3, 2.0):
        A, b = affine_parts(_exact(m, S), s, D_DIM)
        As, bs = gaussian_affine(m, S, s)
        assert torch.allclose(A, As, atol=1e-12) and torch.allclose(b, bs, atol=1e-12)
    model = AffineDenoiser.from_gaussian(m, S)
    for s in model.net.knot_sigmas().tolist():                  # exact at every knot
        assert denoiser_excess(model, m, S, s) < 1e-24
    for s in (0.05, 0.37, 3.3):                                 # close in between
        assert denoiser_excess(model, m, S, s) < 1e-3
    assert denoiser_excess(model, m, S, 40.0) < 1e-2              # and beyond sigma_max = 10


def test_heun_law_is_the_law_of_edm_heun_samples():
    """The composed affine map reproduces edm_heun on the same latents to rounding, for the exact
    denoiser and for a float64 AffineDenoiser; the churn's noise enters the covariance."""
    m, S = _gaussian()
    sigmas = edm_sigmas(18)
    z = torch.randn(500, D_DIM, dtype=F64, generator=torch.Generator().manual_seed(2))
    for D in (_exact(m, S), AffineDenoiser.from_gaussian(m, S)):
        Fm, g = heun_affine_map(D, sigmas, D_DIM)
        *_, x0 = edm_heun(D, z, sigmas)
        assert (x0 - (sigmas[0] * z) @ Fm.T - g).abs().max() < 1e-10
        mean, cov = heun_gaussian(D, sigmas, dim=D_DIM)
        assert torch.allclose(mean, g) and torch.allclose(cov, sigmas[0] ** 2 * Fm @ Fm.T)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(40_000, D_DIM, dtype=F64, generator=gen)
    *_, x0 = edm_heun(_exact(m, S), z, edm_sigmas(8), S_churn=4.0, generator=gen)
    mean, cov = heun_gaussian(_exact(m, S), edm_sigmas(8), dim=D_DIM, S_churn=4.0)
    _within_sampling_error(x0, mean, cov)


def _within_sampling_error(x, mean, cov, k=4.5):
    n = x.shape[0]
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() < k * se_mean).all()
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov ** 2) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() < k * se_cov).all()


def test_many_heun_steps_reach_the_data_law():
    """From the true noised law, the Heun law converges to N(m, S) at second order; from the
    sampler's own start N(0, sigma_max^2 I) it converges to the exact flow of that start."""
    m, S = _gaussian()
    eye = torch.eye(D_DIM, dtype=F64)
    w2 = []
    for n in (20, 40, 80, 160):
        sg = edm_sigmas(n)
        mean, cov = heun_gaussian(_exact(m, S), sg, mean0=m, cov0=S + sg[0] ** 2 * eye)
        w2.append(gaussian_w2(m, S, mean, cov))
    assert w2[-1] < 2e-3 and gaussian_kl(m, S, mean, cov) < 2e-6
    assert all(a / b > 3.5 for a, b in zip(w2, w2[1:]))          # error / 4 per halving: 2nd order
    lam, V = torch.linalg.eigh(S)                                 # the PF-ODE maps x_80 - m by
    T = (V * (lam / (lam + 80.0 ** 2)).sqrt()) @ V.T             # (S / (S + 80^2))^1/2
    err = []
    for n in (160, 320):
        mean, cov = heun_gaussian(_exact(m, S), edm_sigmas(n), dim=D_DIM)
        err.append(max((mean - (m - T @ m)).abs().max(), (cov - 80.0 ** 2 * T @ T).abs().max()))
    assert err[1] < 1e-3 and err[0] / err[1] > 3.5


def test_training_reaches_the_exact_gaussian_denoiser(trained):
    m, S, x, models = trained
    D = models["standard"]
    me, Se = fit_gaussian(x)                                      # the affine optimum on these points
    for s in (0.05, 0.3, 1.0, 3.0):
        assert denoiser_excess(D, me, Se, s) < 0.01
        A, _ = affine_parts(D, s, D_DIM)
        As, _ = gaussian_affine(me, Se, s)
        assert (A - As).norm() / As.norm() < (0.05 if s <= 1 else 0.1)
    sigmas = edm_sigmas(18)
    mean, cov = heun_gaussian(D, sigmas, dim=D_DIM)
    ideal = heun_gaussian(_exact(m, S), sigmas, dim=D_DIM)
    assert gaussian_kl(m, S, mean, cov) < 2 * gaussian_kl(m, S, *ideal)    # discretisation + learning


def test_propagated_covariance_matches_heun_samples(trained):
    """The float32 model sampled by edm_heun in float32: mean and covariance within sampling error."""
    _, _, _, models = trained
    sigmas = edm_sigmas(18)
    for D in models.values():
        z = torch.randn(20_000, D_DIM, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            *_, x0 = edm_heun(D, z, sigmas.float())
        mean, cov = heun_gaussian(D, sigmas, dim=D_DIM)
        _within_sampling_error(x0.double(), mean, cov)


def test_at_for_dms_shrinks_the_affine_map(trained):
    """AT's equivariance residual of an affine D is -A w: the adversarial model's A is smaller at
    every noise level and its samples are less spread than the standard model's."""
    _, _, _, models = trained
    for s in (0.1, 0.5, 1.0, 3.0):
        norms = [affine_parts(models[v], s, D_DIM)[0].norm() for v in ("adversarial", "standard")]
        assert norms[0] < norms[1]
    tr = [heun_gaussian(models[v], edm_sigmas(18), dim=D_DIM)[1].trace() for v in ("adversarial", "standard")]
    assert tr[0] < tr[1]


def test_bad_input_is_named():
    m, S = _gaussian()
    cases = [(lambda: AffineDenoiser(0), "dim >= 1"), (lambda: AffineDenoiser(2, knots=1), "knots >= 2"),
             (lambda: gaussian_affine(m, S, 0.0), "sigma must be"),
             (lambda: heun_gaussian(_exact(m, S), [1.0, 2.0, 0.0], dim=D_DIM), "decreasing"),
             (lambda: heun_gaussian(_exact(m, S), edm_sigmas(4)), "give the dimension"),
             (lambda: heun_gaussian(_exact(m, S), edm_sigmas(4), m, torch.eye(3)), "must agree"),
             (lambda: heun_gaussian(_exact(m, S), edm_sigmas(4), mean0=m), "both mean0 and cov0"),
             (lambda: heun_affine_map(_exact(m, S), edm_sigmas(4), 0), "dim must be"),
             (lambda: affine_parts(lambda x, s, labels=None: x ** 3, 1.0, 2), "not affine")]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()
    net = ToyDenoiserMLP(2, 1.0)
    torch.nn.init.normal_(net.net.out.weight)                     # a non-zero MLP is not affine
    with pytest.raises(ValueError, match="not affine"):
        heun_affine_map(net, edm_sigmas(4), 2)
