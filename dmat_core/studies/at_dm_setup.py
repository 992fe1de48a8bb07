"""Settings and data of the AT-for-DMs study, below both the study and its report.

The sizes, defaults, presets and arms of `dmat toy at-dm-study`, the configuration they merge
into (:func:`study_config`), the (corrupted) training set of a configuration
(:func:`training_set`) and the 2D view of samples every figure shows (:func:`project_2d`).
:mod:`~dmat_core.studies.at_dm_study` trains and measures with them;
:mod:`~dmat_core.studies.at_dm_report` draws and tabulates with them. Neither imports the
other's way round: the study imports the report, the report only this module.
"""
from __future__ import annotations

import copy
import functools
from typing import Any, Dict, List, Literal, Optional

import torch
from pydantic import Field, model_validator

from ..common.settings import Settings
from ..diffusion.losses import VARIANTS
from ..toys.corruption import corrupt
from ..toys.mixtures import PRESETS as DISTRIBUTIONS
from ..toys.mixtures import make_distribution

# Sizes: `full` is what results/at_dm holds; `quick` is for tests and notebooks (seconds).
SIZES = {
    "full": dict(n_train=20_000, steps=3000, batch=256, n_eval=5000, jac_n=256, cost_steps=30, ll_n=1000),
    "quick": dict(n_train=2000, steps=150, batch=128, n_eval=600, jac_n=64, cost_steps=4, ll_n=64),
}
DEFAULTS = dict(dist="ring8", dist_kw={}, corruption="clean", p=0.9, s=0.2, q=0.1,
                outlier="uniform", width=128, depth=3, lr=2e-3, ema=0.999, P_mean=-1.2,
                P_std=1.2, sampler_steps=18, attack_budgets=None, attack_step=12, attack_iter=10,
                attack_restarts=3, ll_probe=4)   # ll_*: held-out likelihood, d <= 8 only
# Presets: the settings the issue asks for; each merges over DEFAULTS and a size.
PRESETS = {
    "clean-ring8": dict(dist="ring8", corruption="clean"),
    "inlier-ring8": dict(dist="ring8", corruption="inlier", p=0.9, s=0.2),
    "outliers-ring8": dict(dist="ring8", corruption="outlier", q=0.1, outlier="uniform"),
    "plane3d-offplane": dict(dist="plane3d", corruption="offplane", p=0.9, s=0.2),
    "subspace-inlier": dict(dist="subspace", dist_kw={"d": 256, "k": 8}, corruption="inlier",
                            p=0.9, s=0.1, width=512, depth=2, full=dict(n_eval=3000)),
    "memorization": dict(dist="ring8", corruption="clean", full=dict(n_train=32, steps=4000),
                         quick=dict(n_train=32)),
    "trajectory-attack": dict(dist="ring8", corruption="clean",
                              attack_budgets=[0.0, 0.25, 0.5, 1.0, 2.0]),
}
# Arms of the study: a label and the ATConfig fields it sets over the shared AT options.
# `adversarial-residual` runs the FGSM step on the AT residual (the loss it then minimises, as
# classifier AT does) instead of the paper's prediction gap; see results/at_dm/NOTES.md.
ARMS = {**{v: {"variant": v} for v in VARIANTS},
        "adversarial-residual": {"variant": "adversarial", "attack_target": "residual"}}
DEFAULT_ARMS = ("standard", "random", "adversarial", "adversarial-residual", "invariance")


