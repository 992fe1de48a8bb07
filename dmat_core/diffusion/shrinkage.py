"""The Tweedie-shrinkage sampler and its exact likelihood: one knob that also smooths a model.

Every EDM sampler already ends with a Tweedie step: Heun's last step is an Euler step from the
grid's smallest level s to 0, `x + (0 - s)(x - D(x, s)) / s = D(x, s) = E[x0 | x]`. The
*shrinkage sampler* stops the probability-flow ODE at a chosen `sigma_s` instead and returns
`D(x, sigma_s)`: the grid is the sampler's own levels above `sigma_s`, then `sigma_s`, then 0
(:func:`stop_at`). For a Gaussian of variance v the result has variance v^2 / (v + sigma_s^2):
it shrinks every mode, as AT's smoothing does, at the price of one number a user can tune.
`sigma_s = 0` keeps the grid, so the sampler is then the standard one, bit for bit.

**Its likelihood.** The returned point is `y = T(x) = D(x, sigma_s)` with `x` distributed as the
ODE's state at `sigma_s`, whose density `q_{sigma_s}` :func:`~dmat_core.diffusion.likelihood.log_likelihood`
gives exactly (with `sigma_min = sigma_s`). Where T is invertible, the change of variables gives

    log q_T(y) = log q_{sigma_s}(x) - log |det dD/dx (x, sigma_s)|,   x = T^{-1}(y),

the density of what the sampler returns (in the ODE limit: its discretisation aside, as for every
likelihood here). :func:`invert_denoiser` finds the preimage by Newton's method with a halving line
search, in float64. The exact denoiser of a Gaussian mixture is invertible at every sigma > 0 (its
Jacobian is Cov[x0 | x] / sigma^2, symmetric positive definite: it is the gradient of a strictly
convex function); a learned one is where Newton converges, and a point where it does not (or where
the Jacobian's determinant is not positive) is reported (`converged` False, log-likelihood NaN),
never dropped. The Jacobian is exact (one backward pass per coordinate): meant for d <= 8.
"""
from __future__ import annotations

import copy
import math

import torch

from .edm import edm_sigmas
from .likelihood import log_likelihood
from .samplers import drain, edm_heun

Tensor = torch.Tensor


def stop_at(sigmas: Tensor, sigma_s: float) -> Tensor:
    """The sampler grid `sigmas` (descending, ending with 0) stopped at `sigma_s`: its levels above
    sigma_s, then sigma_s, then 0; `sigma_s = 0` returns `sigmas` itself."""
    sigma_s = float(sigma_s)
    if not (0 <= sigma_s < float(sigmas[0])) or not math.isfinite(sigma_s):
        raise ValueError(f"sigma_s must be in [0, {float(sigmas[0]):g}) (the grid's largest level), "
                         f"got {sigma_s}")
    if sigma_s == 0:
        return sigmas
    keep = sigmas[sigmas > sigma_s]
    return torch.cat([keep, torch.tensor([sigma_s, 0.0], dtype=sigmas.dtype, device=sigmas.device)])


def shrinkage_sampler(D, latents: Tensor, sigma_s: float, steps: int = 18, labels=None, **sigma_kw):
    """EDM Heun (Algorithm 2, no churn) on `edm_sigmas(steps, **sigma_kw)` stopped at `sigma_s`: a
    generator of states, the last being D(x, sigma_s) (up to rounding). NFE: 2 x (levels above
    sigma_s) + 1; sigma_s = 0 is the standard sampler, bit for bit."""
    return edm_heun(D, latents, stop_at(edm_sigmas(steps, **sigma_kw), sigma_s), labels)


def shrinkage_run(D, latents: Tensor, sigma_s: float, steps: int = 18, trajectory: bool = False,
                  labels=None, **sigma_kw):
    """Run :func:`shrinkage_sampler` to the end: the samples, or the whole (S+1, B, d) trajectory."""
    return drain(shrinkage_sampler(D, latents, sigma_s, steps, labels, **sigma_kw), trajectory)


def _float64(D):
    """D evaluated in float64: a float64 copy of a module, the callable itself otherwise."""
    if isinstance(D, torch.nn.Module):
        return copy.deepcopy(D).double().eval()
    return D


