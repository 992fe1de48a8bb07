"""Exact robust accuracy on 2D toys, against truths that cannot be faked: a linear
classifier's distance to its boundary, PGD witnesses and interval bounds below sampled margins."""
import pytest
import torch
from torch import nn

from dmat_core.robust import exact2d as tr
from dmat_core.robust.classifiers import ToyMLP


def _linear(w, b):
    """Logits (0, w.x + b): class 1 on the side w.x + b > 0."""
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0], list(w)]))
        lin.bias.copy_(torch.tensor([0.0, b]))
    return lin


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_classifier_is_robust_exactly_beyond_eps_from_its_boundary(norm, gen):
    w, b, eps = torch.tensor([0.8, -0.6], dtype=torch.float64), 0.1, 0.25
    model = _linear(w.tolist(), b)
    x = 2 * torch.rand(600, 2, generator=gen, dtype=torch.float64) - 1
    y = torch.randint(0, 2, (600,), generator=gen)
    signed = (2 * y - 1) * (x @ w + b)               # > 0: correctly classified
    dual = w.norm() if norm == "l2" else w.abs().sum()  # distance in `norm` to the line
    truth = signed / dual > eps
    res = tr.exact_robust_accuracy(model, x, y, eps, norm, resolution=17)
    assert torch.equal(res.robust, truth)
    assert res.acc == pytest.approx(float(truth.double().mean()))
    assert res.lower == res.acc and res.undecided == 0
    assert abs(res.dense_acc - res.acc) <= 2 / 600   # the grid alone: at most a point or two
    assert float(res) == res.acc
    bad = ~res.robust                                 # every witness lies in the ball, misclassified
    gap = (res.x_adv[bad] - x[bad])
    size = gap.norm(dim=1) if norm == "l2" else gap.abs().amax(1)
    assert (size <= eps + 1e-12).all()
    assert ((2 * y[bad] - 1) * (res.x_adv[bad] @ w + b) <= 0).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_finds_nothing_the_exact_search_misses(norm):
    torch.manual_seed(5)
    model = ToyMLP(2, 2, width=32, depth=2)            # a random ReLU net: a curved boundary
    x = 4 * torch.rand(300, 2, generator=torch.Generator().manual_seed(1)) - 2
    y = model(x).argmax(1)                             # every point clean-correct
    res = tr.exact_robust_accuracy(model, x, y, 0.5, norm, resolution=17)
    assert res.undecided == 0 and res.lower == res.acc        # certified: exact
    agree = tr.pgd_agreement(model, x, y, res, 0.5, norm, steps=40, restarts=3)
    assert agree["pgd_only"] == 0 and agree["pgd_acc"] >= res.acc
    assert agree["exact_only"] <= 0.1 * len(x)                # PGD misses a few pockets
    assert 0.05 < res.acc < 0.95                              # a case with both outcomes


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_finds_what_dense_search_finds_on_a_linear_classifier(norm, gen):
    model = _linear([0.6, 0.8], -0.2)
    x = 2 * torch.rand(400, 2, generator=gen) - 1
    y = torch.randint(0, 2, (400,), generator=gen)
    res = tr.exact_robust_accuracy(model, x, y, 0.2, norm, resolution=9)
    agree = tr.pgd_agreement(model, x, y, res, 0.2, norm, steps=10, restarts=1)
    assert agree["pgd_only"] == 0 and agree["exact_only"] == 0
    assert agree["pgd_acc"] == pytest.approx(res.acc)


def test_ball_grid_covers_the_ball_and_its_boundary():
    g = tr.ball_grid(0.3, "linf", 5)
    assert g.shape == (25, 2) and g.abs().max() == pytest.approx(0.3)
    assert {tuple(v) for v in g[(g.abs() == 0.3).all(1)].tolist()} == {(a, b) for a in (-0.3, 0.3)
                                                                    for b in (-0.3, 0.3)}
    g = tr.ball_grid(0.3, "l2", 9)
    r = g.norm(dim=1)
    assert (r <= 0.3 + 1e-12).all() and (r > 0.3 - 1e-12).sum() >= 8


def test_ibp_bounds_the_margin_from_below(gen):
    torch.manual_seed(0)
    model = ToyMLP(2, 3, width=16, depth=2).double()
    layers = tr._ibp_layers(model)
    lo = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    hi = lo + 0.1
    y = torch.randint(0, 3, (50,), generator=gen)
    lb = tr.ibp_margin_lower(layers, lo, hi, y)
    u = torch.rand(50, 200, 2, generator=gen, dtype=torch.float64)
    pts = (lo[:, None] + 0.1 * u).reshape(-1, 2)
    m = tr.margin(model(pts), y.repeat_interleave(200)).reshape(50, 200)
    assert (lb <= m.min(1).values + 1e-12).all()


def test_bad_input_is_a_clear_error():
    model, x, y = _linear([1.0, 0.0], 0.0), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="eps"):
        tr.exact_robust_accuracy(model, x, y, -0.1)
    with pytest.raises(ValueError, match="norm"):
        tr.exact_robust_accuracy(model, x, y, 0.1, "l1")
    with pytest.raises(ValueError, match="resolution"):
        tr.exact_robust_accuracy(model, x, y, 0.1, resolution=1)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        tr.exact_robust_accuracy(model, torch.zeros(4, 3), y, 0.1)
