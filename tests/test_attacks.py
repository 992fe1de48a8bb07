"""Attacks: PGD against brute force on 2D toys, exact budgets, restarts, targeted, BN/mode hygiene, losses."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmat_core.robust.attacks import attack_objective, fgsm, pgd
from dmat_core.robust.classifiers import SmallCNN, ToyMLP
from dmat_core.robust.pgd_at import pgd_at_loss
from dmat_core.robust.threat import linf_bounds, project
from dmat_core.robust.trades import trades_inner, trades_kl, trades_loss

EPS_TOY = 0.15


def _margin(logits, y):
    """z_y - max_{j != y} z_j: negative iff misclassified."""
    return logits.gather(1, y[:, None]).squeeze(1) - logits.scatter(1, y[:, None], -math.inf).amax(1)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = ToyMLP(2, 2, width=32, depth=2).double().eval()
    x = torch.rand(160, 2, dtype=torch.float64) * 2 - 1  # raw coordinates in [-1, 1]^2
    with torch.no_grad():
        y = model(x).argmax(1)  # every point starts correctly classified
    # Lipschitz constant of the margin over the region, for the grid-resolution tolerance
    g = torch.linspace(-1.3, 1.3, 301, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2).requires_grad_()
    z = model(grid)
    grad, = torch.autograd.grad((z[:, 1] - z[:, 0]).sum(), grid)
    return model, x, y, grad.norm(dim=1).max().item()


def _ball_offsets(norm, eps, n=61):
    u = torch.linspace(-eps, eps, n, dtype=torch.float64)
    off = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)  # (n^2, 2)
    if norm == "l2":
        theta = torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64)[:-1]
        off = torch.cat([off[off.norm(dim=1) <= eps], eps * torch.stack([theta.cos(), theta.sin()], 1)])
    return off, 2 * eps / (n - 1)


@pytest.mark.parametrize("norm,clip", [("linf", None), ("l2", None), ("linf", (-1.0, 1.0))])
def test_pgd_matches_brute_force_on_2d_toy(toy, norm, clip):
    model, x, y, lipschitz = toy
    off, h = _ball_offsets(norm, EPS_TOY)
    pts = x[:, None, :] + off[None]  # (N, G, 2): every grid point of every ball
    inside = torch.ones(pts.shape[:2], dtype=torch.bool)
    if clip is not None:
        inside = ((pts >= clip[0]) & (pts <= clip[1])).all(-1)
    with torch.no_grad():
        z = model(pts.reshape(-1, 2)).reshape(len(x), -1, 2)
        margins = _margin(z.reshape(-1, 2), y.repeat_interleave(z.shape[1])).reshape(len(x), -1)
    brute = margins.masked_fill(~inside, math.inf).min(1).values  # (N,) worst margin on the grid
    tol = 1.5 * lipschitz * h * math.sqrt(2) / 2  # the true minimum is within tol of the grid's
    adversarial, robust = brute < -tol, brute > tol
    assert adversarial.sum() >= 15 and robust.sum() >= 15 and (~adversarial & ~robust).float().mean() < 0.05

    torch.manual_seed(1)
    x_adv = pgd(model, x, y, eps=EPS_TOY, norm=norm, steps=30, restarts=3, clip=clip)
    with torch.no_grad():
        found = _margin(model(x_adv), y)
    assert (found[adversarial] < 0).all(), "PGD missed adversarial points the grid search finds"
    assert (found[robust] > 0).all(), "PGD 'found' points the grid search proves robust"
    dist = (x_adv - x).abs().amax(1) if norm == "linf" else (x_adv - x).norm(dim=1)
    assert (dist <= EPS_TOY).all()
    if clip is not None:
        assert x_adv.min() >= clip[0] and x_adv.max() <= clip[1]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_exact_on_linear_classifier(norm):
    """Linear binary classifier: an adversarial point exists iff |w.x + b| < eps ||w||_* (dual norm)."""
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.5, -0.5]]))
        model.bias.copy_(torch.tensor([0.0, 0.1]))
    torch.manual_seed(0)
    x = torch.randn(400, 2, dtype=torch.float64)
    y = model(x).argmax(1).detach()
    eps, w = 0.3, torch.tensor([1.5, -0.5], dtype=torch.float64)
    reach = eps * (w.abs().sum() if norm == "linf" else w.norm())
    f = (x @ w + 0.1).abs()
    # from x, PGD walks straight along the optimal direction: exact up to rounding
    fooled = model(pgd(model, x, y, eps=eps, norm=norm, steps=20, random_start=False, clip=None)).argmax(1) != y
    clear = (f - reach).abs() > 1e-9
    assert torch.equal(fooled[clear], (f < reach)[clear])
    # from a random start the L2 iterate keeps a decaying orthogonal component: 2% tolerance
    fooled = model(pgd(model, x, y, eps=eps, norm=norm, steps=20, clip=None)).argmax(1) != y
    clear = (f - reach).abs() > 0.02 * reach
    assert torch.equal(fooled[clear], (f < reach)[clear])


@pytest.mark.parametrize("loss", ["cw", "ce"])
def test_targeted_pgd_matches_brute_force(loss):
    """Nearest-centroid classifier (Voronoi cells, z_k = 2 c_k.x - |c_k|^2): the target cell is
    reachable iff the grid of the Linf ball has a point of class t; the CW target margin is convex
    in x, so PGD must agree with the grid. Targeted CE maximises p_t, whose maximiser need not lie
    in the target cell: it must hit almost every reachable point."""
    c = torch.tensor([[0.0, 0.0], [1.0, 0.2], [-0.3, 0.9], [0.4, -1.0]], dtype=torch.float64)
    model = nn.Linear(2, 4).double()
    with torch.no_grad():
        model.weight.copy_(2 * c)
        model.bias.copy_(-(c ** 2).sum(1))
    torch.manual_seed(0)
    x = torch.rand(200, 2, dtype=torch.float64) * 2 - 1
    y = model(x).argmax(1).detach()
    t = (y + 1) % 4
    eps = 0.3
    off, h = _ball_offsets("linf", eps)
    with torch.no_grad():
        z = model((x[:, None] + off[None]).reshape(-1, 2)).reshape(len(x), -1, 4)  # (N, G, 4)
    idx = t[:, None, None].expand(-1, z.shape[1], 1)
    target_margin = (z.scatter(2, idx, -math.inf).amax(2) - z.gather(2, idx).squeeze(2)).min(1).values
    lipschitz = 2 * (c[:, None] - c[None]).norm(dim=-1).max().item()
    tol = 1.5 * lipschitz * h * math.sqrt(2) / 2
    reachable, unreachable = target_margin < -tol, target_margin > tol
    assert reachable.sum() >= 20 and unreachable.sum() >= 20
    torch.manual_seed(1)
    x_adv = pgd(model, x, y, eps=eps, steps=30, restarts=2, clip=None, loss=loss, targeted=True, y_target=t)
    hit = model(x_adv).argmax(1) == t
    assert not hit[unreachable].any()
    assert hit[reachable].all() if loss == "cw" else hit[reachable].float().mean() >= 0.95
    with pytest.raises(ValueError, match="y_target"):
        pgd(model, x, y, eps=eps, targeted=True, clip=None)


def _images(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    x[:, :, :2] = 0.0  # exact 0 and 1 pixels: the clamp is active
    x[:, :, -2:] = 1.0
    return x, torch.randint(0, 10, (n,), generator=g)


@pytest.fixture()
def cnn():
    torch.manual_seed(0)
    return SmallCNN(num_classes=10, width=8).eval()


ATTACKS = [
    ("fgsm-linf", lambda m, x, y, e: fgsm(m, x, y, eps=e), "linf"),
    ("fgsm-l2", lambda m, x, y, e: fgsm(m, x, y, eps=e, norm="l2"), "l2"),
    ("pgd-linf", lambda m, x, y, e: pgd(m, x, y, eps=e, steps=3), "linf"),
    ("pgd-l2-cw", lambda m, x, y, e: pgd(m, x, y, eps=e, norm="l2", steps=3, loss="cw"), "l2"),
    ("trades-linf", lambda m, x, y, e: trades_inner(m, x, y, eps=e, steps=3), "linf"),
    ("trades-l2", lambda m, x, y, e: trades_inner(m, x, y, eps=e, norm="l2", steps=3, init="uniform"), "l2"),
]


@pytest.mark.parametrize("name,attack,norm", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_budget_and_box_exact(cnn, name, attack, norm):
    x, y = _images()
    eps = 8 / 255 if norm == "linf" else 0.5
    x_adv = attack(cnn, x, y, eps)
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape and not x_adv.requires_grad
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps).all()  # exactly, in the tensor's arithmetic
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (size > 0).any()


def _project_linf_by_ulp_search(x_adv, x, eps, clip):
    """The Linf projection written the slow obvious way: clamp, then step offending coordinates
    one float towards x until the measured budget holds."""
    out = x + (x_adv - x).clamp(-eps, eps)
    if clip is not None:
        out = out.clamp(*clip)
    while True:
        over = (out - x).abs() > eps
        if not over.any():
            return out
        out = torch.where(over, torch.nextafter(out, x), out)


@pytest.mark.parametrize("scale,clip", [(1.0, (0.0, 1.0)), (1.0, None), (300.0, None), (1e-3, (0.0, 1.0))])
@pytest.mark.parametrize("eps", [8 / 255, 1 / 3, 0.1, 1e-7, 0.0])
def test_linf_projection_is_exact_and_equals_the_ulp_search(scale, clip, eps):
    g = torch.Generator().manual_seed(11)
    x = torch.rand(4096, generator=g) * scale
    if clip is None:
        x = x - scale / 2
    step = (torch.rand(4096, generator=g) * 4 - 2) * eps  # inside, on and outside the ball
    step[::7] = eps                                       # exactly on the boundary, both signs
    step[1::7] = -eps
    x_adv = x + step
    lo, hi = linf_bounds(x, eps, clip)
    assert ((lo - x).abs() <= eps).all() and ((hi - x).abs() <= eps).all() and (lo <= hi).all()
    out = project(x_adv, x, eps, "linf", clip)
    assert ((out - x).abs() <= eps).all()
    if clip is not None:
        assert out.min() >= clip[0] and out.max() <= clip[1]
    assert torch.equal(out, _project_linf_by_ulp_search(x_adv, x, eps, clip))
    assert torch.equal(out, project(x_adv, x, eps, "linf", clip, (lo, hi)))


def test_restarts_never_make_it_worse(cnn):
    x, y = _images(16)
    loss = lambda xa: attack_objective(cnn.eval()(xa), y).detach()  # noqa: E731
    torch.manual_seed(3)
    one = pgd(cnn, x, y, eps=1 / 255, steps=3, restarts=1)
    torch.manual_seed(3)  # same stream: the first of the 4 restarts is the single run
    four = pgd(cnn, x, y, eps=1 / 255, steps=3, restarts=4)
    with torch.no_grad():
        fooled_one, fooled_four = cnn(one).argmax(1) != y, cnn(four).argmax(1) != y
    assert (fooled_four | ~fooled_one).all()
    keep = fooled_four == fooled_one
    assert (loss(four)[keep] >= loss(one)[keep] - 1e-6).all()


@pytest.mark.parametrize("bn_mode", ["eval", "frozen"])
def test_mode_restored_bn_untouched_no_param_grads(cnn, bn_mode):
    x, y = _images()
    cnn.train()
    cnn.features[1].eval()  # a mixed state must come back exactly
    frozen = cnn.logits.bias
    frozen.requires_grad_(False)
    modes = {n: m.training for n, m in cnn.named_modules()}
    buffers = {k: v.clone() for k, v in cnn.state_dict().items() if "running" in k or "num_batches" in k}
    for attack in (fgsm, pgd, trades_inner):
        attack(cnn, x, y, eps=4 / 255, bn_mode=bn_mode)
    assert {n: m.training for n, m in cnn.named_modules()} == modes
    assert all(torch.equal(cnn.state_dict()[k], v) for k, v in buffers.items())
    assert all(p.grad is None for p in cnn.parameters())
    assert all(p.requires_grad for p in cnn.parameters() if p is not frozen) and not frozen.requires_grad


def test_attack_under_autocast(cnn):
    x, y = _images(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(cnn, x, y, eps=8 / 255, steps=2)
        x_tr = trades_inner(cnn, x, eps=8 / 255, steps=2)
    for xa in (x_adv, x_tr):
        assert xa.dtype == torch.float32 and (xa - x).abs().max() <= 8 / 255 and xa.min() >= 0


@pytest.mark.parametrize("kwargs,x_fix,y_fix,match", [
    (dict(eps=-0.1), None, None, "eps must be finite"),
    (dict(eps=float("nan")), None, None, "eps must be finite"),
    (dict(eps=float("inf")), None, None, "eps must be finite"),
    (dict(eps=1.5), None, None, "Linf eps"),
    (dict(eps=0.1, norm="l1"), None, None, "norm"),
    (dict(eps=0.1), lambda x: x * 2 - 0.5, None, r"x must lie in \[0.0, 1.0\]"),
    (dict(eps=0.1), lambda x: (x * 255).to(torch.uint8), None, "floating-point"),
    (dict(eps=0.1), None, lambda y: y + 10, r"y must lie in \[0, 10\)"),
    (dict(eps=0.1), None, lambda y: y - 20, "logits"),
    (dict(eps=0.1), None, lambda y: y.float(), "integer"),
    (dict(eps=0.1), None, lambda y: y[:3], "shape"),
])
def test_bad_inputs_are_refused(cnn, kwargs, x_fix, y_fix, match):
    x, y = _images(4)
    x = x_fix(x) if x_fix else x
    y = y_fix(y) if y_fix else y
    cnn.train()
    for attack in (fgsm, pgd, trades_inner):
        with pytest.raises(ValueError, match=match):
            attack(cnn, x, y, **kwargs)
    # label errors are raised inside the attack context: the caller's state still comes back
    assert all(m.training for m in cnn.modules()) and all(p.requires_grad for p in cnn.parameters())


def test_cw_objective_by_hand():
    z = torch.tensor([[2.0, 5.0, 1.0], [0.5, -1.0, 3.0]])
    y, t = torch.tensor([0, 2]), torch.tensor([2, 0])
    assert torch.allclose(attack_objective(z, y, "cw"), torch.tensor([5.0 - 2.0, 0.5 - 3.0]))
    assert torch.allclose(attack_objective(z, y, "cw", t), torch.tensor([1.0 - 5.0, 0.5 - 3.0]))


def test_trades_loss_matches_hand_computation():
    torch.manual_seed(0)
    z_clean, z_adv = torch.randn(6, 4), torch.randn(6, 4)
    y, beta, ls, k = torch.tensor([0, 1, 2, 3, 1, 0]), 5.0, 0.1, 4
    p_c = torch.exp(z_clean) / torch.exp(z_clean).sum(1, keepdim=True)
    p_a = torch.exp(z_adv) / torch.exp(z_adv).sum(1, keepdim=True)
    target = (1 - ls) * F.one_hot(y, k).float() + ls / k
    ce = -(target * torch.log(p_c)).sum(1).mean()
    kl = (p_c * (torch.log(p_c) - torch.log(p_a))).sum(1).mean()
    loss, parts = trades_loss(nn.Identity(), z_clean, y, z_adv, beta=beta, label_smoothing=ls)
    assert torch.allclose(parts["ce_clean"], ce, atol=1e-6) and torch.allclose(parts["kl"], kl, atol=1e-6)
    assert torch.allclose(loss, ce + beta * kl, atol=1e-5)
    assert torch.allclose(trades_kl(z_adv, z_clean), kl, atol=1e-6)
    at_loss, _ = pgd_at_loss(nn.Identity(), z_clean, y, z_adv)
    assert torch.allclose(at_loss, -torch.log(p_a.gather(1, y[:, None])).mean(), atol=1e-6)


def test_trades_inner_increases_kl(cnn):
    x, y = _images(8)
    torch.manual_seed(0)
    x_adv = trades_inner(cnn, x, y, eps=8 / 255, steps=5)
    with torch.no_grad():
        cnn.eval()
        start = x + 1e-3 * torch.randn_like(x)
        assert trades_kl(cnn(x_adv), cnn(x)) > 10 * trades_kl(cnn(start.clamp(0, 1)), cnn(x))


def test_pgd_keep_best_false_returns_the_plain_last_iterate():
    """keep_best=False is Madry et al.'s PGD: the last iterate, computed by hand here."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))
    eps, alpha = 0.1, 0.03
    adv = pgd(model, x, y, eps=eps, steps=4, step_size=alpha, random_start=False, keep_best=False)
    xa = x.clone()
    for _ in range(4):
        xa.requires_grad_(True)
        g, = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xa), y, reduction="sum"), xa)
        xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    assert torch.allclose(adv, xa, atol=1e-6)
    best = pgd(model, x, y, eps=eps, steps=4, step_size=alpha, random_start=False, restarts=2)
    assert (best - x).abs().max() <= eps + 1e-6
