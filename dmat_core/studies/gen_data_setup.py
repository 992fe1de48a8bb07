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
from typing import List, Literal

import torch
from pydantic import Field

from ..common.settings import Settings
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


class GenDataStudyConfig(Settings):
    """The schema of the study's configuration (the typed settings layer, :mod:`dmat_core.common.settings`):
    every key of DEFAULTS, SIZES and the presets, with its type and range."""

    world: Literal["isotropic", "lowrank"]
    norm: Literal[NORMS]                    # type: ignore[valid-type]
    eps: float = Field(ge=0.0)
    eps_scaling: Literal["none", "sqrt-d"]
    dims: List[int] = Field(min_length=1)   # d, each >= 1 (checked below with the name d)
    ns: List[int] = Field(min_length=1)     # real points per class, each >= 2
    generators: List[Literal[GENERATORS]] = Field(min_length=1)   # type: ignore[valid-type]
    clf_steps: int = Field(ge=1)
    clf_batch: int = Field(ge=1)
    clf_lr: float = Field(gt=0.0)
    unsup_fraction: float = Field(gt=0.0, lt=1.0)
    n_gen: int = Field(ge=1)
    more_k: int = Field(ge=1)
    pool_k: int = Field(ge=1)
    noise_p: float = Field(ge=0.0, le=1.0)
    noise_s: float = Field(ge=0.0)
    dm_knots: int = Field(ge=2)
    dm_sigma_max: float = Field(gt=0.0)
    dm_batch: int = Field(ge=1)
    dm_lr: float = Field(gt=0.0)
    dm_ema: float = Field(ge=0.0, lt=1.0)
    dm_warmup: int = Field(ge=0)
    dm_steps: int = Field(ge=1)
    dm_steps_high_d: int = Field(ge=1)
    dm_high_d: int = Field(ge=1)
    dm_seeds_high_d: int = Field(ge=1)
    sampler_steps: int = Field(ge=1)
    dm_lam: float = Field(ge=0.0)
    mlp_max_d: int = Field(ge=0)            # 0: no MLP DMs
    mlp_width: int = Field(ge=1)
    mlp_depth: int = Field(ge=1)
    mlp_steps: int = Field(ge=1)
    mlp_lr: float = Field(gt=0.0)
    ll_n: int = Field(ge=2)
    preset: Literal[tuple(PRESETS)]         # type: ignore[valid-type]
    size: Literal["full", "quick"]


def _check_ints(name: str, values, low: int) -> list:
    """The sorted distinct values of a list of integers >= low (the schema checked they are integers)."""
    vals = list(values)
    if any(v < low for v in vals):
        raise ValueError(f"{name} must be integers >= {low}, got {vals}")
    return sorted(set(vals))


def study_config(preset: str | None = None, quick: bool = False, **overrides) -> dict:
    """DEFAULTS < size < preset < overrides (None values left out: the flag was not given), checked
    against :class:`GenDataStudyConfig` (SettingsError, one line): d >= 1, n >= 2 (a class needs two
    points for a covariance), eps >= 0, known generators, norm and settings. A plain dict, with
    the dimensions and sizes sorted and the generators in their canonical order."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = {**DEFAULTS, **SIZES["quick" if quick else "full"], **PRESETS.get(preset or "isotropic-linf", {})}
    GenDataStudyConfig._known(overrides, "")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg.update(preset=preset or "isotropic-linf", size="quick" if quick else "full")
    GenDataStudyConfig.from_dict(cfg)       # checks only: the values stay as given
    cfg["dims"] = _check_ints("d", cfg["dims"], 1)
    cfg["ns"] = _check_ints("n (real points per class)", cfg["ns"], 2)
    cfg["generators"] = [g for g in GENERATORS if g in cfg["generators"] or g == "none"]
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
