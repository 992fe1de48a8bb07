"""AT for diffusion models: the equivariance loss against closed forms, gradients against finite
differences, the FGSM step against its box, the budget schedule, the cost table, bad input."""
import math

import pytest
import torch
from torch.func import functional_call

from dmat_core.diffusion.edm import CountingDenoiser
from dmat_core.diffusion.losses import (ATConfig, at_budget, at_dm_loss, cost_table, denoising_loss,
                                        eps_weight, equivariance_loss, fgsm_perturbation, prediction_gap,
                                        random_perturbation)
from dmat_core.toys.corruption import corrupt
from dmat_core.toys.mixtures import GaussianMixture, plane3d, ring8
from dmat_core.toys.nets import ToyDenoiserMLP

f64 = torch.float64


def _batch(d, B=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, d, dtype=f64, generator=g)
    sigma = torch.exp(torch.randn(B, dtype=f64, generator=g) * 1.2 - 1.2)
    noise = torch.randn(B, d, dtype=f64, generator=g)
    return x0, sigma, noise


def _x_eps(D, x0, sigma, noise):
    x = x0 + sigma[:, None] * noise
    return x, (x - D(x, sigma)) / sigma[:, None]


@pytest.mark.parametrize("variant", ["random", "adversarial"])
@pytest.mark.parametrize("weighting", ["edm", "eps"])
def test_equivariance_loss_is_zero_where_the_target_is_exact(variant, weighting):
    """A point mass: D(x, sigma) = mu for every x, so eps_th(x + sigma w) = eps_th(x) + w exactly
    and the equivariance term vanishes for every w and every sigma; the invariance term does not."""
    dist = GaussianMixture.isotropic([[0.3, -0.2]], std=0.0)
    x0 = dist.sample(64, torch.Generator().manual_seed(0))
    for cfg in (ATConfig(variant, weighting=weighting), ATConfig(variant, r_min=0.3, min_units="noise")):
        _, parts = at_dm_loss(dist.denoiser, x0, cfg, sigma_data=0.5,
                              generator=torch.Generator().manual_seed(1))
        assert float(parts["loss_at"]) < 1e-20
        assert float(parts["loss_dsm"]) < 1e-20               # the exact denoiser of a point mass
    _, parts = at_dm_loss(dist.denoiser, x0, ATConfig("invariance"), 0.5,
                          generator=torch.Generator().manual_seed(1))
    assert float(parts["loss_at"]) > 1e-3


def test_equivariance_exact_off_the_subspace():
    """Data on a plane: the exact denoiser ignores the normal direction, so a perturbation along the
    normal satisfies equivariance exactly; along the plane it does not."""
    dist = plane3d()
    x0, sigma, noise = _batch(3)
    x0 = dist.sample(64, torch.Generator().manual_seed(0))
    x, eps = _x_eps(dist.denoiser, x0, sigma, noise)
    U = dist.U[0]
    normal = torch.linalg.cross(U[:, 0], U[:, 1])
    w = 0.7 * torch.randn(64, 1, dtype=f64) * normal
    assert equivariance_loss(dist.denoiser, x, sigma, eps, w, 1.0) < 1e-20
    w_in = 0.7 * torch.randn(64, 1, dtype=f64) * U[:, 0]
    assert equivariance_loss(dist.denoiser, x, sigma, eps, w_in, 1.0) > 1e-4


def test_equivariance_loss_closed_form_for_a_gaussian():
    """N(0, v I): D = a x with a = v/(v + sigma^2), so the residual eps_th(x') - eps_th(x) - w is
    -a w and the term is weight(sigma) a^2 mean(w^2); the invariance term is (1 - a)^2 mean(w^2)."""
    v, d = 0.5, 4
    dist = GaussianMixture.isotropic(torch.zeros(1, d), std=math.sqrt(v))
    x0, sigma, noise = _batch(d)
    x, eps = _x_eps(dist.denoiser, x0, sigma, noise)
    w = random_perturbation(torch.full((64,), 0.8, dtype=f64), x.shape, torch.Generator().manual_seed(3))
    a = v / (v + sigma ** 2)
    for weighting in ("edm", "eps"):
        wt = eps_weight(sigma, 0.7, weighting)
        want = (wt * a ** 2 * (w ** 2).mean(1)).mean()
        got = equivariance_loss(dist.denoiser, x, sigma, eps, w, 0.7, weighting)
        assert torch.allclose(got, want, rtol=1e-10)
        want_inv = (wt * (1 - a) ** 2 * (w ** 2).mean(1)).mean()
        got_inv = equivariance_loss(dist.denoiser, x, sigma, eps, w, 0.7, weighting, invariance=True)
        assert torch.allclose(got_inv, want_inv, rtol=1e-10)


