"""The notebooks' exercises (dmat_core/exercises/): every solution passes its check, every untouched
scaffold in the notebooks fails it with "not written yet", typical mistakes get their hints, and
a student's exception is reported, never raised."""
import json
import re
from pathlib import Path

import pytest
import torch

from dmat_core.exercises import check, exercises, run_check, show_solution, solution
from dmat_core.exercises.core import NOT_WRITTEN

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NAMES = [e.name for e in exercises()]


def scaffolds() -> dict:
    """{exercise name: (notebook number, source of its scaffold cell)} from the cells tagged `exercise`."""
    out = {}
    for nb in NOTEBOOKS:
        for c in json.loads(nb.read_text())["cells"]:
            if "exercise" in c.get("metadata", {}).get("tags", []):
                src = "".join(c["source"])
                name = re.match(r"def (\w+)\(", src).group(1)
                assert name not in out, f"exercise {name} appears twice"
                out[name] = (nb.name[:2], src)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_each_solution_passes_its_check(name):
    ok, message = run_check(name, solution(name))
    assert ok, message


def test_every_notebook_has_two_or_three_exercises_and_every_exercise_is_in_its_notebook():
    found = scaffolds()
    assert set(found) == set(NAMES)
    for e in exercises():
        assert found[e.name][0] == e.notebook, f"{e.name} is registered for {e.notebook}, found in {found[e.name][0]}"
    for nb in NOTEBOOKS:
        assert 2 <= len(exercises(nb.name[:2])) <= 3, nb.name


@pytest.mark.parametrize("name", NAMES)
def test_each_untouched_scaffold_fails_its_check(name, capsys):
    """The scaffold cell exactly as committed, run as a notebook would run it."""
    _, src = scaffolds()[name]
    namespace = {"check": check, "show_solution": show_solution}
    exec(compile(src, f"<scaffold {name}>", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.startswith("✗") and NOT_WRITTEN in out, out
    assert run_check(name, namespace[name])[0] is False


def _wrong_sign_score(x, denoised, sigma):
    return (x - denoised) / sigma ** 2


def _euler_as_heun(D, x, sigma, sigma_next):
    return x + (sigma_next - sigma) * (x - D(x, sigma)) / sigma


def _heun_corrects_last_step(D, x, sigma, sigma_next):
    d = (x - D(x, sigma)) / sigma
    xn = x + (sigma_next - sigma) * d
    return x + (sigma_next - sigma) * (d + (xn - D(xn, sigma_next)) / sigma_next) / 2


def _pgd_without_projection(model, x_adv, x, y, eps, alpha):
    x_adv = x_adv.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x_adv), y), x_adv)
    return (x_adv + alpha * g.sign()).detach().clamp(0, 1)


def _reversed_kl(logits_adv, logits_clean):
    lp, la = logits_clean.log_softmax(1), logits_adv.log_softmax(1)
    return (la.exp() * (la - lp)).sum(1).mean()


def _naive_empirical(x, sigma, train):
    w = torch.exp(-torch.cdist(x, train) ** 2 / (2 * sigma ** 2))
    return w @ train / w.sum(1, keepdim=True)


def _same_norm_robust(w, b, mu, Sigma, eps, norm):
    dual = w.abs().max() if norm == "linf" else w.abs().sum()
    s = (w @ Sigma @ w).sqrt()
    phi = torch.distributions.Normal(0.0, 1.0).cdf
    return sum(phi((w @ mu + y * b - eps * dual) / s) for y in (-1, 1)).item() / 2


def _invariance_term(D, x, sigma, eps_clean, w, sigma_data):
    s = sigma[:, None]
    xp = x + s * w
    weight = (sigma ** 2 + sigma_data ** 2) / sigma_data ** 2
    return (weight * ((((xp - D(xp, sigma)) / s) - eps_clean) ** 2).mean(1)).mean()


@pytest.mark.parametrize("name, wrong, hint", [
    ("score_from_denoiser", _wrong_sign_score, "points from x towards the data"),
    ("heun_step", _euler_as_heun, "this is the Euler step"),
    ("heun_step", _heun_corrects_last_step, "take the Euler step alone"),
    ("pgd_step_linf", _pgd_without_projection, "project back into the threat box"),
    ("trades_kl", _reversed_kl, "from the clean prediction to the adversarial one"),
    ("empirical_denoiser", _naive_empirical, "use torch.softmax"),
    ("linear_robust_accuracy", _same_norm_robust, "*dual* norm"),
    ("at_dm_loss_term", _invariance_term, "invariance loss"),
    ("training_sigmas", lambda n, pm, ps, g: pm + ps * torch.randn(n, generator=g), "these are ln sigma"),
    ("box_perturbation", lambda r, shape, g: r[:, None] * torch.randn(shape, generator=g, dtype=r.dtype),
     "leave the box"),
])
def test_typical_mistakes_get_their_hint(name, wrong, hint):
    ok, message = run_check(name, wrong)
    assert not ok and hint in message, message


def test_a_students_exception_is_reported_not_raised(capsys):
    def broken(x, denoised, sigma):
        return x @ denoised                       # (B, d) @ (B, d): a shape error
    assert check("score_from_denoiser", broken) is False
    out = capsys.readouterr().out
    assert "raised RuntimeError" in out and "x @ denoised" in out
    assert run_check("score_from_denoiser", 3)[1].endswith("expected a function, got int")
    with pytest.raises(ValueError, match="unknown exercise 'nope'"):
        check("nope", _wrong_sign_score)


def test_show_solution_prints_the_solution(capsys):
    show_solution("heun_step")
    out = capsys.readouterr().out
    assert out.startswith("def heun_step(D, x, sigma, sigma_next):") and "NotImplementedError" not in out
