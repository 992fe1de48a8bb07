"""Measuring one model of the AT-for-DMs study against the clean distribution, and the reference
rows beside the models: the sampler every model is drawn with (:func:`sampler_grid`, stopped early
for the Tweedie-shrinkage baseline), every measure of a denoiser (:func:`measure_denoiser`), what
fresh true samples, the training set and the ideal exact denoisers score (:func:`reference_rows`)
and the measured cost per training step (:func:`measure_cost`).

Below :mod:`~dmat_core.studies.at_dm_baselines` (which tunes with these measures) and
:mod:`~dmat_core.studies.at_dm_study` (which runs them over arms and seeds, and from which the
AT-for-DMs notebooks import them).
"""
from __future__ import annotations

import time

import torch

from ..diffusion.edm import edm_sigmas
from ..diffusion.flow import trajectory_attack, trajectory_stats
from ..diffusion.losses import ATConfig
from ..diffusion.samplers import latent_noise
from ..diffusion.shrinkage import shrinkage_run, stop_at
from ..toys.corruption import corrupted_distribution
from ..toys.metrics import mode_switches, sample_metrics, score_error
from ..toys.mixtures import GaussianMixture, make_distribution
from ..toys.nets import data_std
from ..toys.smoothness import heldout_points, jacobian_frobenius, likelihood_gap, memorization_rate
from ..toys.train import make_toy_model, train_toy
from . import at_dm_cache as cache_io
from .at_dm_setup import ARMS, project_2d, training_set

JAC_SIGMAS = [0.01, 0.05, 0.2, 1.0]
LL_SIGMA_MIN = 0.002        # likelihood_gap's density level: the held-out LL does not follow the sampler's sigma_min
SCORE_SIGMAS = [0.05, 0.2, 1.0]


def sampler_grid(cfg: dict, shrink_sigma: float = 0.0) -> torch.Tensor:
    """The noise levels a model of the study is sampled on: EDM's grid of `sampler_steps` levels
    down to `sampler_sigma_min`, then 0, stopped at `shrink_sigma` (> 0: baseline (a))."""
    return stop_at(edm_sigmas(cfg["sampler_steps"], sigma_min=cfg["sampler_sigma_min"]), shrink_sigma)


def sample_trajectory(D, latents: torch.Tensor, cfg: dict, shrink_sigma: float = 0.0) -> torch.Tensor:
    """Heun on :func:`sampler_grid`: the whole (S+1, n, d) trajectory, without gradients."""
    with torch.no_grad():
        return shrinkage_run(D, latents, shrink_sigma, cfg["sampler_steps"], trajectory=True,
                             sigma_min=cfg["sampler_sigma_min"])


def uses_likelihood(cfg: dict, dist: GaussianMixture) -> bool:
    """Whether the study measures likelihoods here (an exact trace is cheap only for d <= 8)."""
    return bool(cfg.get("ll_n")) and dist.dim <= 8


