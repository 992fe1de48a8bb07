"""Measures of the diffusion flow of any denoiser, in any shape: smoothness, trajectories, attacks.

  :func:`jacobian_sq_norm`    ||dD(x, sigma)/dx||_F^2 per point: exact (one backward pass per
                              output coordinate) in low d, Hutchinson's estimate
                              E_v ||v^T J||^2 = ||J||_F^2 (Rademacher v) in high d;
  :func:`trajectory_stats`    length and curvature of PF-ODE trajectories;
  :func:`trajectory_attack`   at one step of the sampler, an iterative attack in the noise-unit
                              box that maximises the denoiser's deviation, then sampling finishes.

All take a denoiser `D(x, sigma, labels=None)`, exact or learned, on toy points or images; the
measures that need a known distribution are in :mod:`dmat_core.toys.smoothness`. Notebook 04
plots them and notebook 08 attacks an image sampler with them.
"""
from __future__ import annotations

import torch

from .edm import edm_sigmas
from .samplers import edm_heun

Tensor = torch.Tensor


# ----------------------------------------------------------------------- Jacobian
def jacobian_sq_norm(D, x: Tensor, sigma: float, method: str = "auto", n_probe: int = 8,
                     generator: torch.Generator | None = None, labels=None) -> Tensor:
    """||dD(x, sigma)/dx||_F^2 at every point of x (B, ...), float64 (B,): how fast the denoiser
    (and so the probability-flow field) changes around each point; the smoothness the AT term
    asks for. `exact` takes one backward pass per output coordinate; `hutchinson` estimates it
    as E ||J^T v||^2 over `n_probe` Rademacher v (Hutchinson 1989), for images and high d;
    `auto` is exact where d <= 16. `generator` draws the probes (on its own device)."""
    if method not in ("auto", "exact", "hutchinson"):
        raise ValueError(f"method must be 'auto', 'exact' or 'hutchinson', got {method!r}")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = D(x, sigma) if labels is None else D(x, sigma, labels)          # (B, ...)
        d = y[0].numel()
        method = ("exact" if d <= 16 else "hutchinson") if method == "auto" else method
        flat = y.reshape(y.shape[0], -1)                                   # (B, d)
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        if method == "exact":     # row j of every point's Jacobian in one backward pass
            for j in range(d):
                (g,) = torch.autograd.grad(flat[:, j].sum(), x, retain_graph=j < d - 1)
                total += (g.double() ** 2).flatten(1).sum(1)
            return total
        for k in range(n_probe):  # Hutchinson: E ||J^T v||^2 = ||J||_F^2 for Rademacher v
            dev = generator.device if generator is not None else y.device
            v = (torch.randint(0, 2, y.shape, generator=generator, device=dev).to(y) * 2 - 1)
            (g,) = torch.autograd.grad((y * v).sum(), x, retain_graph=k < n_probe - 1)
            total += (g.double() ** 2).flatten(1).sum(1)
        return total / n_probe


# ----------------------------------------------------------------------- trajectories
def trajectory_stats(traj: Tensor, sigmas: Tensor | None = None, sigma_max: float | None = None) -> dict:
    """Length and curvature of trajectories (S+1, B, d) (a sampler's states, noise to data).

    With `sigmas` and `sigma_max`, only the states at sigma <= sigma_max count (the early part of
    an EDM path from sigma = 80 is the same straight line for every model).
    Returns `length` (mean sum_i ||x_{i+1} - x_i||), `straightness` (mean ||x_S - x_0|| / length,
    1 for a straight line) and `turning` (mean angle between consecutive steps, radians).
    """
    traj = torch.as_tensor(traj).to(torch.float64)
    if sigmas is not None and sigma_max is not None:
        keep = torch.as_tensor(sigmas) <= sigma_max
        traj = traj[keep]
    if traj.shape[0] < 3:
        raise ValueError("need at least 3 states for length and curvature")
    steps = traj[1:] - traj[:-1]                                          # (S, B, d)
    norms = steps.norm(dim=-1)                                            # (S, B)
    length = norms.sum(0)
    chord = (traj[-1] - traj[0]).norm(dim=-1)
    cos = (steps[1:] * steps[:-1]).sum(-1) / (norms[1:] * norms[:-1]).clamp_min(1e-12)
    turning = torch.arccos(cos.clamp(-1, 1))                              # (S-1, B)
    return {"length": float(length.mean()),
            "straightness": float((chord / length.clamp_min(1e-12)).mean()),
            "turning": float(turning.mean())}


