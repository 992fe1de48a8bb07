"""The MLP diffusion models of the generated-data study (:mod:`~dmat_core.studies.gen_data_study`),
where d <= 8: generators whose law is not Gaussian, scored by the exact model likelihood.

Per class, a :class:`~dmat_core.toys.nets.ToyDenoiserMLP` is trained on that class's real points
with dmat's toy trainer (the standard loss, or AT for DMs, the adversarial variant), and its
training data for the classifier are `n_gen` Heun samples (EDM's deterministic sampler,
`sampler_steps` steps). Their quality against the class law `p = N(c mu, Sigma)`:

* `kl_pq`: KL(p‖q) estimated as the mean of `log p(x) - log q(x)` over `ll_n` held-out true points
  per class (the same points for every generator of a cell), `log q` the PF-ODE log-likelihood of
  :func:`~dmat_core.diffusion.likelihood.log_likelihood` with the exact divergence (d <= 8) and
  `log p` exact; the pairing makes it far less noisy than the likelihood alone. `kl_pq_se` is its
  standard error. `loglik = -H(p) - kl_pq`, the held-out log-likelihood `E_p log q` with `H(p)`
  exact. Collapse or memorization cannot win it: a model that puts its mass on the training points
  gives held-out points a low density.
* `mean_angle_deg` and `var_ratio` from the samples' mean and covariance.
* KL(q‖p) and W2 are not measured (None): they need the law of the samples, which is known only
  through samples here (the likelihood is that of the exact ODE, the samples come from 18 Heun
  steps, so pairing the two would mix two laws).

`log_likelihood` returns the density at sigma_min = 0.002, that of `x + 0.002 n`; for these class
laws (smallest standard deviation above 1) it differs from the density at 0 by under 1e-5 nats.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..common.checkpoint import atomic_save, load_checkpoint
from ..diffusion.likelihood import log_likelihood
from ..diffusion.losses import ATConfig
from ..diffusion.samplers import run as run_sampler
from ..toys.gaussians import mean_angle
from ..toys.nets import data_std
from ..toys.train import fit_toy, make_toy_model
from .gen_data_setup import MLP_GENERATORS, stable_rng, stable_seed

F64 = torch.float64
# the settings an MLP DM's cached law depends on
MLP_KEYS = ("world", "mlp_width", "mlp_depth", "mlp_steps", "mlp_lr", "dm_batch", "dm_ema", "dm_warmup", "dm_lam",
            "sampler_steps", "n_gen", "ll_n")


def heldout_points(world, c: int, n: int, d_n_seed: tuple) -> torch.Tensor:
    """n true points (n, d) float64 of class c, drawn apart from the real points (same for every generator)."""
    mean, cov = world.law(c)
    lam, V = torch.linalg.eigh(cov)
    z = torch.randn(n, world.dim, dtype=F64, generator=stable_rng("heldout", c, *d_n_seed))
    return mean + z @ (V * lam.clamp_min(0).sqrt()).T


def class_log_prob(world, x: torch.Tensor, c: int) -> torch.Tensor:
    """log N(x; c mu, Sigma), exactly, (n,) float64."""
    mean, cov = world.law(c)
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


def class_entropy(world) -> float:
    """H(N(mu, Sigma)) in nats (the same for both classes)."""
    d = world.dim
    return 0.5 * (d * math.log(2 * math.pi * math.e) + float(torch.linalg.slogdet(world.Sigma)[1]))


def mlp_class(xc: torch.Tensor, world, c: int, cfg: dict, variant: str, parts: tuple) -> dict:
    """Train one MLP DM on the points xc (n, d) of class c; its samples and its held-out log-likelihood."""
    d, seed = xc.shape[1], stable_seed("mlp", c, *parts)             # the same start for both losses
    x32 = xc.float()
    model = make_toy_model(d, data_std(x32), seed=seed, width=cfg["mlp_width"], depth=cfg["mlp_depth"])
    D, _ = fit_toy(model, x32, ATConfig(variant, lam=cfg["dm_lam"]), steps=cfg["mlp_steps"], batch=cfg["dm_batch"],
                   lr=cfg["mlp_lr"], ema=cfg["dm_ema"], warmup=cfg["dm_warmup"], seed=seed, log_every=cfg["mlp_steps"])
    D.eval()
    latents = torch.randn(cfg["n_gen"], d, generator=stable_rng("mlp-latents", c, *parts))
    with torch.no_grad():
        samples = run_sampler(D, latents, "heun", cfg["sampler_steps"]).to(F64)
    return {"samples": samples, **heldout_kl(D, world, c, cfg["ll_n"], parts)}


def heldout_kl(D, world, c: int, n: int, parts: tuple) -> dict:
    """KL(p_c‖q) of the model the PF-ODE of denoiser D defines, estimated on n held-out true points
    of class c: `kl` (the mean of log p - log q), `kl_var` (their variance) and `nfe`."""
    xh = heldout_points(world, c, n, parts)
    ll = log_likelihood(D, xh, method="exact")            # runs D in its own dtype
    diff = class_log_prob(world, xh, c) - ll["log_likelihood"]
    return {"kl": float(diff.mean()), "kl_var": float(diff.var()), "nfe": ll["nfe"]}


def mlp_laws(x, y, world, cfg: dict, gen: str, seed: int, cache: Path | None, fresh: bool = False) -> dict:
    """The MLP generator `gen` of one cell: `samples` (2, n_gen, d) float64 (class -1 first), their
    `means` and `covs`, `kl_pq` and `kl_pq_se` (module docstring); kept in `cache` when given."""
    variant = MLP_GENERATORS[gen]
    d, n = x.shape[1], int((y > 0).sum())
    path = None if cache is None else cache / f"d{d}-n{n}-s{seed}-{gen}.pt"
    if path is not None and path.is_file() and not fresh:
        return load_checkpoint(path)
    t0 = time.perf_counter()
    per = [mlp_class(x[y == c], world, c, cfg, variant, (d, n, seed)) for c in (-1, 1)]
    samples = torch.stack([p["samples"] for p in per])
    centred = samples - samples.mean(1, keepdim=True)
    law = {"samples": samples, "means": samples.mean(1),
           "covs": centred.transpose(1, 2) @ centred / (samples.shape[1] - 1),
           "kl_pq": sum(p["kl"] for p in per) / 2,
           "kl_pq_se": math.sqrt(sum(p["kl_var"] for p in per) / cfg["ll_n"]) / 2,
           "nfe": max(p["nfe"] for p in per), "seconds": time.perf_counter() - t0}
    if path is not None:
        atomic_save(law, path)
    return law


def mlp_quality(world, law: dict) -> dict:
    """The quality row of an MLP generator (module docstring): estimates where the Gaussian
    generators have closed forms, None where nothing is measured."""
    return {"kl_pq": law["kl_pq"], "kl_pq_se": law["kl_pq_se"], "kl_qp": None, "w2": None,
            "mean_angle_deg": mean_angle((law["means"][1] - law["means"][0]) / 2, world.mu),
            "loglik": -class_entropy(world) - law["kl_pq"],
            "var_ratio": float(law["covs"].diagonal(dim1=1, dim2=2).sum(1).mean() / world.Sigma.trace())}
