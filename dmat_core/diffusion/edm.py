"""Diffusion in EDM notation (Karras et al. 2022), and the DDPM schedule mapped into it.

One convention everywhere (docs/science.md section 2):

    x = x0 + sigma * n,  n ~ N(0, I);   D(x, sigma, labels=None) ~ E[x0 | x]
    score(x, sigma) = (D(x, sigma) - x) / sigma^2          (Tweedie)
    eps(x, sigma)   = (x - D(x, sigma)) / sigma             (the noise a DDPM network predicts)
    dx/dsigma       = (x - D(x, sigma)) / sigma             (probability-flow ODE)

A DDPM state `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps` is the EDM point
`x = x_t / sqrt(abar_t)` at `sigma_t = sqrt((1 - abar_t) / abar_t)`, so every sampler here runs
on the same denoiser, exact (`GaussianMixture.denoiser`) or learned (`EDMPrecond`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


def expand_sigma(sigma, x: Tensor) -> Tensor:
    """sigma (a number, 0-d or (B,) tensor) shaped (B, 1, ..., 1) to broadcast against x."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    return s.reshape(-1, *([1] * (x.ndim - 1)))


# ------------------------------------------------------------------ prediction conversions
def eps_from_x0(x: Tensor, x0: Tensor, sigma) -> Tensor:
    """eps = (x - x0) / sigma."""
    return (x - x0) / expand_sigma(sigma, x)


def x0_from_eps(x: Tensor, eps: Tensor, sigma) -> Tensor:
    """x0 = x - sigma * eps."""
    return x - expand_sigma(sigma, x) * eps


def score_from_x0(x: Tensor, x0: Tensor, sigma) -> Tensor:
    """Tweedie: score = (x0 - x) / sigma^2."""
    return (x0 - x) / expand_sigma(sigma, x) ** 2


def x0_from_score(x: Tensor, score: Tensor, sigma) -> Tensor:
    """Tweedie: E[x0 | x] = x + sigma^2 * score."""
    return x + expand_sigma(sigma, x) ** 2 * score


def pf_ode_velocity(D, x: Tensor, sigma, labels=None) -> Tensor:
    """The probability-flow ODE vector field dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - D(x, sigma, labels)) / expand_sigma(sigma, x)


# ------------------------------------------------------------------ noise levels
def edm_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               device=None, dtype=torch.float64) -> Tensor:
    """EDM discretisation (Karras et al. eq. 5): n levels from sigma_max to sigma_min, then 0.

    sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, sigma_n = 0.
    Returns n + 1 values.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"steps must be an integer >= 1, got {n}")
    if not (0 < sigma_min <= sigma_max):
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(n, dtype=torch.float64)
    frac = i / max(n - 1, 1)
    s = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).to(device=device, dtype=dtype)


def ddpm_alphas_bar(T: int = 1000, schedule: str = "linear", beta_start: float = 1e-4,
                    beta_end: float = 0.02, cosine_s: float = 0.008) -> Tensor:
    """abar_t for t = 0..T (abar_0 = 1), float64, (T + 1,).

    `linear`: Ho et al. 2020, betas linear in [1e-4, 0.02]. `cosine`: Nichol & Dhariwal 2021,
    abar_t = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), betas clipped at 0.999.
    """
    if int(T) != T or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T}")
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    elif schedule == "cosine":
        t = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((t + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"unknown DDPM schedule {schedule!r}; choose 'linear' or 'cosine'")
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def sigma_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t): the EDM noise level of DDPM step t."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def alpha_bar_from_sigma(sigma: Tensor) -> Tensor:
    """abar = 1 / (1 + sigma^2), the inverse of `sigma_from_alpha_bar`."""
    return 1 / (1 + sigma ** 2)


# ------------------------------------------------------------------ networks as denoisers
class EDMPrecond(nn.Module):
    """EDM preconditioning (Karras et al. Table 1) turning a raw network F into a denoiser:

        D(x, sigma) = c_skip x + c_out F(c_in x, c_noise, labels),
        c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2),
        c_in = 1/sqrt(sigma^2+sd^2), c_noise = ln(sigma)/4.

    `net(x_in, c_noise, labels)` must return a tensor shaped like x_in; c_noise is (B,).
    sigma_data is 0.5 for images in [-1, 1]; use the data's own std for toys.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: Tensor):
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sigma ** 2 + sd ** 2).sqrt()
        return c_skip, c_out, c_in

    def forward(self, x: Tensor, sigma, labels=None) -> Tensor:
        s = expand_sigma(sigma, x).to(torch.float32 if x.dtype != torch.float64 else x.dtype)
        c_skip, c_out, c_in = self.coefficients(s)
        c_noise = s.reshape(-1).log() / 4
        F = self.net((c_in * x).to(x.dtype), c_noise, labels)
        return (c_skip * x + c_out * F.to(s.dtype)).to(x.dtype)

    @staticmethod
    def loss_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
        """EDM loss weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2."""
        return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def edm_training_sigmas(n: int, P_mean: float = -1.2, P_std: float = 1.2, generator=None,
                        device=None) -> Tensor:
    """Training noise levels: ln sigma ~ N(P_mean, P_std^2) (EDM section 5)."""
    z = torch.randn(n, generator=generator, device=device)
    return (z * P_std + P_mean).exp()


class CountingDenoiser:
    """Wraps a denoiser and counts its evaluations (NFE = calls, whatever the batch size)."""

    def __init__(self, D):
        self.D = D
        self.nfe = 0

    def __call__(self, x, sigma, labels=None):
        self.nfe += 1
        return self.D(x, sigma, labels)


class NoiseEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar c_noise (Transformer / DDPM style), then a 2-layer MLP.

    Frequencies are geometric in [1, max_freq]; c_noise = ln(sigma)/4 spans about [-2, 1.5]
    for sigma in [0.002, 80], so max_freq = 64 resolves noise levels a few percent apart.
    """

    def __init__(self, dim: int = 64, max_freq: float = 64.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2))
        self.register_buffer("freqs", freqs)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        a = c_noise.reshape(-1, 1).to(self.freqs.dtype) * self.freqs      # (B, dim/2)
        return self.mlp(torch.cat([a.sin(), a.cos()], dim=1))             # (B, dim)