# ----------------------------------------------------------------------- attacks
def _uniform(x: Tensor, generator) -> Tensor:
    """U[0, 1) of x's shape and dtype, drawn on the generator's device, then moved to x's."""
    device = generator.device if generator is not None else x.device
    return torch.rand(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def deviation(D, x: Tensor, x_adv: Tensor, sigma: float, labels=None) -> Tensor:
    """||D(x_adv, sigma) - D(x, sigma)||_2 per sample, (B,) float64, over all non-batch dims."""
    with torch.no_grad():
        return (D(x_adv, sigma, labels) - D(x, sigma, labels)).flatten(1).double().norm(dim=1)


def denoiser_deviation_attack(D, x: Tensor, sigma: float, budget: float, n_iter: int = 10,
                              step: float | None = None, restarts: int = 1,
                              generator=None, labels=None, keep_best: bool = False) -> Tensor:
    """PGD (sign steps from a random start, Madry et al. 2018) on delta = sigma w with w in the
    noise-unit box [-budget, budget]^d, maximising the denoiser's deviation
    ||D(x + delta, sigma, labels) - D(x, sigma, labels)||^2 per sample; with `restarts` > 1 the
    best of several random starts is kept per sample (the landscape has several local maxima).

    x: (B, ...) any shape (points (B, d), images (B, C, H, W)); sums run over all non-batch dims.
    The random start is w0 = budget (2U - 1), U ~ U[0, 1) drawn from `generator` (on its own
    device, then moved to x's). Step size 2.5 budget / n_iter by default. `keep_best` keeps,
    per sample, the best of every iterate (the random start included) instead of the last one,
    so the deviation never ends below the start's. Returns x + delta (detached)."""
    if budget < 0 or n_iter < 1 or restarts < 1:
        raise ValueError(f"need budget >= 0, n_iter >= 1, restarts >= 1; got {budget}, {n_iter}, {restarts}")
    if budget == 0:
        return x.detach().clone()
    step = 2.5 * budget / n_iter if step is None else step
    x = x.detach()
    with torch.no_grad():
        d_ref = D(x, sigma, labels)
    best_w = torch.zeros_like(x)
    best = torch.full((x.shape[0],), -1.0, dtype=torch.float64, device=x.device)

    def keep(w: Tensor, dev: Tensor) -> None:                             # per-sample maximum
        better = dev > best
        best_w[better], best[better] = w[better], dev[better]

    for _ in range(restarts):
        w = (2 * _uniform(x, generator) - 1) * budget
        for _ in range(n_iter):
            w.requires_grad_(True)
            with torch.enable_grad():
                dev = (D(x + sigma * w, sigma, labels) - d_ref) ** 2      # (B, ...)
                (grad,) = torch.autograd.grad(dev.sum(), w)
            if keep_best:
                keep(w.detach(), dev.detach().flatten(1).sum(1).double())
            w = (w.detach() + step * grad.sign()).clamp(-budget, budget)
        with torch.no_grad():
            dev = ((D(x + sigma * w, sigma, labels) - d_ref) ** 2).flatten(1).sum(1).double()
        keep(w, dev)
    return (x + sigma * best_w).detach()


def trajectory_attack(D, latents: Tensor, steps: int = 18, attack_step: int = 12,
                      budget: float = 0.5, n_iter: int = 10, restarts: int = 1, seed: int = 0,
                      labels=None, keep_best: bool = False, return_state: bool = False,
                      sigmas: Tensor | None = None, **sigma_kw):
    """EDM Heun sampling with an attack at one step (Briglia et al., attacks on the trajectory).

    Runs `attack_step` Heun steps on `edm_sigmas(steps)`, perturbs the state x_k at sigma_k
    within the noise-unit box of half-width `budget` (so ||delta||_inf <= budget * sigma_k) to
    maximise the denoiser's deviation (:func:`denoiser_deviation_attack`, random start from a
    CPU generator seeded `seed`), then finishes the sampling from there (Heun restarted at x_k,
    latents x_k / sigma_k). `labels` go to every denoiser call (class-conditional models).
    `budget=0` gives the unattacked samples. `sigmas` (descending, ending with 0) replaces the grid
    (`steps` and the grid's keywords are then unused). Returns the samples, shaped like `latents`;
    with `return_state` also {"x_k", "x_k_adv", "sigma_k"} (the state before and after the attack).
    """
    sigmas = edm_sigmas(steps, **sigma_kw) if sigmas is None else torch.as_tensor(sigmas)
    steps = len(sigmas) - 1
    if not (0 <= attack_step < steps):
        raise ValueError(f"attack_step must be in [0, {steps - 1}], got {attack_step}")
    x = None
    with torch.no_grad():
        for x in edm_heun(D, latents, sigmas[:attack_step + 1], labels):
            pass
    x_k, s_k = x, float(sigmas[attack_step])
    x = denoiser_deviation_attack(D, x_k, s_k, budget, n_iter, restarts=restarts, labels=labels,
                                  generator=torch.Generator().manual_seed(seed), keep_best=keep_best)
    x_k_adv = x
    with torch.no_grad():
        for x in edm_heun(D, x_k_adv / s_k, sigmas[attack_step:], labels):
            pass
    if return_state:
        return x, {"x_k": x_k, "x_k_adv": x_k_adv, "sigma_k": s_k}
    return x


__all__ = ["jacobian_sq_norm", "trajectory_stats", "deviation", "denoiser_deviation_attack", "trajectory_attack"]
