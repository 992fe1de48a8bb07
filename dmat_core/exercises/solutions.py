"""Solutions of the exercises, written the way a student would (a few lines each, plain torch).
Kept out of the notebooks: `show_solution("heun_step")` prints one. Each passes its check
(tests/test_exercises.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------- notebook 01
def score_from_denoiser(x, denoised, sigma):
    """Tweedie: grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2."""
    return (denoised - x) / sigma ** 2


def euler_step(D, x, sigma, sigma_next):
    """x + (sigma_next - sigma) dx/dsigma, with dx/dsigma = (x - D(x, sigma)) / sigma."""
    d = (x - D(x, sigma)) / sigma
    return x + (sigma_next - sigma) * d


def heun_step(D, x, sigma, sigma_next):
    """Euler, then (unless sigma_next = 0) the average of the slopes at both ends."""
    d = (x - D(x, sigma)) / sigma
    x_next = x + (sigma_next - sigma) * d
    if sigma_next > 0:
        d_next = (x_next - D(x_next, sigma_next)) / sigma_next
        x_next = x + (sigma_next - sigma) * (d + d_next) / 2
    return x_next


# ----------------------------------------------------------------------- notebook 02
def denoising_loss(D, x0, sigma, noise, sigma_data):
    """mean over the batch of lambda(sigma) * mean_j (D(x0 + sigma n, sigma) - x0)_j^2."""
    s = sigma[:, None]
    err = ((D(x0 + s * noise, sigma) - x0) ** 2).mean(1)
    lam = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    return (lam * err).mean()


def training_sigmas(n, P_mean, P_std, generator):
    """sigma = exp(P_mean + P_std z), z standard normal."""
    return (P_mean + P_std * torch.randn(n, generator=generator)).exp()


# ----------------------------------------------------------------------- notebook 03
def equivariance_residual(D, x, sigma, w):
    """eps(x + sigma w) - (eps(x) + w), with eps(x) = (x - D(x, sigma)) / sigma."""
    s = sigma[:, None]
    eps = (x - D(x, sigma)) / s
    x_pert = x + s * w
    eps_pert = (x_pert - D(x_pert, sigma)) / s
    return eps_pert - (eps + w)


def box_perturbation(r, shape, generator):
    """Uniform in [-r_i, r_i]^d for point i."""
    u = torch.rand(shape, generator=generator, dtype=r.dtype)
    return (2 * u - 1) * r[:, None]


# ----------------------------------------------------------------------- notebook 04
def empirical_denoiser(x, sigma, train):
    """sum_i softmax_i(-||x - x_i||^2 / (2 sigma^2)) x_i."""
    weights = torch.softmax(-torch.cdist(x, train) ** 2 / (2 * sigma ** 2), dim=1)
    return weights @ train


def memorized_share(samples, train, radius):
    """Share of samples whose nearest training point is closer than `radius`."""
    nearest = torch.cdist(samples, train).min(dim=1).values
    return (nearest < radius).double().mean().item()


# ----------------------------------------------------------------------- notebook 05
def pgd_step_linf(model, x_adv, x, y, eps, alpha):
    """Ascend the cross-entropy by alpha * sign(grad), then project into the box and [0, 1]."""
    x_adv = x_adv.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y)
    (grad,) = torch.autograd.grad(loss, x_adv)
    x_new = x_adv.detach() + alpha * grad.sign()
    x_new = torch.minimum(torch.maximum(x_new, x - eps), x + eps)
    return x_new.clamp(0, 1)


def linear_robust_accuracy(w, b, mu, Sigma, eps, norm):
    """Mean over y of Phi((w.mu + y b - eps ||w||_*) / sqrt(w' Sigma w)), ||.||_* the dual norm."""
    dual = w.abs().sum() if norm == "linf" else w.norm()
    s = (w @ Sigma @ w).sqrt()
    phi = torch.distributions.Normal(0.0, 1.0).cdf
    return sum(phi((w @ mu + y * b - eps * dual) / s) for y in (-1, 1)).item() / 2


# ----------------------------------------------------------------------- notebook 06
def heun_sampler(D, latents, sigmas):
    """x = latents * sigma_max, then a Heun step between consecutive sigmas (Euler on the last)."""
    x = latents * sigmas[0]
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        d = (x - D(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            x_next = x + (s_next - s) * (d + (x_next - D(x_next, s_next)) / s_next) / 2
        x = x_next
    return x


def top_fraction_per_class(scores, labels, fraction):
    """The k = floor(fraction * smallest class count) best-scored indices of every class."""
    counts = torch.bincount(labels)
    k = int(fraction * counts[counts > 0].min() + 1e-9)
    keep = [torch.nonzero(labels == c).flatten()[torch.argsort(-scores[labels == c], stable=True)[:k]]
            for c in torch.unique(labels)]
    return torch.cat(keep)


# ----------------------------------------------------------------------- notebook 07
def trades_kl(logits_adv, logits_clean):
    """Batch mean of sum_k p_k(x) (log p_k(x) - log p_k(x'))."""
    log_p, log_q = logits_clean.log_softmax(1), logits_adv.log_softmax(1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def ema_update(ema, param, decay):
    """decay * ema + (1 - decay) * param."""
    return decay * ema + (1 - decay) * param


# ----------------------------------------------------------------------- notebook 08
def fgsm_box_step(D, x, sigma, eps_clean, r, w0):
    """One step of size r along the sign of the gradient of the gap, from w0; back into the box."""
    s, rb = sigma[:, None], r[:, None]
    w = w0.clone().requires_grad_(True)
    x_pert = x + s * w
    gap = (((x_pert - D(x_pert, sigma)) / s - eps_clean) ** 2).sum()
    (grad,) = torch.autograd.grad(gap, w)
    return torch.minimum(torch.maximum(w0 + rb * grad.sign(), -rb), rb)


def at_dm_loss_term(D, x, sigma, eps_clean, w, sigma_data):
    """mean over the batch of (sigma^2 + sd^2)/sd^2 * mean_j (eps(x + sigma w) - eps(x) - w)_j^2."""
    s = sigma[:, None]
    x_pert = x + s * w
    eps_pert = (x_pert - D(x_pert, sigma)) / s
    weight = (sigma ** 2 + sigma_data ** 2) / sigma_data ** 2
    return (weight * ((eps_pert - eps_clean - w) ** 2).mean(1)).mean()