def measure_denoiser(D, dist, train, cfg: dict, seed: int, shrink_sigma: float = 0.0,
                     memo=None) -> tuple[dict, dict]:
    """Every measure of one model, sampled with Heun down to `sampler_sigma_min` (stopped at
    `shrink_sigma` > 0 and finished with D(x, shrink_sigma): baseline (a)); returns (metrics,
    extras with samples and per-sigma rows). The Jacobian and the denoiser error are the denoiser's
    own (the same for every sampler), and so are the exact likelihoods: `memo(name, settings,
    compute)`, if given, may return them from a cache keyed by this model and `settings`
    (:func:`~dmat_core.studies.at_dm_cache.memo`) instead of computing them again."""
    sd = float(getattr(D, "sigma_data", 1.0))
    latents = latent_noise(cfg["n_eval"], dist.dim, torch.Generator().manual_seed(5000 + seed))
    grid = sampler_grid(cfg, shrink_sigma)
    traj = sample_trajectory(D, latents, cfg, shrink_sigma)             # (S+1, n, d)
    x = traj[-1].double()
    m = sample_metrics(dist, x, seed=seed, mmd=False)
    m.pop("mode_weights", None)
    if not dist.full_rank:     # no density at sigma = 0: NLL under the slightly noised density
        m["nll_smoothed"] = float(-dist.log_prob(x, 0.05).mean())
    spread = m.get("spread_ratio", float("nan"))        # NN ratios also at the samples' own spread
    m.update(memorization_rate(x, train, dist, seed=seed, spread=spread if spread == spread and spread > 0 else None))
    # the exact held-out likelihood (PF-ODE) and the train/held-out gap, where the exact trace is cheap:
    # in d = 256 one exact denoiser of subspace data alone takes over a minute for 64 points (stiff)
    if uses_likelihood(cfg, dist):
        ll = lambda: likelihood_gap(D, dist, train, n=cfg["ll_n"], seed=seed, n_probe=cfg["ll_probe"],  # noqa: E731
                                    sigma_min=LL_SIGMA_MIN, shrink_sigma=shrink_sigma)
        m.update(ll() if memo is None else memo("likelihood_gap", {
            "ll_n": cfg["ll_n"], "ll_probe": cfg["ll_probe"], "sigma_min": LL_SIGMA_MIN, "shrink_sigma": shrink_sigma}, ll))
    if int((grid <= sd).sum()) >= 3:    # the path at sigma <= sigma_data; a sampler stopped at a
        m.update(trajectory_stats(traj, grid, sigma_max=sd))   # sigma_s near sigma_data has too little of it
    jac = jacobian_frobenius(D, dist, JAC_SIGMAS, n=cfg["jac_n"], seed=seed)
    err = score_error(D, dist, SCORE_SIGMAS, n=1024, seed=seed)
    for r in jac:
        m[f"jac@{r['sigma']:g}"] = r["jac_fro"]
    for r in err:
        m[f"den_err@{r['sigma']:g}"] = r["relative"]
    extras = {"view": project_2d(x[:2000], dist), "jacobian": jac, "score_error": err}
    if cfg.get("attack_budgets"):
        rows = []
        step = min(cfg["attack_step"], len(grid) - 2)    # a sampler stopped early is attacked at its end
        for b in cfg["attack_budgets"]:
            xa = trajectory_attack(D, latents, attack_step=step, budget=b, n_iter=cfg["attack_iter"],
                                   restarts=cfg["attack_restarts"], seed=seed, sigmas=grid).double()
            ma = sample_metrics(dist, xa, seed=seed, mmd=False, repeats=2)
            ma.pop("mode_weights", None)
            if dist.full_rank and dist.n_components > 1:     # the same latent, without and with the attack
                ma["mode_switch"] = mode_switches(dist, x, xa)
            rows.append({"budget": b, **ma})
        extras["attack"] = rows
        for r in rows:
            for k in ("off_mode_mass", "nll_gap", "sw2_ratio", "residual_rms", "mode_switch"):
                if k in r:
                    m[f"attack{r['budget']:g}_{k}"] = r[k]
    return m, extras


def model_memo(cache, cfg: dict, dist, model: dict):
    """memo(name, settings, compute) for the measurements of one model that do not depend on how it
    is sampled (:func:`~dmat_core.studies.at_dm_cache.memo`; `model`: the model's settings), or None
    without a cache. What a baseline tunes on validation *samples* (no likelihood: d > 8) depends on
    the sampler too, so its key then holds the sampler's settings."""
    if cache is None:
        return None
    sampler = {} if uses_likelihood(cfg, dist) else {k: cfg[k] for k in ("sampler_steps", "sampler_sigma_min")}
    return lambda name, settings, compute: cache_io.memo(cache, {**model, "measure": name, **settings, **sampler},
                                                         compute)


class ExactDenoiser:
    """The exact denoiser of a mixture, with the `sigma_data` attribute of a trained model."""

    def __init__(self, mixture: GaussianMixture, sigma_data: float):
        self.mixture, self.sigma_data = mixture, sigma_data

    def __call__(self, x, sigma, labels=None):
        return self.mixture.denoiser(x, sigma, labels)


