"""Samplers over one denoiser interface `D(x, sigma, labels=None)`.

Each sampler is the paper's algorithm in one function and a *generator*: it yields the state
at every noise level, starting with the initial noise and ending with the sample, so

    *xs, x0 = edm_heun(D, latents, edm_sigmas(18))

gives the whole trajectory and `run(...)` only the end point. All states are in EDM
coordinates (`x = x0 + sigma n`); DDPM and DDIM convert from and to `x_t = sqrt(abar) x`
inside (docs/science.md section 2). `latents` is standard normal noise of the output's shape.
"""
from __future__ import annotations

import math

import torch

from .edm import ddpm_alphas_bar, edm_sigmas, sigma_from_alpha_bar

Tensor = torch.Tensor


def _randn_like(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def edm_euler(D, latents: Tensor, sigmas: Tensor, labels=None):
    """EDM Algorithm 1 (deterministic Euler) on the probability-flow ODE. NFE = N."""
    x = latents * float(sigmas[0])
    yield x
    for i in range(len(sigmas) - 1):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - D(x, s_cur, labels)) / s_cur                    # dx/dsigma at (x, s_cur)
        x = x + (s_next - s_cur) * d                             # Euler step
        yield x


def edm_heun(D, latents: Tensor, sigmas: Tensor, labels=None, S_churn: float = 0.0,
             S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0,
             generator: torch.Generator | None = None):
    """EDM Algorithm 2 (Karras et al. 2022): Heun's 2nd-order method with optional churn.

    Deterministic for S_churn = 0. NFE = 2N - 1 (no correction on the last step, to sigma 0).
    """
    N = len(sigmas) - 1
    x_next = latents * float(sigmas[0])
    yield x_next
    for i in range(N):
        x_cur = x_next
        t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
        # Increase noise temporarily (churn): gamma_i = min(S_churn/N, sqrt(2)-1) in [S_tmin, S_tmax].
        gamma = min(S_churn / N, math.sqrt(2) - 1) if S_tmin <= t_cur <= S_tmax else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur
        if gamma > 0:
            x_hat = x_cur + math.sqrt(t_hat ** 2 - t_cur ** 2) * S_noise * _randn_like(x_cur, generator)
        # Euler step.
        d_cur = (x_hat - D(x_hat, t_hat, labels)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # Apply 2nd order correction (not on the last step, where t_next = 0).
        if t_next > 0:
            d_prime = (x_next - D(x_next, t_next, labels)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        yield x_next


def ddpm_timesteps(T: int, steps: int, spacing: str = "uniform") -> list[int]:
    """`steps` DDPM timesteps from T down to 1 (descending), then 0.

    `uniform` spaces them evenly; `quad` evenly in sqrt(t) (Song et al. 2021, used for
    CIFAR-10), which puts more steps at low noise.
    """
    if int(steps) != steps or not (1 <= steps <= T):
        raise ValueError(f"steps must be an integer in [1, T={T}], got {steps}")
    u = torch.linspace(1, 0, int(steps), dtype=torch.float64)
    if spacing == "uniform":
        ts = 1 + u * (T - 1)
    elif spacing == "quad":
        ts = 1 + u ** 2 * (T - 1)
    else:
        raise ValueError(f"spacing must be 'uniform' or 'quad', got {spacing!r}")
    ts = ts.round().long().tolist()
    return sorted(set(ts), reverse=True) + [0]


def ddpm(D, latents: Tensor, alpha_bar: Tensor, timesteps: list[int], labels=None,
         variance: str = "posterior", generator: torch.Generator | None = None):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any subsequence of timesteps.

    From t to s < t with alpha = abar_t / abar_s, beta = 1 - alpha:
        x_s = (x_t - beta / sqrt(1 - abar_t) eps_hat) / sqrt(alpha) + sqrt(var) z,
    var = beta (1 - abar_s)/(1 - abar_t) (`posterior`, beta tilde) or beta (`beta`); no noise to t = 0.
    `latents` is x_T ~ N(0, I) in DDPM scale; states are yielded in EDM coordinates.
    """
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
    ab = alpha_bar.to(torch.float64)
    x_t = latents
    yield x_t / math.sqrt(float(ab[timesteps[0]]))
    for t, s in zip(timesteps[:-1], timesteps[1:]):
        ab_t, ab_s = float(ab[t]), float(ab[s])
        sigma_t = math.sqrt((1 - ab_t) / ab_t)
        x = x_t / math.sqrt(ab_t)                                          # EDM coordinates
        eps_hat = (x - D(x, sigma_t, labels)) / sigma_t                     # predicted noise
        alpha, beta = ab_t / ab_s, 1 - ab_t / ab_s
        x_t = (x_t - beta / math.sqrt(1 - ab_t) * eps_hat) / math.sqrt(alpha)  # posterior mean
        if s > 0:
            var = beta * (1 - ab_s) / (1 - ab_t) if variance == "posterior" else beta
            x_t = x_t + math.sqrt(var) * _randn_like(x_t, generator)
        yield x_t / math.sqrt(ab_s)


def ddim(D, latents: Tensor, alpha_bar: Tensor, timesteps: list[int], labels=None,
         eta: float = 0.0, generator: torch.Generator | None = None):
    """DDIM (Song et al. 2021, eq. 12): deterministic for eta = 0, DDPM-like for eta = 1.

        x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - s_eta^2) eps_hat + s_eta z,
        s_eta = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ab = alpha_bar.to(torch.float64)
    x_t = latents
    yield x_t / math.sqrt(float(ab[timesteps[0]]))
    for t, s in zip(timesteps[:-1], timesteps[1:]):
        ab_t, ab_s = float(ab[t]), float(ab[s])
        sigma_t = math.sqrt((1 - ab_t) / ab_t)
        x = x_t / math.sqrt(ab_t)
        x0_hat = D(x, sigma_t, labels)
        eps_hat = (x - x0_hat) / sigma_t
        s_eta = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
        x_t = math.sqrt(ab_s) * x0_hat + math.sqrt(max(1 - ab_s - s_eta ** 2, 0.0)) * eps_hat
        if s_eta > 0:
            x_t = x_t + s_eta * _randn_like(x_t, generator)
        yield x_t / math.sqrt(ab_s)


# ---------------------------------------------------------------------- one entry point
SAMPLERS = {"heun": 18, "euler": 40, "ddim": 50, "ddpm": 1000}   # name -> usual step count


def nfe(sampler: str, steps: int) -> int:
    """Network evaluations a sampler spends for `steps` steps (Heun: 2N - 1)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def sampler_iter(D, latents: Tensor, sampler: str = "heun", steps: int | None = None, labels=None,
                 generator: torch.Generator | None = None, T: int = 1000,
                 schedule: str = "linear", spacing: str = "uniform", **kwargs):
    """The named sampler's generator with its usual schedule: EDM sigmas (smin 0.002, smax 80,
    rho 7) for `heun`/`euler`, the T-step DDPM schedule for `ddpm`/`ddim`. Extra keyword
    arguments go to the sampler (S_churn, eta, variance) or to `edm_sigmas` (sigma_min, ...)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    steps = SAMPLERS[sampler] if steps is None else steps
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    if sampler in ("heun", "euler"):
        grid = {k: kwargs.pop(k) for k in ("sigma_min", "sigma_max", "rho") if k in kwargs}
        sigmas = edm_sigmas(int(steps), **grid)
        if sampler == "euler":
            return edm_euler(D, latents, sigmas, labels, **kwargs)
        return edm_heun(D, latents, sigmas, labels, generator=generator, **kwargs)
    ab = ddpm_alphas_bar(T, schedule)
    ts = ddpm_timesteps(T, int(steps), spacing)
    fn = ddpm if sampler == "ddpm" else ddim
    return fn(D, latents, ab, ts, labels, generator=generator, **kwargs)


def run(D, latents: Tensor, sampler: str = "heun", steps: int | None = None, labels=None,
        generator: torch.Generator | None = None, trajectory: bool = False, **kwargs):
    """Run a sampler to the end; the final sample, or the (S+1, B, ...) trajectory."""
    return drain(sampler_iter(D, latents, sampler, steps, labels, generator, **kwargs), trajectory)


def drain(states, trajectory: bool = False):
    """Run a sampler's generator of states to its end: the last state, or all of them stacked
    ((S+1, B, ...), `trajectory=True`)."""
    if trajectory:
        return torch.stack(list(states))
    x = None
    for x in states:
        pass
    return x


def latent_noise(n: int, shape, generator: torch.Generator | None = None, device=None,
                 dtype=torch.float32) -> Tensor:
    """Standard normal latents (n, *shape), validated."""
    if int(n) != n or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n}")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return torch.randn((int(n), *shape), generator=generator, device=device, dtype=dtype)


__all__ = ["edm_euler", "edm_heun", "ddpm", "ddim", "ddpm_timesteps", "sampler_iter", "run", "drain",
           "latent_noise", "nfe", "SAMPLERS", "sigma_from_alpha_bar"]
