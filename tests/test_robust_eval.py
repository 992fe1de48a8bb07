"""Robust evaluation: exact answers on a linear classifier, AutoAttack wrapper, gradient-masking checks."""
import pytest
import torch
from torch import nn

from dmat_core.robust.autoattack import (GradientMaskingWarning, autoattack_eval, check_model_contract,
                                         clean_accuracy, pgd_accuracy)

EPS = 0.01


class Softmaxed(nn.Module):
    """Breaks the contract: returns probabilities (gradients of CE on them saturate)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


class Noisy(nn.Module):
    """Breaks the contract: random outputs even in eval mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x + 0.05 * torch.randn_like(x))


class Quantized(nn.Module):
    """Masks gradients: rounding the input has zero derivative almost everywhere."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 8) / 8)


def exact_robust_accuracy(model, x, y, eps, norm):
    """Closed form for a linear classifier when the box [0, 1] never binds: x is robust iff
    z_y - z_j > eps ||w_y - w_j||_* for every j != y (dual norm: L1 for Linf, L2 for L2)."""
    with torch.no_grad():
        z, w = model(x), model[1].weight
        diff = w[y][:, None, :] - w[None]  # (N, K, D)
        dual = diff.abs().sum(-1) if norm == "linf" else diff.norm(dim=-1)
        slack = (z.gather(1, y[:, None]) - z) - eps * dual  # (N, K)
        slack.scatter_(1, y[:, None], float("inf"))
    slack = slack.min(1).values
    assert (slack.abs() > 1e-3).all()  # no point on the fence
    return (slack > 0).float().mean().item()


@pytest.fixture(scope="module")
def linear():
    """A linear classifier on 3x8x8 images, points in [0.2, 0.8] so the box never binds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    x = 0.2 + 0.6 * torch.rand(64, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, exact_robust_accuracy(model, x, y, EPS, "linf")


def test_clean_and_pgd_accuracy_exact(linear):
    model, x, y, exact = linear
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (y + 1) % 10), batch_size=10)
    assert clean_accuracy(model, (x, y), batch_size=7) == 1.0
    assert clean_accuracy(model, loader) == 0.0
    assert pgd_accuracy(model, (x, y), 0.0, "linf") == 1.0
    # the CW margin is maximised at a vertex of the ball: PGD finds the exact robust accuracy
    assert pgd_accuracy(model, (x, y), EPS, "linf", steps=20, restarts=2, loss="cw") == exact
    assert exact <= pgd_accuracy(model, (x, y), EPS, "linf", steps=10) <= 1.0


def test_autoattack_custom_fast(linear):
    model, x, y, exact = linear
    model.train()
    rng = torch.get_rng_state()
    res = autoattack_eval(model, x, y, eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t"], n_iter=10,
                          batch_size=32, return_adv=True)
    assert model.training and torch.equal(torch.get_rng_state(), rng)  # caller's mode and RNG untouched
    assert res["robust_accuracy"] == exact  # APGD-CE then APGD-T reach the closed-form answer
    assert res["clean_accuracy"] == 1.0 and res["n"] == 64 and res["norm"] == "Linf" and res["eps"] == EPS
    assert list(res["breakdown"]) == ["apgd-ce", "apgd-t"] == res["attacks"]
    assert res["breakdown"]["apgd-ce"] >= res["breakdown"]["apgd-t"] == res["robust_accuracy"]
    x_adv = res["x_adv"]
    assert (x_adv - x).abs().max() <= EPS + 1e-7 and res["seconds"] > 0 and res["warnings"] == []
    with torch.no_grad():
        still_right = model.eval()(x_adv).argmax(1) == y
    assert still_right.float().mean().item() == res["robust_accuracy"]
    small = autoattack_eval(model, x, y, eps=EPS, version="custom", attacks=["apgd-ce"], n_iter=5, n=8)
    assert small["n"] == 8 and list(small["breakdown"]) == ["apgd-ce"]


def test_l2_pgd_and_autoattack_exact(linear):
    model, x, y, _ = linear
    eps = 0.1
    exact = exact_robust_accuracy(model, x, y, eps, "l2")
    assert 0.1 < exact < 0.9
    assert pgd_accuracy(model, (x, y), eps, "l2", steps=20, restarts=2, loss="cw") == exact
    res = autoattack_eval(model, x, y, eps=eps, norm="L2", version="custom", attacks=["apgd-ce", "apgd-t"], n_iter=10)
    assert res["robust_accuracy"] == exact and res["norm"] == "L2"


def test_autoattack_bad_arguments(linear):
    model, x, y, _ = linear
    with pytest.raises(ValueError, match="attacks="):
        autoattack_eval(model, x, y, eps=EPS, version="custom")
    with pytest.raises(ValueError, match="only used with version='custom'"):
        autoattack_eval(model, x, y, eps=EPS, attacks=["apgd-ce"])
    with pytest.raises(ValueError, match="norm"):
        autoattack_eval(model, x, y, eps=EPS, norm="L1")
    with pytest.raises(ValueError, match="eps"):
        autoattack_eval(model, x, y, eps=-1.0)
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        autoattack_eval(model, x + 1, y, eps=EPS)


@pytest.mark.parametrize("wrapper,fragment", [(Softmaxed, "probabilit"), (Noisy, "stochastic|random")])
def test_gradient_masking_is_reported(linear, wrapper, fragment):
    model, x, y, _ = linear
    broken = wrapper(model).eval()
    with pytest.warns(GradientMaskingWarning, match=fragment):
        problems = check_model_contract(broken, x[:8])
    assert len(problems) == 1
    with pytest.warns(GradientMaskingWarning, match=f"(?s)AutoAttack check:.*({fragment}).*gradient"):
        res = autoattack_eval(broken, x[:16], y[:16], eps=EPS, version="custom", attacks=["apgd-ce"], n_iter=3)
    assert any("masking" in w or "mask" in w for w in res["warnings"])


def test_square_beats_masked_gradients(linear):
    """Quantised inputs: zero gradients stop APGD, gradient-free Square still succeeds -> two warnings."""
    model, x, _, _ = linear
    masked = Quantized(model).eval()
    with torch.no_grad():
        y = masked(x[:32]).argmax(1)
    with pytest.warns(GradientMaskingWarning) as record:
        res = autoattack_eval(masked, x[:32], y, eps=0.05, version="custom", attacks=["apgd-ce", "apgd-t", "square"],
                              n_iter=5, n_queries=200)
    text = " ".join(str(w.message) for w in record)
    assert "zero gradient" in text and "Square Attack has decreased" in text and "gradient masking" in text
    assert res["breakdown"]["square"] < res["breakdown"]["apgd-t"] - 0.05
    assert len(res["warnings"]) == 2  # one per kind of check, repeats counted


def test_contract_holds_for_a_logit_model(linear, recwarn):
    model, x, _, _ = linear
    assert check_model_contract(model, x[:8]) == []
    assert check_model_contract(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))) == []
    assert not [w for w in recwarn if issubclass(w.category, GradientMaskingWarning)]


@pytest.mark.slow
def test_autoattack_standard_matches_closed_form(linear):
    model, x, y, _ = linear
    res = autoattack_eval(model, x, y, eps=EPS, version="standard", n=16, seed=0)
    assert list(res["breakdown"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert res["robust_accuracy"] == exact_robust_accuracy(model, x[:16], y[:16], EPS, "linf")
