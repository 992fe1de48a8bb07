"""The exercises on attacks, adversarial training, generated data and AT for DMs on images
(registered for the last four notebooks): each `verify` compares the student's function with the closed form or with dmat's own
implementation on fixed inputs (:mod:`dmat_core.exercises.core` says how)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..diffusion.edm import edm_sigmas, eps_from_x0
from ..diffusion.losses import equivariance_loss, fgsm_perturbation, random_perturbation
from ..diffusion.samplers import edm_heun
from ..images.quality import top_fraction_per_class
from ..robust.attacks import attack_objective, pgd_steps
from ..robust.linear import robust_accuracy
from ..robust.threat import attack_mode
from ..robust.trades import trades_kl
from ..toys.mixtures import ring8
from ..toys.train import make_toy_model
from .core import compare, compare_scalar, register

F64 = torch.float64


def _images(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 4, 4, generator=g), torch.randint(0, 5, (n,), generator=g)


def _classifier(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Tanh(), nn.Linear(16, 5)).eval()


# ----------------------------------------------------------------------- notebook 05
@register("pgd_step_linf", "05", "one step of Linf PGD: ascend the loss by the sign of its gradient, project")
def _pgd_step(fn):
    model = _classifier()
    x, y = _images(seed=1)
    eps, alpha = 8 / 255, 2 / 255
    x_adv = (x + eps * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) - 1)).clamp(0, 1)
    with attack_mode(model):
        want = pgd_steps(model, x, x_adv, lambda z: attack_objective(z, y), eps=eps, norm="linf", steps=1,
                         alpha=alpha)
    xa = x_adv.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(xa), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xa)
    step = x_adv + alpha * grad.sign()
    got = fn(model, x_adv.clone(), x.clone(), y.clone(), eps, alpha)
    return compare(got, want.detach(), "the new iterate", atol=1e-6, mistakes={
        "project back into the threat box [x - eps, x + eps] after the step": step.clamp(0, 1),
        "clip to the valid image range [0, 1] too": torch.minimum(torch.maximum(step, x - eps), x + eps),
        "the attacker *ascends* the loss: add alpha * sign(grad)":
            torch.minimum(torch.maximum(x_adv - alpha * grad.sign(), x - eps), x + eps).clamp(0, 1),
        "Linf PGD steps by the *sign* of the gradient, alpha * sign(grad)":
            torch.minimum(torch.maximum(x_adv + alpha * grad, x - eps), x + eps).clamp(0, 1)})


@register("linear_robust_accuracy", "05", "the exact robust accuracy of a linear classifier in the Gaussian world")
def _linear(fn):
    g = torch.Generator().manual_seed(3)
    mu = torch.tensor([1.0, -0.5, 0.8], dtype=F64)
    A = torch.randn(3, 3, dtype=F64, generator=g)
    Sigma = A @ A.T / 3 + 0.5 * torch.eye(3, dtype=F64)
    w, b = torch.tensor([0.9, -0.4, 0.3], dtype=F64), 0.2
    from scipy.stats import norm as normal
    s = float(w @ Sigma @ w) ** 0.5
    for norm, eps, dual, wrong in (("linf", 0.2, float(w.abs().sum()), float(w.abs().max())),
                                   ("l2", 0.5, float(w.norm()), float(w.abs().sum()))):
        want = robust_accuracy(w, b, mu, Sigma, eps, norm)
        margin = lambda a, bb=b: float(np.mean([normal.cdf((float(w @ mu) + y * bb - eps * a) / s)  # noqa: E731
                                                for y in (-1, 1)]))
        problem = compare_scalar(fn(w.clone(), b, mu.clone(), Sigma.clone(), eps, norm), want,
                                 f"the robust accuracy ({norm}, eps = {eps})", mistakes={
            "the attacker's best move lowers the margin by eps times the *dual* norm of w (L1 for Linf, L2 for L2)":
                margin(wrong),
            "the bias shifts the two classes' margins in opposite directions: y b": margin(dual, 0.0),
            "this is the clean accuracy: the attack lowers the margin by eps ||w||_*": margin(0.0)})
        if problem:
            return problem
    return None


# ----------------------------------------------------------------------- notebook 06
@register("heun_sampler", "06", "EDM's deterministic Heun sampler, from latents to samples")
def _sampler(fn):
    dist = ring8()
    sigmas = edm_sigmas(8).double()
    latents = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    want = list(edm_heun(dist.denoiser, latents, sigmas))[-1]
    got = fn(dist.denoiser, latents.clone(), sigmas.clone())
    if isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
        return "NaN or infinity: on the last step (to sigma = 0) take the Euler step alone"
    return compare(got, want, "the samples", mistakes={
        "start at x = latents * sigmas[0]: the latents are standard normal, the ODE starts at sigma_max":
            list(edm_heun(dist.denoiser, latents / float(sigmas[0]), sigmas))[-1]})


@register("top_fraction_per_class", "06", "keep the best-scored fraction of each class, the same number per class")
def _top(fn):
    rng = np.random.default_rng(5)
    labels = torch.from_numpy(np.repeat(np.arange(4), [30, 25, 40, 33]))
    scores = torch.from_numpy(rng.random(len(labels)))
    want, _ = top_fraction_per_class(scores.numpy(), labels.numpy(), 0.2)
    got = fn(scores.clone(), labels.clone(), 0.2)
    if not isinstance(got, torch.Tensor) or got.dtype not in (torch.int64, torch.int32):
        return f"return the kept indices as an integer tensor, got {getattr(got, 'dtype', type(got).__name__)}"
    got = torch.sort(got.long()).values
    want = torch.from_numpy(want)
    if len(got) != len(want):
        per = [int((labels[got] == c).sum()) for c in range(4)] if len(got) and got.max() < len(labels) else []
        return (f"kept {len(got)} points {per}, expected {len(want)}: every class keeps k = floor(fraction x the "
                f"smallest class's count) = {len(want) // 4}, so that the kept set stays balanced")
    return compare(got, want, "the kept indices", atol=0)


# ----------------------------------------------------------------------- notebook 07
@register("trades_kl", "07", "the TRADES regulariser KL(p(x) || p(x')), averaged over the batch")
def _trades(fn):
    g = torch.Generator().manual_seed(6)
    clean, adv = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    want = trades_kl(adv, clean)
    lp, la = clean.log_softmax(1), adv.log_softmax(1)
    return compare_scalar(fn(adv.clone(), clean.clone()), float(want), "the KL", rtol=1e-4, mistakes={
        "the KL runs from the clean prediction to the adversarial one: sum_k p_k(x) (log p_k(x) - log p_k(x'))":
            float((la.exp() * (la - lp)).sum(1).mean()),
        "average over the batch only (sum over the classes): reduction='batchmean'":
            float((lp.exp() * (lp - la)).mean()),
        "average over the batch: divide the sum by the batch size": float((lp.exp() * (lp - la)).sum())})


@register("ema_update", "07", "one step of the exponential moving average of the weights")
def _ema(fn):
    g = torch.Generator().manual_seed(7)
    ema, p = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    got = fn(ema.clone(), p.clone(), 0.99)
    return compare(got, torch.lerp(ema, p, 1 - 0.99), "the averaged weights", mistakes={
        "the average keeps most of its old value: decay * ema + (1 - decay) * param": 0.99 * p + 0.01 * ema})


# ----------------------------------------------------------------------- notebook 08
def _dm(seed: int = 0):
    return make_toy_model(6, 0.5, seed=seed, width=32, depth=1).double().eval()


def _dm_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 6, dtype=F64, generator=g)
    sigma = torch.tensor([0.05, 0.4, 2.0], dtype=F64).repeat(4)
    return x, sigma, g


@register("fgsm_box_step", "08", "the adversarial perturbation of AT for DMs: one FGSM step from a random start")
def _fgsm(fn):
    D = _dm()
    x, sigma, _ = _dm_batch(8)
    r = torch.full((12,), 0.3, dtype=F64)
    with torch.no_grad():
        eps_clean = eps_from_x0(x, D(x, sigma), sigma)
    want = fgsm_perturbation(D, x, sigma, eps_clean, r, generator=torch.Generator().manual_seed(9))
    w0 = random_perturbation(r, x.shape, generator=torch.Generator().manual_seed(9))
    wg = w0.clone().requires_grad_(True)
    xp = x + sigma[:, None] * wg
    gap = ((eps_from_x0(xp, D(xp, sigma), sigma) - eps_clean) ** 2).sum()
    (grad,) = torch.autograd.grad(gap, wg)
    got = fn(D, x.clone(), sigma.clone(), eps_clean.clone(), r.clone(), w0.clone())
    return compare(got, want, "the perturbation", mistakes={
        "project back into the box [-r, r] after the step": w0 + 0.3 * grad.sign(),
        "the step is r * sign(grad): FGSM uses the sign of the gradient":
            (w0 + 0.3 * grad).clamp(-0.3, 0.3),
        "the adversary *increases* the gap: add the step": (w0 - 0.3 * grad.sign()).clamp(-0.3, 0.3)})


@register("at_dm_loss_term", "08", "the AT term of AT for DMs: the weighted equivariance loss")
def _at_term(fn):
    D, sd = _dm(1), 0.5
    x, sigma, g = _dm_batch(10)
    w = 0.2 * torch.randn(x.shape, dtype=F64, generator=g)
    with torch.no_grad():
        eps_clean = eps_from_x0(x, D(x, sigma), sigma)
        want = equivariance_loss(D, x, sigma, eps_clean, w, sd)
        xp = x + sigma[:, None] * w
        eps_p = eps_from_x0(xp, D(xp, sigma), sigma)
        weight = (sigma ** 2 + sd ** 2) / sd ** 2
        got = fn(D, x.clone(), sigma.clone(), eps_clean.clone(), w.clone(), sd)
    return compare_scalar(got, float(want), "the loss", mistakes={
        "weight each point by (sigma^2 + sigma_data^2) / sigma_data^2 (the EDM weight in noise units)":
            float(((eps_p - eps_clean - w) ** 2).mean()),
        "that is the invariance loss: the target is eps(x) + w": float((weight * ((eps_p - eps_clean) ** 2)
                                                                        .mean(1)).mean())})
