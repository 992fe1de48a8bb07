"""Linear classifiers in the two-class Gaussian world (dmat_core/robust/linear.py): the closed-form
robust accuracy against Monte Carlo with dmat's PGD, the closed-form inner maximisations against
dmat's PGD / PGD-AT / TRADES on the same model, the best linear robust classifier against a
brute-force search in d = 2 and its duality certificate, and linear adversarial training."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from dmat_core.robust.attacks import pgd
from dmat_core.robust.linear import (best_linear_robust, linear_at_loss, robust_accuracy, robust_margin,
                                     train_linear, trades_perturbation, two_logit, worst_perturbation)
from dmat_core.robust.pgd_at import pgd_at
from dmat_core.robust.trades import trades_inner, trades_loss
from dmat_core.toys.gaussians import GaussianWorld, isotropic, make_world

F64 = torch.float64
NORMS = ["linf", "l2"]


def _world(d, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, dtype=F64, generator=g)
    return GaussianWorld(1.5 * torch.randn(d, dtype=F64, generator=g), A @ A.T / d + 0.3 * torch.eye(d, dtype=F64))


def _phi(t):
    return 0.5 * np.vectorize(math.erfc)(-np.asarray(t) / math.sqrt(2))


def _grid_accuracy(mu, S, eps, norm, theta, b=0.0):
    """Robust accuracy of w = (cos t, sin t), offset b, for every angle t (numpy, independent)."""
    W = np.stack([np.cos(theta), np.sin(theta)], 1)
    dual = np.abs(W).sum(1) if norm == "linf" else np.linalg.norm(W, axis=1)
    m, s = W @ mu - eps * dual, np.sqrt(np.einsum("ni,ij,nj->n", W, S, W))
    return (_phi((m + b) / s) + _phi((m - b) / s)) / 2


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_best_linear_robust_against_brute_force_in_2d(norm, seed):
    world = _world(2, seed)
    mu, S = world.mu.numpy(), world.Sigma.numpy()
    eps = 0.4
    opt = best_linear_robust(world.mu, world.Sigma, eps, norm)
    theta = np.linspace(0, 2 * np.pi, 200_000, endpoint=False)
    grid = _grid_accuracy(mu, S, eps, norm, theta)
    assert opt.robust_accuracy >= grid.max() - 1e-12              # nothing on the grid beats it
    assert opt.robust_accuracy - grid.max() < 1e-8                # and the grid comes within its spacing
    t = theta[grid.argmax()]                                      # b = 0 is best at the best angle
    for b in np.linspace(-2, 2, 41):
        assert _grid_accuracy(mu, S, eps, norm, np.array([t]), b)[0] <= grid.max() + 1e-12
    assert opt.upper - opt.robust_accuracy < 1e-12


@pytest.mark.parametrize("norm", NORMS)
def test_duality_certificate_in_high_dimension(norm, gen):
    for world, eps in ((_world(20, 5), 0.3), (make_world("lowrank", d=64, rank=4, seed=1), 0.5)):
        eps = eps if norm == "linf" else eps * math.sqrt(world.dim) / 2
        opt = best_linear_robust(world.mu, world.Sigma, eps, norm)
        # the certificate closes the gap to rounding: at the optimum the two may differ by an ulp either way
        assert 0.5 < opt.robust_accuracy <= opt.upper + 1e-12 and opt.upper < opt.robust_accuracy + 1e-10
        for _ in range(200):                                       # random classifiers never beat it
            w, b = torch.randn(world.dim, dtype=F64, generator=gen), float(torch.randn(1, generator=gen))
            assert robust_accuracy(w + 3 * opt.w, b, world.mu, world.Sigma, eps, norm) <= opt.robust_accuracy + 1e-12


def test_certificate_on_ill_conditioned_problems(monkeypatch):
    """300 random problems (d up to 60, condition numbers up to ~3000), both norms: the solvers
    (Linf: active sets, and the L-BFGS-B fallback where the sets cycle) close the duality gap."""
    import dmat_core.robust.linear as linear
    calls = []
    monkeypatch.setattr(linear, "minimize", lambda *a, **k: calls.append(1) or minimize(*a, **k))
    rng = np.random.default_rng(0)
    for _ in range(300):
        d = int(rng.integers(2, 60))
        Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        S = (Q * np.exp(rng.uniform(-4, 4, size=d))) @ Q.T
        mu = rng.normal(size=d) * rng.uniform(0.2, 3)
        u = rng.uniform(0, 1)
        for norm, eps in (("linf", u * np.abs(mu).max()), ("l2", u * np.linalg.norm(mu))):
            opt = best_linear_robust(mu, (S + S.T) / 2, eps, norm)
            assert opt.upper - opt.robust_accuracy < 1e-10
    assert calls                                                   # the fallback ran, and held


def test_closed_forms_of_special_cases():
    world = isotropic(d=64, std=2.0, scale=1.0)
    mu = world.mu.clone()
    mu[:16] *= 0.3                                                 # some coordinates below eps = 0.5
    soft = mu.sign() * (mu.abs() - 0.5).clamp_min(0)              # Linf, isotropic: soft-thresholding
    opt = best_linear_robust(mu, world.Sigma, 0.5, "linf")
    assert torch.allclose(opt.w, soft / soft.norm(), atol=1e-12)
    assert opt.robust_accuracy == pytest.approx(float(_phi(soft.norm() / 2)), abs=1e-13)
    opt = best_linear_robust(mu, world.Sigma, 1.5, "l2")          # L2, isotropic: w = mu
    assert torch.allclose(opt.w, mu / mu.norm(), atol=1e-12)
    assert opt.robust_accuracy == pytest.approx(float(_phi((mu.norm() - 1.5) / 2)), abs=1e-13)
    for norm in NORMS:                                              # eps = 0: the Bayes (LDA) classifier
        w = _world(5, 7)
        bayes = best_linear_robust(w.mu, w.Sigma, 0.0, norm).robust_accuracy
        assert bayes == pytest.approx(w.bayes_accuracy(), abs=1e-13)
        huge = best_linear_robust(w.mu, w.Sigma, 100.0, norm)     # nothing beats a constant classifier
        assert huge.robust_accuracy == 0.5 and huge.w.abs().max() == 0
    assert robust_accuracy([0.0, 0.0], 1.0, [1.0, 0.0], torch.eye(2), 0.1, per_class=True) == (0.0, 1.0)


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 0.6)])
def test_robust_accuracy_against_pgd_monte_carlo(norm, eps, gen):
    """Closed form vs the robust accuracy dmat's PGD measures on the 2-logit nn.Linear, b != 0."""
    world = make_world("lowrank", d=16, rank=2, std=1.0, scale=0.5, seed=4)
    w = world.mu + 0.5 * torch.randn(16, dtype=F64, generator=gen)
    b, n = 0.7, 20_000
    x, y = world.sample(n, gen)
    model = two_logit(w, b)
    torch.manual_seed(0)                                           # PGD's random start
    x_adv = pgd(model, x, (y + 1) // 2, eps=eps, norm=norm, steps=30, step_size=eps / 2, clip=None)
    robust = model(x_adv).argmax(1) == (y + 1) // 2
    exact = robust_accuracy(w, b, world.mu, world.Sigma, eps, norm)
    per_class = robust_accuracy(w, b, world.mu, world.Sigma, eps, norm, per_class=True)
    assert abs(float(robust.double().mean()) - exact) < 4 * math.sqrt(exact * (1 - exact) / n)
    for c, acc in zip((-1, 1), per_class):                        # b != 0: the classes differ
        m = int((y == c).sum())
        assert abs(float(robust[y == c].double().mean()) - acc) < 4 * math.sqrt(acc * (1 - acc) / m)
    assert abs(per_class[0] - per_class[1]) > 0.05
    margin = robust_margin(w, b, x, y, eps, norm)                 # per point: PGD breaks no robust point
    assert not (~robust & (margin >= 0)).any()                    # and misses almost no other one
    assert float((robust & (margin < 0)).double().mean()) < 1e-4


@pytest.mark.parametrize("norm", NORMS)
def test_inner_maximisation_is_what_pgd_finds(norm, gen):
    world = _world(6, 2)
    x, y = world.sample(500, gen)
    w, b, eps = 0.15 * world.mu, -0.2, 0.3                        # moderate margins: dmat's PGD ranks
    model, idx = two_logit(w, b), (y + 1) // 2                    # iterates by a float32 loss
    # PGD (CE): the worst point and the worst loss
    x_adv = pgd(model, x, idx, eps=eps, norm=norm, steps=40, random_start=False, clip=None)
    assert torch.allclose(x_adv - x, worst_perturbation(w, x, y, eps, norm), atol=1e-12)
    ce_pgd = F.cross_entropy(model(x_adv), idx, reduction="none")
    wt, bt = w.clone(), torch.tensor(b, dtype=F64)
    assert torch.allclose(ce_pgd.mean(), linear_at_loss(wt, bt, x, y.double(), method="pgd-at", eps=eps, norm=norm),
                          rtol=1e-12)
    loss, _ = pgd_at(model, x, idx, eps=eps, norm=norm, steps=40, random_start=False, clip=None,
                     label_smoothing=0.1)
    mine = linear_at_loss(wt, bt, x, y.double(), method="pgd-at", eps=eps, norm=norm, label_smoothing=0.1)
    assert float(loss.detach()) == pytest.approx(float(mine), rel=1e-6)     # dmat's loss is float32
    # TRADES: the KL PGD reaches is one of the two ends, never above the closed-form maximum
    torch.manual_seed(0)
    x_tr = trades_inner(model, x, eps=eps, norm=norm, steps=40, step_size=eps / 2, clip=None)
    p = F.log_softmax(model(x), 1)
    kl = lambda z: (p.exp() * (p - F.log_softmax(model(z), 1))).sum(1)   # noqa: E731
    best = kl(x + trades_perturbation(w, b, x, eps, norm))
    ends = torch.stack([kl(x + eps * s * (w.sign() if norm == "linf" else w / w.norm())) for s in (1, -1)])
    found = kl(x_tr)
    assert (found <= best + 1e-12).all() and torch.equal(best, ends.max(0).values)
    assert ((found - ends).abs().min(0).values <= 1e-9 * (1 + found)).float().mean() > 0.99
    loss, _ = trades_loss(model, x, idx, x + trades_perturbation(w, b, x, eps, norm), beta=5.0, label_smoothing=0.1)
    mine = linear_at_loss(wt, bt, x, y.double(), method="trades", eps=eps, norm=norm, beta=5.0, label_smoothing=0.1)
    assert float(loss.detach()) == pytest.approx(float(mine), rel=1e-6)


def test_adversarial_training_buys_robustness(gen):
    """Features weaker than eps (4 strong coordinates of mean 1, 60 weak ones of mean 0.1, Linf
    eps = 0.2): standard training leans on the weak ones and is not robust; PGD-AT and TRADES,
    on the same points, come close to the best linear robust classifier and never beat it."""
    world = GaussianWorld(torch.cat([torch.ones(4), 0.1 * torch.ones(60)]).to(F64), 0.49 * torch.eye(64, dtype=F64))
    x, y = world.sample(1000, gen)
    eps = 0.2
    best = best_linear_robust(world.mu, world.Sigma, eps, "linf").robust_accuracy
    acc = {}
    for method in ("standard", "pgd-at", "trades"):
        fit = train_linear(x, y, method=method, eps=eps, norm="linf", steps=300, lr=0.05, beta=6.0)
        acc[method] = robust_accuracy(fit.w, fit.b, world.mu, world.Sigma, eps, "linf")
        assert acc[method] <= best and fit.losses[-1] < fit.losses[0]
    assert acc["standard"] < best - 0.1
    assert acc["pgd-at"] > best - 0.01 and acc["trades"] > best - 0.01
    again = train_linear(x, y, method="pgd-at", eps=eps, steps=300, lr=0.05)
    assert robust_accuracy(again.w, again.b, world.mu, world.Sigma, eps, "linf") == acc["pgd-at"]   # seeded


def test_two_logit_is_the_logistic_model(gen):
    w, b = torch.randn(5, dtype=F64, generator=gen), 0.3
    x = torch.randn(50, 5, dtype=F64, generator=gen)
    z = two_logit(w, b)(x)
    assert torch.allclose(z[:, 1] - z[:, 0], x @ w + b, atol=1e-14)
    y = torch.randint(0, 2, (50,), generator=gen)
    assert torch.allclose(F.cross_entropy(z, y, reduction="none"), F.softplus(-(2 * y - 1) * (x @ w + b)))


def test_bad_input_is_named():
    world = _world(3, 0)
    x, y = world.sample(10)
    cases = [(lambda: robust_accuracy(world.mu, 0.0, world.mu, world.Sigma, -0.1), "eps must be"),
             (lambda: robust_accuracy(world.mu, 0.0, world.mu, world.Sigma, 0.1, "l1"), "norm must be"),
             (lambda: robust_accuracy(torch.ones(2), 0.0, world.mu, world.Sigma, 0.1), "w and mu"),
             (lambda: best_linear_robust(world.mu, torch.zeros(3, 3), 0.1), "positive definite"),
             (lambda: best_linear_robust(torch.zeros(0), torch.zeros(0, 0), 0.1), "d >= 1"),
             (lambda: train_linear(x, y, method="fgsm-at"), "unknown method 'fgsm-at'"),
             (lambda: train_linear(x, y, eps=-1.0), "eps must be"),
             (lambda: train_linear(x[:0], y[:0]), "n, d >= 1"),
             (lambda: train_linear(x, y + 2), "labels must lie")]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()