def _value_and_jacobian(D, x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """D(x, sigma) (B, d) and its Jacobian dD/dx (B, d, d), exact, float64."""
    x = x.detach().requires_grad_(True)
    d = x.shape[1]
    with torch.enable_grad():
        out = D(x, sigma)
        if not out.requires_grad:                  # a map that ignores x: its Jacobian is 0
            return out.detach(), torch.zeros(x.shape[0], d, d, dtype=x.dtype)
        rows = [torch.autograd.grad(out[:, j].sum(), x, retain_graph=j < d - 1, allow_unused=True)[0]
                for j in range(d)]
    rows = [torch.zeros_like(x) if r is None else r for r in rows]
    return out.detach(), torch.stack(rows, 1).detach()


def invert_denoiser(D, y: Tensor, sigma: float, tol: float = 1e-9, max_iter: int = 60) -> dict:
    """Solve D(x, sigma) = y for x, every row of y (B, d), by Newton's method in float64.

    Each iteration solves J dx = D(x) - y and halves the step (up to 30 times) until the residual
    shrinks, per point. Converged: ||D(x) - y|| <= tol (1 + ||y||) and det J > 0 at the solution.
    Returns `x` (B, d), `log_det` (B,) log det dD/dx at x (NaN where not converged), `converged`
    (B,) bool and `iterations`.
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"the denoiser is inverted at sigma > 0, got {sigma}")
    D64 = _float64(D)
    y = torch.as_tensor(y).detach().to(torch.float64)
    if y.ndim != 2:
        raise ValueError(f"y must be (B, d), got shape {tuple(y.shape)}")
    x, scale = y.clone(), tol * (1 + y.norm(dim=1))
    out, J = _value_and_jacobian(D64, x, sigma)
    it = 0
    for it in range(1, max_iter + 1):
        res = out - y
        norm = res.norm(dim=1)
        todo = norm > scale
        if not todo.any():
            break
        step = torch.zeros_like(x)
        step[todo] = torch.linalg.lstsq(J[todo], res[todo, :, None]).solution[..., 0]
        t = torch.ones(x.shape[0], dtype=x.dtype)
        accept = ~todo
        trial = x
        for _ in range(30):                     # halve the step until the residual shrinks
            cand = x - t[:, None] * step
            with torch.no_grad():
                r_cand = (D64(cand, sigma) - y).norm(dim=1)
            ok = (r_cand < norm) & ~accept
            trial = torch.where(ok[:, None], cand, trial)
            accept |= ok
            if accept.all():
                break
            t = torch.where(accept, t, t / 2)
        x = trial
        out, J = _value_and_jacobian(D64, x, sigma)
    res = (out - y).norm(dim=1)
    sign, logdet = torch.linalg.slogdet(J)
    converged = (res <= scale) & (sign > 0)
    logdet = torch.where(converged, logdet, torch.full_like(logdet, math.nan))
    return {"x": x, "log_det": logdet, "converged": converged, "iterations": it}


def shrinkage_log_likelihood(D, y: Tensor, sigma_s: float, tol: float = 1e-9, max_iter: int = 60,
                             **ll_kw) -> dict:
    """log q_T(y) of the shrinkage sampler stopped at `sigma_s` > 0, for every row of y (B, d):
    log q_{sigma_s}(x) - log det dD/dx(x, sigma_s) at the preimage x = T^{-1}(y) (module docstring).

    `ll_kw` go to :func:`~dmat_core.diffusion.likelihood.log_likelihood` (sigma_max, method,
    rtol, generator, ...). Returns `log_likelihood` (B,) float64 (NaN where the preimage was not
    found), `log_det`, `converged`, `preimage` and the ODE's `ode_log_likelihood` at the preimage.
    """
    if "sigma_min" in ll_kw:
        raise ValueError("the ODE stops at sigma_s: do not pass sigma_min")
    inv = invert_denoiser(D, y, sigma_s, tol, max_iter)
    x = inv["x"]
    ode = torch.full((x.shape[0],), math.nan, dtype=torch.float64)
    ok = inv["converged"]
    if ok.any():
        ode[ok] = log_likelihood(D, x[ok], sigma_min=sigma_s, **ll_kw)["log_likelihood"]
    return {"log_likelihood": ode - inv["log_det"], "log_det": inv["log_det"], "converged": ok,
            "preimage": x, "ode_log_likelihood": ode, "newton_iterations": inv["iterations"]}


__all__ = ["stop_at", "shrinkage_sampler", "shrinkage_run", "invert_denoiser", "shrinkage_log_likelihood"]
