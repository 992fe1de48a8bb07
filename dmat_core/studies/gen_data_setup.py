"""Presets, configuration and names of the generated-data study in any dimension, below both the
study (:mod:`~dmat_core.studies.gen_data_study`) and its report
(:mod:`~dmat_core.studies.gen_data_report`).

The world is the two-class Gaussian world of Schmidt et al. 2018
(:class:`~dmat_core.toys.gaussians.GaussianWorld`: y uniform on {-1, +1}, `x | y ~ N(y mu, Sigma)`),
where everything that matters has a closed form. Two presets, chosen so that robust learning
needs data (with 4 real points per class a robustly trained linear classifier is far below the
best linear robust accuracy, with 256 it comes close; checked before fixing them, see
docs/science.md section 8):

* `isotropic-linf`: `mu` of entries +-1, `Sigma = sqrt(d) I` (std d^(1/4), Schmidt et al.'s
  regime), Linf threat eps = 0.5: the best robust accuracy is `Phi(d^(1/4) / 2)`, 0.72 in d = 2
  up to 0.977 in d = 256, while the Bayes (clean) accuracy is `Phi(d^(1/4))`.
* `lowrank-l2`: `Sigma = sqrt(d) (I + 16 U U')` with `min(8, max(1, d // 4))` noisy directions, one
  of them at cosine 0.5 with `mu` (:func:`~dmat_core.toys.gaussians.lowrank`), L2 threat
  eps = 0.3 sqrt(d) = 0.3 ||mu||: a generator must get the covariance right, not only the means.

The data sources (:data:`GENERATORS`): real points only; Gaussians fitted to them (`mle`,
`shrinkage`); two oracles with more information (`more-labelled`: 4x the labelled points;
`pseudo-label`: an unlabelled pool of 10x, Carmon et al. 2019); the truth; and affine diffusion
models (:mod:`dmat_core.toys.affine_dm`), one per class, trained with the standard loss or with AT
for DMs (Briglia et al.; the adversarial variant) on the clean real points or on a copy in
which 90% of the points carry Gaussian noise (the proof of concept of
:mod:`dmat_core.toys.corruption`); and, where d <= 8, the toy MLP denoisers of the rest of the
package (:class:`~dmat_core.toys.nets.ToyDenoiserMLP`), standard and AT, on the clean points,
whose samples are not Gaussian: their quality is the exact model likelihood of held-out true
points through the probability-flow ODE (:mod:`dmat_core.diffusion.likelihood`).
"""
from __future__ import annotations

import hashlib
import math

import torch

from ..toys.gaussians import GaussianWorld, isotropic, lowrank

GENERATORS = ("none", "truth", "mle", "shrinkage", "more-labelled", "pseudo-label",
              "dm-standard", "dm-at", "dm-standard-noisy", "dm-at-noisy", "mlp-standard", "mlp-at")
DM_GENERATORS = {"dm-standard": ("clean", "standard"), "dm-at": ("clean", "adversarial"),
                 "dm-standard-noisy": ("noisy", "standard"), "dm-at-noisy": ("noisy", "adversarial")}
# the MLP DMs (d <= mlp_max_d): the loss of each, trained on the clean points
MLP_GENERATORS = {"mlp-standard": "standard", "mlp-at": "adversarial"}
NAMES = {"none": "real only", "truth": "true samples", "mle": "MLE Gaussian",
         "shrinkage": "Ledoit-Wolf Gaussian", "more-labelled": "4x labelled points (oracle)",
         "pseudo-label": "10x unlabelled, pseudo-labels", "dm-standard": "DM standard",
         "dm-at": "DM AT", "dm-standard-noisy": "DM standard, noisy data",
         "dm-at-noisy": "DM AT, noisy data", "mlp-standard": "MLP DM standard", "mlp-at": "MLP DM AT"}
# quality measures of a generator; `better` is the sign of a better generator. Closed form for the
# Gaussian generators and the affine DMs; for the MLP DMs KL(p‖q) and E_p log q are estimated from
# the exact model likelihood of held-out true points, the angle from their samples, and KL(q‖p) and
# W2 are not measured (None in the rows; a rank correlation of a measure runs over the generators
# that have it)
QUALITY = {"kl_pq": ("KL(p‖q)", -1), "kl_qp": ("KL(q‖p)", -1), "w2": ("W2", -1),
           "mean_angle_deg": ("mean direction error (deg)", -1),
           "loglik": ("held-out log-likelihood E_p log q", +1)}