def test_denoising_loss_of_the_exact_denoiser_is_the_mmse():
    """For N(0, v I) the exact denoiser's eps-loss is E||eps_th - eps||^2/d = v/(v + sigma^2)."""
    v, d, s = 0.5, 3, 0.8
    dist = GaussianMixture.isotropic(torch.zeros(1, d), std=math.sqrt(v))
    g = torch.Generator().manual_seed(0)
    x0 = dist.sample(200_000, g)
    noise = torch.randn(x0.shape, dtype=f64, generator=g)
    sigma = torch.full((x0.shape[0],), s, dtype=f64)
    loss, _ = denoising_loss(dist.denoiser, x0, sigma, noise, 1.0, "eps")
    assert abs(float(loss) - v / (v + s ** 2)) < 0.01


def _tiny_net():
    torch.manual_seed(0)
    net = ToyDenoiserMLP(2, sigma_data=0.8, width=8, depth=1, emb_dim=4).double()
    for p in net.parameters():        # the output layer starts at zero: make the test non-trivial
        p.data += 0.3 * torch.randn_like(p)
    return net


def _flat_call(net):
    """theta -> a denoiser with those parameters (a flat vector), for finite differences."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]

    def D_of(flat):
        params, i = {}, 0
        for n, shp in zip(names, shapes):
            params[n] = flat[i:i + shp.numel()].reshape(shp)
            i += shp.numel()
        return lambda x, s, labels=None: functional_call(net, params, (x, s))

    theta = torch.cat([p.detach().flatten() for p in net.parameters()])
    return theta, D_of


@pytest.mark.parametrize("variant", ["standard", "random", "adversarial", "invariance"])
def test_gradient_matches_finite_differences(variant):
    """d(loss)/d(weights) by autograd against central differences (the FGSM w is held fixed,
    as the sign of a gradient is locally constant)."""
    theta, D_of = _flat_call(_tiny_net())
    x0, sigma, noise = _batch(2, B=8)
    cfg = ATConfig(variant, lam=0.7, r_min=0.2)

    def loss_of(flat):
        return at_dm_loss(D_of(flat), x0, cfg, 0.8, sigma, noise,
                          generator=torch.Generator().manual_seed(5))[0]

    assert torch.autograd.gradcheck(loss_of, (theta.requires_grad_(True),), eps=1e-6, atol=1e-6,
                                    rtol=1e-4)


@pytest.mark.parametrize("variant", ["random", "adversarial"])
def test_detached_target_gradient(variant):
    """detach_clean=True: the gradient is that of the loss with eps_th(x) in the target frozen at
    the current weights (checked by finite differences of that surrogate)."""
    theta0, D_of = _flat_call(_tiny_net())
    x0, sigma, noise = _batch(2, B=8)
    cfg = ATConfig(variant, lam=0.7, r_min=0.2, detach_clean=True)
    g = lambda: torch.Generator().manual_seed(5)
    x = x0 + sigma[:, None] * noise
    D0 = D_of(theta0)
    with torch.no_grad():
        eps0 = (x - D0(x, sigma)) / sigma[:, None]
    r = cfg.budget(sigma, 0.8).to(f64)
    w = (random_perturbation(r, x.shape, g()) if variant == "random"
         else fgsm_perturbation(D0, x, sigma, eps0, r, 1.0, "gap", g()))

    def surrogate(flat):
        D = D_of(flat)
        dsm, _ = denoising_loss(D, x0, sigma, noise, 0.8)
        return dsm + 0.7 * equivariance_loss(D, x, sigma, eps0, w, 0.8)

    th = theta0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(at_dm_loss(D_of(th), x0, cfg, 0.8, sigma, noise, generator=g())[0], th)
    assert torch.autograd.gradcheck(surrogate, (theta0.clone().requires_grad_(True),), eps=1e-6,
                                    atol=1e-6, rtol=1e-4)
    (want,) = torch.autograd.grad(surrogate(th), th)
    assert torch.allclose(grad, want, atol=1e-10)
    (full,) = torch.autograd.grad(at_dm_loss(D_of(th), x0, ATConfig(variant, lam=0.7, r_min=0.2),
                                             0.8, sigma, noise, generator=g())[0], th)
    assert not torch.allclose(grad, full, atol=1e-6)       # detaching changes the gradient


def test_fgsm_stays_in_the_box_and_increases_the_gap():
    for D, d in ((ring8().denoiser, 2), (_tiny_net(), 2),
                 (GaussianMixture.isotropic(torch.zeros(1, 3), std=0.6).denoiser, 3)):
        x0, sigma, noise = _batch(d, B=256, seed=2)
        x, eps = _x_eps(D, x0, sigma, noise)
        eps = eps.detach()
        r = at_budget(sigma, 1.0, r_max=1.0, r_min=0.1, min_units="noise").to(f64)
        w = fgsm_perturbation(D, x, sigma, eps, r, 1.0, "gap", torch.Generator().manual_seed(4))
        w0 = random_perturbation(r, x.shape, torch.Generator().manual_seed(4))   # the random start
        assert (w.abs() <= r[:, None] * (1 + 1e-12)).all()
        g0, g1 = prediction_gap(D, x, sigma, eps, w0), prediction_gap(D, x, sigma, eps, w)
        assert g1.mean() > g0.mean()
        if d == 3:        # linear D: the gap is a convex quadratic in w, so every point gains
            assert (g1 >= g0 - 1e-12).all()
            assert torch.allclose(w.abs(), r[:, None].expand_as(w))   # FGSM ends at a corner


def test_budget_schedule():
    s = torch.logspace(-3, 2, 50, dtype=f64)
    sd = 0.7
    r = at_budget(s, sd, r_max=1.0, exponent=2.0, r_min=0.125, min_units="data")
    assert (s * r >= 0.125 * sd * (1 - 1e-12)).all()                  # never below the data floor
    u = s / (s ** 2 + sd ** 2).sqrt()
    assert torch.allclose(r[-5:], u[-5:] ** 2)                        # the sqrt(1 - abar)^2 shape
    rn = at_budget(s, sd, r_max=0.5, exponent=1.0, r_min=0.03, min_units="noise")
    assert torch.allclose(rn, torch.maximum(0.5 * u, torch.full_like(u, 0.03)))
    assert torch.allclose(at_budget(s, sd, 1.0, 2.0, 0.0), u ** 2)


def test_cost_table_matches_the_forward_count():
    net = _tiny_net()
    x0, sigma, noise = _batch(2, B=8)
    table = cost_table()
    for v in ("standard", "random", "adversarial", "invariance"):
        D = CountingDenoiser(net)
        at_dm_loss(D, x0, ATConfig(v), 0.8, sigma, noise)
        assert D.nfe == table[v]["forward"]
    assert table["standard"]["relative"] == 1.0 and table["adversarial"]["relative"] == 3.0


def test_true_noise_target_by_hand():
    """One point in 2D, the linear denoiser D(x, sigma) = x / 2 at sigma = 1/2, so eps_th(y) = y:
    x0 = (1, -2), eps = (0.2, 0.4) give x = (1.1, -1.8); w = (0.1, -0.3) gives x' = (1.15, -1.95).
    True-noise target eps + w = (0.3, 0.1): residual (0.85, -2.05), mean square 2.4625.
    The paper's target eps_th(x) + w = (1.2, -2.1): residual (-0.05, 0.15), mean square 0.0125.
    The EDM weight at sigma_data = 1 is (1/4 + 1) / 1 = 1.25."""
    D = lambda x, s, labels=None: 0.5 * x
    x0 = torch.tensor([[1.0, -2.0]], dtype=f64)
    sigma = torch.tensor([0.5], dtype=f64)
    noise = torch.tensor([[0.2, 0.4]], dtype=f64)
    w = torch.tensor([[0.1, -0.3]], dtype=f64)
    x, eps = _x_eps(D, x0, sigma, noise)
    assert torch.allclose(x, torch.tensor([[1.1, -1.8]], dtype=f64)) and torch.allclose(eps, x)
    true = lambda weighting: float(equivariance_loss(D, x, sigma, eps, w, 1.0, weighting, noise=noise))
    assert true("eps") == pytest.approx(2.4625, rel=1e-12)
    assert true("edm") == pytest.approx(1.25 * 2.4625, rel=1e-12)
    assert float(equivariance_loss(D, x, sigma, eps, w, 1.0, "eps")) == pytest.approx(0.0125, rel=1e-10)
    # the invariance ablation with the true noise: target eps = (0.2, 0.4), residual (0.95, -2.35)
    inv = float(equivariance_loss(D, x, sigma, eps, w, 1.0, "eps", invariance=True, noise=noise))
    assert inv == pytest.approx((0.95 ** 2 + 2.35 ** 2) / 2, rel=1e-12)


def test_at_dm_loss_passes_the_true_noise_to_the_target():
    """at_dm_loss with target='true-noise' (random w, drawn from the generator after nothing else:
    sigma and the noise are given) equals the hand-written term eps_weight * mean (eps_th(x') - eps - w)^2
    on a small batch, and differs from the paper's target."""
    net = _tiny_net()
    x0, sigma, noise = _batch(2, B=5)
    cfg = ATConfig("random", lam=0.7, target="true-noise", weighting="eps")
    loss, parts = at_dm_loss(net, x0, cfg, 0.8, sigma, noise, generator=torch.Generator().manual_seed(4))
    r = cfg.budget(sigma, 0.8)
    u = torch.rand(x0.shape, generator=torch.Generator().manual_seed(4), dtype=f64)
    w = (2 * u - 1) * r[:, None]
    x = x0 + sigma[:, None] * noise
    xp = x + sigma[:, None] * w
    with torch.no_grad():
        eps_p = (xp - net(xp, sigma)) / sigma[:, None]
        eps_c = (x - net(x, sigma)) / sigma[:, None]
    want = ((eps_p - noise - w) ** 2).mean(1).mean()
    assert float(parts["loss_at"]) == pytest.approx(float(want), rel=1e-10)
    assert float(parts["loss_dsm"]) == pytest.approx(float(((eps_c - noise) ** 2).mean(1).mean()), rel=1e-10)
    assert float(loss.detach()) == pytest.approx(float(parts["loss_dsm"]) + 0.7 * float(want), rel=1e-10)
    _, paper = at_dm_loss(net, x0, ATConfig("random", lam=0.7, weighting="eps"), 0.8, sigma, noise,
                          generator=torch.Generator().manual_seed(4))
    assert abs(float(paper["loss_at"]) - float(want)) > 1e-3


@pytest.mark.parametrize("bad", [dict(variant="trades"), dict(lam=-0.1), dict(lam=float("nan")),
                                 dict(r_max=-1.0), dict(r_min=-0.01), dict(exponent=-2.0),
                                 dict(min_units="pixels"), dict(attack_target="loss"),
                                 dict(weighting="snr"), dict(fgsm_step=-1.0), dict(target="eps")])
def test_bad_at_config_is_a_clear_error(bad):
    with pytest.raises(ValueError):
        ATConfig(**{"variant": "adversarial", **bad})


@pytest.mark.parametrize("bad", [dict(p=1.5), dict(p=-0.1), dict(q=2.0), dict(s=-0.1),
                                 dict(kind="blur"), dict(kind="outlier", outlier="gauss")])
def test_bad_corruption_is_a_clear_error(bad):
    with pytest.raises(ValueError):
        corrupt(ring8(), 100, **{"kind": "inlier", **bad})
