"""The baselines of the AT-for-DMs study: what a user of standard training could do instead of AT.

An effect of AT counts only where it beats these (issue 11; the report calls it so only beyond two
paired standard errors):

(a) **Tweedie shrinkage** (`tweedie-shrinkage`): the standard model, sampled with the PF-ODE stopped
    at sigma_s and finished with D(x, sigma_s) (:mod:`~dmat_core.diffusion.shrinkage`). It shrinks
    every mode, as AT's smoothing does, with one knob. sigma_s is chosen from the configuration's
    `shrink_sigmas` (0 among them: the standard sampler) by the mean log-likelihood of
    `tune_n` *validation* points of the clean distribution (a draw of their own, never the test
    points), as a user allowed to tune one knob would. Its likelihood is well defined, as a sampler's:
    the ODE's density at sigma_s pushed through the final map (change of variables); at sigma_s = 0
    it is the standard model's, number for number. Where the likelihood is not measured (d > 8)
    sigma_s is chosen by sliced W2 over its floor on validation samples instead (own latents, own
    reference sets).
(b) **Early stopping** (`early-stopping`): the EMA checkpoint of the standard run (at
    `snapshot_fracs` of it, and its end) with the best validation score, chosen the same way.
(c) **The ideal standard model** (`ideal-standard`): the exact denoiser of the corrupted training
    distribution (:func:`~dmat_core.toys.corruption.corrupted_distribution`), what standard training
    converges to with unlimited data and capacity; none for uniform outliers (no closed form).

Every baseline is measured like an arm, with the same seed's data, latents and held-out points, so
the report pairs them with the arms by seed.
"""
from __future__ import annotations

import math

import torch

from ..diffusion.samplers import latent_noise
from ..toys.corruption import corrupted_distribution
from ..toys.metrics import sample_metrics
from ..toys.mixtures import GaussianMixture
from ..toys.smoothness import mean_log_likelihood, validation_points
from .at_dm_measure import sample_trajectory, uses_likelihood


def validation_score(D, dist: GaussianMixture, cfg: dict, seed: int, shrink_sigma: float = 0.0) -> dict:
    """How good a model (sampled with `shrink_sigma`) is on validation data of its own, higher is
    better: {"select_by", "score", "value", "failed"}. The mean log-likelihood of `tune_n` validation
    points (:func:`~dmat_core.toys.smoothness.validation_points`), or, where the study measures no
    likelihood, minus sliced W2 over its floor of `tune_n` samples from validation latents against
    reference sets of their own."""
    if uses_likelihood(cfg, dist):
        r = mean_log_likelihood(D, validation_points(dist, cfg["tune_n"], seed), shrink_sigma=shrink_sigma,
                                n_probe=cfg["ll_probe"], seed=seed + 1000)
        score = r["mean"] if math.isfinite(r["mean"]) else -math.inf     # no preimage somewhere: not eligible
        return {"select_by": "validation log-likelihood", "score": score, "value": r["mean"],
                "failed": r["failed"]}
    n = max(cfg["tune_n"], 64)
    z = latent_noise(n, dist.dim, torch.Generator().manual_seed(70_000 + seed))
    x = sample_trajectory(D, z, cfg, shrink_sigma)[-1].double()
    ratio = sample_metrics(dist, x, seed=80_000 + seed, mmd=False, repeats=2)["sw2_ratio"]
    return {"select_by": "validation SW2/floor", "score": -ratio, "value": ratio, "failed": 0}


def tune_shrinkage(D, dist: GaussianMixture, cfg: dict, seed: int) -> tuple[float, list]:
    """Baseline (a): the sigma_s of `shrink_sigmas` with the best validation score (ties: the
    smallest), and every candidate's row."""
    rows = [{"sigma_s": float(s), **validation_score(D, dist, cfg, seed, float(s))}
            for s in sorted(cfg["shrink_sigmas"])]
    best = max(rows, key=lambda r: r["score"])      # first maximum: the smallest sigma_s
    return best["sigma_s"], rows


def choose_snapshot(models: dict, dist: GaussianMixture, cfg: dict, seed: int) -> tuple[int, list]:
    """Baseline (b): the step of `models` ({step: denoiser}, the run's end among them) with the
    best validation score (ties: the earliest), and every candidate's row."""
    rows = [{"step": int(k), **validation_score(models[k], dist, cfg, seed)} for k in sorted(models)]
    best = max(rows, key=lambda r: r["score"])
    return best["step"], rows


def ideal_standard(dist: GaussianMixture, cfg: dict) -> GaussianMixture | None:
    """Baseline (c): the mixture the corrupted training set is drawn from (None for outliers)."""
    return corrupted_distribution(dist, cfg["corruption"], cfg["p"], cfg["s"])


__all__ = ["validation_score", "tune_shrinkage", "choose_snapshot", "ideal_standard"]