COLOURS = {"none": "k", "truth": "tab:orange", "mle": "tab:brown", "shrinkage": "tab:olive",
           "more-labelled": "tab:pink", "pseudo-label": "tab:purple", "dm-standard": "tab:blue",
           "dm-at": "tab:red", "dm-standard-noisy": "tab:cyan", "dm-at-noisy": "tab:green",
           "mlp-standard": "tab:gray", "mlp-at": "gold"}
NORMS = ("linf", "l2")

DEFAULTS = dict(
    world="isotropic", norm="linf", eps=0.5, eps_scaling="none",
    dims=[2, 16, 64, 256], ns=[4, 16, 64, 256], generators=list(GENERATORS),
    # the classifier: PGD-AT of sign(w.x + b), inner max in closed form, 70% generated per batch
    clf_steps=300, clf_batch=256, clf_lr=0.05, unsup_fraction=0.7, n_gen=8192,
    # the oracles
    more_k=4, pool_k=10,
    # the corruption of the DMs' noisy training copy: a fraction p gets N(0, s^2 I), s in units of
    # the class's RMS standard deviation per coordinate
    noise_p=0.9, noise_s=1.0,
    # the affine DMs: knots of M(sigma) over [0.002, 80], Adam; lr = dm_lr * min(1, sqrt(16 / d)) and
    # dm_steps (dm_steps_high_d above dm_high_d, where only the first dm_seeds_high_d seeds get DMs:
    # their cost grows like d^2): Adam moves all d^2 entries of M at once, so high d needs a smaller
    # step; AT for DMs: the adversarial variant with the defaults of docs/science.md section 3
    dm_knots=8, dm_sigma_max=80.0, dm_batch=128, dm_lr=0.02, dm_ema=0.999, dm_warmup=20,
    dm_steps=150, dm_steps_high_d=100, dm_high_d=64, dm_seeds_high_d=20, sampler_steps=18, dm_lam=0.3,
    # the MLP DMs, one per class, where d <= mlp_max_d: ToyDenoiserMLP of mlp_width x mlp_depth
    # residual blocks, mlp_steps Adam steps (batch, EMA, warm-up and lambda of the affine DMs),
    # Heun samples from sampler_steps; quality: the PF-ODE log-likelihood (exact trace) of ll_n
    # held-out true points per class, against their exact log-density
    mlp_max_d=8, mlp_width=64, mlp_depth=2, mlp_steps=1500, mlp_lr=2e-3, ll_n=256,
)
SIZES = {"full": {}, "quick": dict(dims=[2, 8], ns=[4, 16], clf_steps=60, n_gen=256, dm_steps=30,
                                   dm_steps_high_d=30, mlp_steps=40, ll_n=32)}
PRESETS = {
    "isotropic-linf": dict(world="isotropic", norm="linf", eps=0.5, eps_scaling="none"),
    "lowrank-l2": dict(world="lowrank", norm="l2", eps=0.3, eps_scaling="sqrt-d"),
}
# settings no single cell depends on: a cell computed under other values of these is reused
# (a cell holds the generators it has, so the DMs' seeds above dm_high_d are not a setting of it)
NOT_IN_CELLS = ("dims", "ns", "generators", "preset", "size", "dm_seeds_high_d")


def _check_ints(name: str, values, low: int) -> list:
    vals = list(values)
    if not vals or any(isinstance(v, bool) or int(v) != v or v < low for v in vals):
        raise ValueError(f"{name} must be integers >= {low}, got {vals}")
    return sorted({int(v) for v in vals})