class ATDMStudyConfig(Settings):
    """The schema of a study's configuration (the typed settings layer, :mod:`dmat_core.common.settings`):
    every key of DEFAULTS, SIZES and the preset, with its type and range."""

    dist: Literal[tuple(DISTRIBUTIONS)]     # type: ignore[valid-type]
    dist_kw: Dict[str, Any]
    corruption: Literal["clean", "inlier", "outlier", "offplane"]
    p: float = Field(ge=0.0, le=1.0)        # fraction with inlier / off-plane noise
    s: float = Field(ge=0.0)                # std of that noise, data units
    q: float = Field(ge=0.0, le=1.0)        # fraction of outliers
    outlier: Literal["uniform", "cluster"]
    width: int = Field(ge=1)
    depth: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    ema: float = Field(ge=0.0, lt=1.0)
    P_mean: float
    P_std: float = Field(ge=0.0)
    sampler_steps: int = Field(ge=1)
    attack_budgets: Optional[List[float]]   # trajectory attack budgets (None: no attack)
    attack_step: float = Field(gt=0.0)
    attack_iter: int = Field(ge=1)
    attack_restarts: int = Field(ge=1)
    ll_probe: int = Field(ge=1)
    n_train: int = Field(ge=2)
    steps: int = Field(ge=1)
    batch: int = Field(ge=1)
    n_eval: int = Field(ge=2)
    jac_n: int = Field(ge=1)
    cost_steps: int = Field(ge=1)
    ll_n: int = Field(ge=1)
    preset: Optional[Literal[tuple(PRESETS)]]   # type: ignore[valid-type]
    size: Literal["full", "quick"]

    @model_validator(mode="after")
    def _distribution_builds(self) -> "ATDMStudyConfig":
        if any(b < 0 for b in self.attack_budgets or []):
            raise ValueError(f"attack_budgets must be numbers >= 0, got {self.attack_budgets}")
        try:
            make_distribution(self.dist, **self.dist_kw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"dist_kw={self.dist_kw} do not fit dist={self.dist!r}: {e}") from None
        return self


class ATOptions(Settings):
    """The AT options shared by every arm (``--lam``, ``--r-max``, ...): the fields of
    :class:`~dmat_core.diffusion.losses.ATConfig` but the variant, typed; what is not given keeps
    ATConfig's default (docs/science.md section 3)."""

    lam: Optional[float] = Field(None, ge=0.0)
    r_max: Optional[float] = Field(None, gt=0.0)
    exponent: Optional[float] = Field(None, ge=0.0)
    r_min: Optional[float] = Field(None, ge=0.0)
    min_units: Optional[Literal["data", "noise"]] = None
    fgsm_step: Optional[float] = Field(None, ge=0.0)
    attack_target: Optional[Literal["gap", "residual"]] = None
    detach_clean: Optional[bool] = None
    weighting: Optional[Literal["edm", "eps"]] = None

    def given(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if v is not None}


def study_config(preset: str | None = None, quick: bool = False, **overrides) -> dict:
    """The full configuration of a study: DEFAULTS < size < preset < preset's size < overrides
    (an override of None is left out: the flag was not given), checked against
    :class:`ATDMStudyConfig` (SettingsError, one line). Returns it as a plain dict."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    size = "quick" if quick else "full"
    cfg = {**DEFAULTS, **SIZES[size]}
    pre = copy.deepcopy(PRESETS.get(preset, {}))
    sized = {k: pre.pop(k, {}) for k in ("full", "quick")}
    cfg.update(pre, **sized[size])
    ATDMStudyConfig._known(overrides, "")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg.update(preset=preset, size=size)
    ATDMStudyConfig.from_dict(cfg)          # checks only: the values stay as given (results files compare them)
    return cfg


def training_set(cfg: dict, seed: int):
    """The clean distribution, the (corrupted) training set drawn from it ((n_train, d)) and
    the mask of corrupted points ((n_train,)), for one seed of a configuration."""
    dist = make_distribution(cfg["dist"], **cfg["dist_kw"])
    if dist.full_rank:      # the Monte-Carlo entropy is the same for every model: compute it once
        dist.entropy = functools.lru_cache(maxsize=None)(dist.entropy)
    g = torch.Generator().manual_seed(1000 + seed)
    x, mask = corrupt(dist, cfg["n_train"], cfg["corruption"], p=cfg["p"], s=cfg["s"], q=cfg["q"],
                      outlier=cfg["outlier"], generator=g)
    return dist, x, mask


def project_2d(x: torch.Tensor, dist):
    """A 2D view of samples for plots: the data itself in 2D, else (first coordinate on the
    data's subspace, distance to it). float32 numpy (n, 2)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if dist.dim > 2:
        v = x - dist.means[0]
        c = v @ dist.U[0]                                                  # (n, k)
        x = torch.stack([c[:, 0], (v - c @ dist.U[0].T).norm(dim=1)], 1)
    return x.float().numpy()
