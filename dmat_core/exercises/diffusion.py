"""The exercises on diffusion with known densities (registered for the first four notebooks): each `verify` runs the
student's function on fixed inputs and compares it with the exact answer of a known density or
with dmat's own implementation (:mod:`dmat_core.exercises.core` says how)."""
from __future__ import annotations

import math

import torch

from ..diffusion.edm import edm_training_sigmas, eps_from_x0
from ..diffusion.losses import denoising_loss
from ..diffusion.samplers import edm_euler, edm_heun
from ..toys.mixtures import GaussianMixture, ring8
from ..toys.smoothness import memorization_rate
from ..toys.train import make_toy_model
from .core import compare, compare_scalar, register

F64 = torch.float64


def _points(n: int = 64, d: int = 2, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _net(seed: int = 0):
    """A small untrained toy denoiser in float64 (fixed weights): answers that are not special."""
    return make_toy_model(2, 0.5, seed=seed, width=32, depth=1).double().eval()


# ----------------------------------------------------------------------- notebook 01
@register("score_from_denoiser", "01", "the score of the noised density from the denoiser (Tweedie's formula)")
def _score(fn):
    dist = ring8()
    for sigma in (0.1, 0.7, 3.0):
        x = _points(seed=1)
        Dx = dist.denoiser(x, sigma)
        want = dist.score(x, sigma)
        problem = compare(fn(x.clone(), Dx.clone(), sigma), want, f"the score at sigma = {sigma}", mistakes={
            "the score points from x towards the data, (D(x) - x) / sigma^2, not (x - D(x)) / sigma^2":
                (x - Dx) / sigma ** 2,
            "divide by sigma^2, not sigma": (Dx - x) / sigma})
        if problem:
            return problem
    return None


@register("euler_step", "01", "one Euler step of the probability-flow ODE from sigma to sigma_next")
def _euler(fn):
    dist = ring8()
    for s, sn in ((3.0, 1.5), (0.4, 0.0)):
        x = _points(seed=2)
        want = list(edm_euler(dist.denoiser, x / s, torch.tensor([s, sn], dtype=F64)))[1]
        d = (x - dist.denoiser(x, s)) / s
        problem = compare(fn(dist.denoiser, x.clone(), s, sn), want, f"the step from sigma {s} to {sn}", mistakes={
            "the step is (sigma_next - sigma) * dx/dsigma: sigma decreases, so the step is negative":
                x + (s - sn) * d,
            "dx/dsigma = (x - D(x, sigma)) / sigma: divide by sigma": x + (sn - s) * (x - dist.denoiser(x, s))})
        if problem:
            return problem
    return None


@register("heun_step", "01", "one Heun step (EDM's Algorithm 2 without churn) from sigma to sigma_next")
def _heun(fn):
    dist = ring8()
    for s, sn in ((3.0, 1.5), (0.8, 0.3), (0.3, 0.0)):
        x = _points(seed=3)
        want = list(edm_heun(dist.denoiser, x / s, torch.tensor([s, sn], dtype=F64)))[1]
        got = fn(dist.denoiser, x.clone(), s, sn)
        if sn == 0 and isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            return ("the last step goes to sigma_next = 0, where the correction would divide by 0: "
                    "take the Euler step alone there (as EDM does)")
        euler = x + (sn - s) * (x - dist.denoiser(x, s)) / s
        problem = compare(got, want, f"the step from sigma {s} to {sn}", mistakes={
            "this is the Euler step: evaluate the slope again at the Euler point and average the two slopes": euler})
        if problem:
            return problem
    return None


# ----------------------------------------------------------------------- notebook 02
@register("denoising_loss", "02", "the EDM-weighted denoising loss of a batch, in data units")
def _dsm(fn):
    D, sd = _net(), 0.5
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(32, 2, dtype=F64, generator=g)
    sigma = (torch.randn(32, dtype=F64, generator=g) * 1.2 - 1.2).exp()
    noise = torch.randn(32, 2, dtype=F64, generator=g)
    with torch.no_grad():
        want, _ = denoising_loss(D, x0, sigma, noise, sd)
        err = ((D(x0 + sigma[:, None] * noise, sigma) - x0) ** 2)
        lam = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
        got = fn(D, x0.clone(), sigma.clone(), noise.clone(), sd)
    return compare_scalar(got, float(want), "the loss", mistakes={
        "weight each point's error by lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2":
            float(err.mean()),
        "average over the coordinates too (mean, not sum, of the squared error)": float((lam * err.sum(1)).mean()),
        "lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 weighs the error in data units; (sigma^2 + sd^2) / sd^2 "
        "is the weight in noise units": float(((sigma ** 2 + sd ** 2) / sd ** 2 * err.mean(1)).mean())})


@register("training_sigmas", "02", "draw the training noise levels: ln sigma ~ N(P_mean, P_std^2)")
def _sigmas(fn):
    n, pm, ps = 20_000, -1.2, 1.2
    got = fn(n, pm, ps, torch.Generator().manual_seed(5))
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (n,):
        return f"expected a tensor of shape ({n},), got {getattr(got, 'shape', type(got).__name__)}"
    if (got <= 0).any():
        if abs(float(got.mean()) - pm) < 0.1:
            return "these are ln sigma: return sigma = exp(...)"
        return "noise levels must be > 0"
    ref = edm_training_sigmas(n, pm, ps, generator=torch.Generator().manual_seed(5))
    if torch.allclose(got.double(), ref.double(), rtol=1e-5):
        return None
    lg = got.double().log()
    if abs(float(lg.mean()) - pm) > 0.05 or abs(float(lg.std()) - ps) > 0.05:
        return (f"ln sigma should have mean {pm} and std {ps}; yours has mean {float(lg.mean()):.3f} and std "
                f"{float(lg.std()):.3f}")
    if torch.allclose(got.double(), fn(n, pm, ps, torch.Generator().manual_seed(5)).double()):
        return None                      # a different but correct draw, reproducible from the generator
    return "draw every random number from `generator`, so that the same generator gives the same sigmas"


# ----------------------------------------------------------------------- notebook 03
@register("equivariance_residual", "03", "the residual eps(x + sigma w) - (eps(x) + w) that AT for DMs penalises")
def _residual(fn):
    D = _net(1)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(16, 2, dtype=F64, generator=g)
    sigma = torch.tensor([0.05, 0.5, 2.0, 10.0], dtype=F64).repeat(4)
    w = 0.3 * torch.randn(16, 2, dtype=F64, generator=g)
    s = sigma[:, None]
    with torch.no_grad():
        eps = eps_from_x0(x, D(x, sigma), sigma)
        eps_p = eps_from_x0(x + s * w, D(x + s * w, sigma), sigma)
        got = fn(D, x.clone(), sigma.clone(), w.clone())
    return compare(got, eps_p - (eps + w), "the residual", mistakes={
        "that is the invariance residual eps(x + sigma w) - eps(x): equivariance asks the prediction to move "
        "by w": eps_p - eps,
        "the perturbation of x is sigma * w (w is in noise units)":
            eps_from_x0(x + w, D(x + w, sigma), sigma) - (eps + w)})


@register("box_perturbation", "03", "a random perturbation uniform in the box [-r, r]^d, one r per point")
def _box(fn):
    r = torch.tensor([0.1, 1.0, 3.0], dtype=F64).repeat_interleave(4000)
    got = fn(r.clone(), (len(r), 2), torch.Generator().manual_seed(7))
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (len(r), 2):
        return f"expected a tensor of shape ({len(r)}, 2), got {getattr(got, 'shape', type(got).__name__)}"
    got = got.double()
    if (got.abs() > r[:, None] * (1 + 1e-6)).any():
        return "some entries leave the box: each point's coordinates must lie in [-r, r] with its own r"
    for k, rk in enumerate((0.1, 1.0, 3.0)):
        part = got[4000 * k:4000 * (k + 1)] / rk
        if abs(float(part.mean())) > 0.04:
            return f"the perturbation should be centred (mean 0); with r = {rk} its mean is {float(part.mean()) * rk:.3f}"
        if abs(float(part.var()) - 1 / 3) > 0.03:
            hint = " (use torch.rand, not torch.randn)" if float(part.abs().max()) > 0.999 and \
                float((part.abs() > 0.99).double().mean()) > 0.05 else ""
            return (f"uniform on [-r, r] has variance r^2/3; with r = {rk} yours has {float(part.var()) * rk ** 2:.3f} "
                    f"instead of {rk ** 2 / 3:.3f}{hint}")
    return None


# ----------------------------------------------------------------------- notebook 04
@register("empirical_denoiser", "04", "the exact denoiser of the training set itself (what a DM that memorises learns)")
def _empirical(fn):
    train = _points(12, seed=8)
    for sigma in (2.0, 0.3, 0.01):
        x = _points(40, seed=9)
        want = GaussianMixture.isotropic(train, 0.0, name="empirical").denoiser(x, sigma)
        got = fn(x.clone(), sigma, train.clone())
        if isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            return (f"NaN or infinity at sigma = {sigma}: exp(-||x - x_i||^2 / (2 sigma^2)) underflows to 0 for "
                    "every i; use torch.softmax over i, which subtracts the largest exponent first")
        nearest = train[torch.cdist(x, train).argmin(1)]
        problem = compare(got, want, f"the denoiser at sigma = {sigma}", mistakes={
            "this is the nearest training point: that is only the limit sigma -> 0; weight every training point "
            "by softmax(-||x - x_i||^2 / (2 sigma^2))": nearest})
        if problem:
            return problem
    return None


@register("memorized_share", "04", "the share of samples closer than a radius to some training point")
def _memorized(fn):
    g = torch.Generator().manual_seed(10)
    train = torch.randn(50, 2, dtype=F64, generator=g)
    samples = torch.cat([train[:20] + 0.01 * torch.randn(20, 2, dtype=F64, generator=g),
                         torch.randn(180, 2, dtype=F64, generator=g)])
    radius = 0.1
    want = memorization_rate(samples, train, radius=radius)["mem_rate"]
    d = torch.cdist(samples, train).min(1).values
    return compare_scalar(fn(samples.clone(), train.clone(), radius), want, "the share", mistakes={
        "compare the distance with the radius, not its square": float((d ** 2 < radius).double().mean()),
        "a share is a fraction of the samples (between 0 and 1), not a count": float((d < radius).double().sum()),
        "the nearest *training* point of each sample: distances from samples to train, not to other samples":
            float((torch.cdist(samples, samples).fill_diagonal_(math.inf).min(1).values < radius).double().mean())})