def measure_cost(cfg: dict, arms, at: dict, rounds: int = 5, steps: int | None = None) -> dict:
    """Milliseconds per training step of each arm, interleaved in one process (one thread) so
    that a shared machine's load hits every arm alike; the fastest of `rounds` (the least
    disturbed, as timeit does), each of `steps` steps (default: the size's `cost_steps`)."""
    threads, steps = torch.get_num_threads(), steps or cfg["cost_steps"]
    torch.set_num_threads(1)
    dist = make_distribution(cfg["dist"], **cfg["dist_kw"])
    x = dist.sample(max(cfg["batch"], 64), torch.Generator().manual_seed(0))
    times = {a: [] for a in arms}
    for _ in range(rounds):
        for a in arms:
            model = make_toy_model(dist.dim, data_std(x), 0, width=cfg["width"], depth=cfg["depth"])
            it = train_toy(model, x, ATConfig(**{**at, **ARMS[a]}), steps=steps + 2,
                           batch=cfg["batch"])
            next(it), next(it)                                   # warm-up steps
            t0 = time.perf_counter()
            for _ in it:
                pass
            times[a].append(1000 * (time.perf_counter() - t0) / steps)
    torch.set_num_threads(threads)
    return {a: min(t) for a, t in times.items()}


def reference_rows(cfg: dict, seed: int = 0, cache=None) -> dict:
    """What fresh true samples, and the training set itself, score under the same metrics; and
    the ideal models of :func:`ideal_models`, measured like the trained ones (their likelihoods
    read from `cache` where it holds them: :func:`model_memo`)."""
    dist, x, mask = training_set(cfg, seed)
    g = torch.Generator().manual_seed(99_000 + seed)
    fresh = dist.sample(cfg["n_eval"], g)
    out = {}
    for name, pts in (("true samples", fresh), ("training set", x[:cfg["n_eval"]])):
        m = sample_metrics(dist, pts, seed=seed, mmd=False)
        m.pop("mode_weights", None)
        if not dist.full_rank:
            m["nll_smoothed"] = float(-dist.log_prob(pts, 0.05).mean())
        if name == "true samples":
            m.update(memorization_rate(pts, x, dist, seed=seed))
            if uses_likelihood(cfg, dist):     # the truth's held-out LL: the models' held-out points under p
                held = heldout_points(dist, cfg["ll_n"], seed)
                m["heldout_ll"] = float(dist.log_prob(held.double(), LL_SIGMA_MIN).mean())
        out[name] = m
    out["training set"]["corrupted_share"] = float(mask.double().mean())
    for name, ideal in ideal_models(dist, x, cfg).items():
        model = {"model": name, **{k: cfg[k] for k in cache_io.TRAIN_KEYS}, "seed": seed}
        m, _ = measure_denoiser(ExactDenoiser(ideal, data_std(x)), dist, x, cfg, seed,
                                memo=model_memo(cache, cfg, dist, model))
        out[name] = m
    return out


def ideal_models(dist, x, cfg: dict) -> dict:
    """What a perfect fit of the training data would do, as exact denoisers measured like the
    trained models: the exact denoiser of the distribution the (corrupted) training set is drawn
    from, which plain denoising training converges to with unlimited data (baseline (c), measured
    for every seed as the arm `ideal-standard`); and, for a tiny training set, the exact denoiser
    of the training set itself (the empirical optimum of the denoising loss, which can only
    reproduce training points)."""
    out = {}
    ideal = corrupted_distribution(dist, cfg["corruption"], cfg["p"], cfg["s"])
    if ideal is not None:
        out["exact denoiser of the training distribution"] = ideal
    if len(x) <= 1000:
        out["exact denoiser of the training set"] = GaussianMixture.isotropic(x, 0.0, name="empirical")
    return out


__all__ = ["sampler_grid", "sample_trajectory", "uses_likelihood", "measure_denoiser", "ExactDenoiser",
           "measure_cost", "reference_rows", "ideal_models", "model_memo", "JAC_SIGMAS", "SCORE_SIGMAS"]