def study_config(preset: str | None = None, quick: bool = False, **overrides) -> dict:
    """DEFAULTS < size < preset < overrides (None values ignored), checked: ValueError with one
    line for d < 1, n < 2 (a class needs two points for a covariance), eps < 0, an unknown
    generator, norm or setting."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = {**DEFAULTS, **SIZES["quick" if quick else "full"], **PRESETS.get(preset or "isotropic-linf", {})}
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg.update(preset=preset or "isotropic-linf", size="quick" if quick else "full")
    cfg["dims"] = _check_ints("d", cfg["dims"], 1)
    cfg["ns"] = _check_ints("n (real points per class)", cfg["ns"], 2)
    if not (isinstance(cfg["eps"], (int, float)) and math.isfinite(cfg["eps"]) and cfg["eps"] >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {cfg['eps']}")
    if cfg["norm"] not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {cfg['norm']!r}")
    if cfg["world"] not in ("isotropic", "lowrank") or cfg["eps_scaling"] not in ("none", "sqrt-d"):
        raise ValueError(f"world must be isotropic or lowrank and eps_scaling none or sqrt-d, got "
                         f"{cfg['world']!r}, {cfg['eps_scaling']!r}")
    bad = [g for g in cfg["generators"] if g not in GENERATORS]
    if bad or not cfg["generators"]:
        raise ValueError(f"unknown generator(s) {bad}; choose from {list(GENERATORS)}")
    cfg["generators"] = [g for g in GENERATORS if g in cfg["generators"] or g == "none"]
    if not 0 < cfg["unsup_fraction"] < 1:
        raise ValueError(f"unsup_fraction must be in (0, 1), got {cfg['unsup_fraction']}")
    if not (0 <= cfg["noise_p"] <= 1 and cfg["noise_s"] >= 0):
        raise ValueError(f"need noise_p in [0, 1] and noise_s >= 0, got {cfg['noise_p']}, {cfg['noise_s']}")
    for k in ("clf_steps", "clf_batch", "n_gen", "more_k", "pool_k", "dm_knots", "dm_batch", "dm_steps",
              "dm_steps_high_d", "dm_seeds_high_d", "sampler_steps", "mlp_width", "mlp_depth", "mlp_steps", "ll_n"):
        low = 2 if k in ("dm_knots", "ll_n") else 1
        if isinstance(cfg[k], bool) or int(cfg[k]) != cfg[k] or cfg[k] < low:
            raise ValueError(f"{k} must be an integer >= {low}, got {cfg[k]}")
    if isinstance(cfg["mlp_max_d"], bool) or int(cfg["mlp_max_d"]) != cfg["mlp_max_d"] or cfg["mlp_max_d"] < 0:
        raise ValueError(f"mlp_max_d must be an integer >= 0 (0: no MLP DMs), got {cfg['mlp_max_d']}")
    return cfg


def stable_seed(*parts) -> int:
    """A stable seed from integers and names (the same on every machine and run)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:12], 16)


def stable_rng(*parts) -> torch.Generator:
    """A CPU generator seeded by :func:`stable_seed` of the parts."""
    return torch.Generator().manual_seed(stable_seed(*parts))


def world_of(cfg: dict, d: int) -> GaussianWorld:
    """The preset's world in dimension d."""
    if cfg["world"] == "isotropic":
        return isotropic(d)
    return lowrank(d, rank=min(8, max(1, d // 4)))


def eps_of(cfg: dict, d: int) -> float:
    """The threat radius in dimension d: eps, or eps sqrt(d) (`sqrt-d`: a fixed share of ||mu||)."""
    return float(cfg["eps"]) * (math.sqrt(d) if cfg["eps_scaling"] == "sqrt-d" else 1.0)


def dm_schedule(cfg: dict, d: int) -> tuple[int, float]:
    """(steps, learning rate) of the affine DMs in dimension d."""
    steps = cfg["dm_steps"] if d <= cfg["dm_high_d"] else cfg["dm_steps_high_d"]
    return int(steps), float(cfg["dm_lr"]) * min(1.0, math.sqrt(16.0 / d))


def cell_generators(cfg: dict, d: int, seed: int) -> list:
    """The generators of one (d, n, seed) cell: all, but no affine DMs above dm_high_d from seed
    dm_seeds_high_d on, and no MLP DMs above mlp_max_d."""
    skip_dm = d > cfg["dm_high_d"] and seed >= cfg["dm_seeds_high_d"]
    return [g for g in cfg["generators"] if not (skip_dm and g in DM_GENERATORS)
            and not (d > cfg["mlp_max_d"] and g in MLP_GENERATORS)]


def cell_key(cfg: dict) -> dict:
    """The settings one (d, n, seed) cell depends on."""
    return {k: v for k, v in cfg.items() if k not in NOT_IN_CELLS}
