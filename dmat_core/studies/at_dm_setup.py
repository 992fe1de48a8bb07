"""Settings and data of the AT-for-DMs study, below both the study and its report.

The sizes, defaults, presets, arms and baselines of `dmat toy at-dm-study`, the configuration they
merge into (:func:`study_config`), the (corrupted) training set of a configuration
(:func:`training_set`), the 2D view of samples every figure shows (:func:`project_2d`) and the
reading of results files written before an arm was renamed (:func:`migrate_results`).
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
    "full": dict(n_train=20_000, steps=3000, batch=256, n_eval=5000, jac_n=256, cost_steps=30, ll_n=1000,
                 tune_n=500),
    "quick": dict(n_train=2000, steps=150, batch=128, n_eval=600, jac_n=64, cost_steps=4, ll_n=64,
                  tune_n=64),
}
# ll_*: held-out likelihood, d <= 8 only. sampler_sigma_min: the last level of the sampler's grid
# (EDM's 0.002). shrink_sigmas: the grid baseline (a) tunes sigma_s on (0 = the standard sampler; up
# to 0.7, past the ~0.45 that would shrink ring8's 90%-noisy modes of std 0.22 back to 0.1);
# snapshot_fracs: where baseline (b) keeps checkpoints, as fractions of the run (the end is one
# too); tune_n: the validation points both are chosen on (never the test points).
DEFAULTS = dict(dist="ring8", dist_kw={}, corruption="clean", p=0.9, s=0.2, q=0.1,
                outlier="uniform", width=128, depth=3, lr=2e-3, ema=0.999, P_mean=-1.2,
                P_std=1.2, sampler_steps=18, attack_budgets=None, attack_step=12, attack_iter=10,
                attack_restarts=3, ll_probe=4, sampler_sigma_min=0.002,
                shrink_sigmas=[0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7],
                snapshot_fracs=[0.125, 0.25, 0.5, 0.75])
# Presets: the settings the issue asks for; each merges over DEFAULTS and a size.
PRESETS = {
    "clean-ring8": dict(dist="ring8", corruption="clean"),
    "inlier-ring8": dict(dist="ring8", corruption="inlier", p=0.9, s=0.2),
    "outliers-ring8": dict(dist="ring8", corruption="outlier", q=0.1, outlier="uniform"),
    "plane3d-offplane": dict(dist="plane3d", corruption="offplane", p=0.9, s=0.2),
    "subspace-inlier": dict(dist="subspace", dist_kw={"d": 256, "k": 8}, corruption="inlier",
                            p=0.9, s=0.1, width=512, depth=2, full=dict(n_eval=3000)),
    # memorization: 32 points copy early, so early stopping may also stop at 1.5% and 3% of the run
    # (on 5 of 10 seeds it chose the earliest of the default checkpoints, 12.5%)
    "memorization": dict(dist="ring8", corruption="clean", quick=dict(n_train=32),
                         full=dict(n_train=32, steps=4000, snapshot_fracs=[0.015, 0.03, 0.06, 0.125, 0.25, 0.5, 0.75])),
    "trajectory-attack": dict(dist="ring8", corruption="clean",
                              attack_budgets=[0.0, 0.25, 0.5, 1.0, 2.0]),
}
# Arms of the study: a label and the ATConfig fields it sets over the shared AT options.
#   standard, random, adversarial (the paper's FGSM on the prediction gap), invariance (the ablation);
#   fgsm-at-loss: this project's reading, not an arm of the paper: the FGSM step maximises the AT
#     loss itself, the residual ||eps(x + sigma w) - eps(x) - w||^2 it then minimises (Madry-style,
#     as classifier AT does); results files before the rename call it `adversarial-residual`;
#   adversarial-true-noise: the paper's FGSM, with the true noise eps + w as the equivariance
#     target instead of eps_th(x) + w (a denoising loss at the perturbed point; docs/science.md 3).
ARMS = {**{v: {"variant": v} for v in VARIANTS},
        "fgsm-at-loss": {"variant": "adversarial", "attack_target": "residual"},
        "adversarial-true-noise": {"variant": "adversarial", "target": "true-noise"}}
LEGACY_ARMS = {"adversarial-residual": "fgsm-at-loss"}
# Baselines: what a user of standard training could do instead of AT, each reported like an arm
# and paired with the arms by seed (same data, same latents, same held-out points).
BASELINES = {
    "tweedie-shrinkage": "(a) the standard model sampled with the PF-ODE stopped at sigma_s and "
                         "finished with D(x, sigma_s), sigma_s tuned on validation points",
    "early-stopping": "(b) the standard model's EMA checkpoint chosen on validation points",
    "ideal-standard": "(c) the exact denoiser of the corrupted training distribution (what "
                      "standard training converges to with unlimited data)",
}
STANDARD_GROUP = ("standard", "tweedie-shrinkage", "early-stopping")   # one trained model
DEFAULT_ARMS = ("standard", "random", "adversarial", "fgsm-at-loss", "adversarial-true-noise",
                "invariance", *BASELINES)


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
    sampler_sigma_min: float = Field(gt=0.0, lt=80.0)   # the sampler grid's last level
    shrink_sigmas: List[float]              # baseline (a): sigma_s tuned on these (0 among them)
    snapshot_fracs: List[float]             # baseline (b): checkpoints at these fractions of the run
    tune_n: int = Field(ge=2)               # validation points of both
    preset: Optional[Literal[tuple(PRESETS)]]   # type: ignore[valid-type]
    size: Literal["full", "quick"]

    @model_validator(mode="after")
    def _distribution_builds(self) -> "ATDMStudyConfig":
        if any(b < 0 for b in self.attack_budgets or []):
            raise ValueError(f"attack_budgets must be numbers >= 0, got {self.attack_budgets}")
        g = self.shrink_sigmas
        if 0.0 not in g or any(not (0 <= v < 80) for v in g) or len(set(g)) != len(g):
            raise ValueError(f"shrink_sigmas must be distinct numbers in [0, 80) and hold 0 (the standard "
                             f"sampler, so the tuned baseline can always fall back to it), got {g}")
        f = self.snapshot_fracs
        if not f or any(not (0 < v < 1) for v in f):
            raise ValueError(f"snapshot_fracs must be fractions in (0, 1) of the run, got {f}")
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
    target: Optional[Literal["prediction", "true-noise"]] = None
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
    cfg = {**copy.deepcopy(DEFAULTS), **SIZES[size]}
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


def snapshot_steps(cfg: dict) -> list:
    """The steps early stopping (baseline (b)) keeps checkpoints at: the fractions of the run, and
    its end, each step once."""
    return sorted({max(1, round(f * cfg["steps"])) for f in cfg["snapshot_fracs"]} | {cfg["steps"]})


def arm_name(label: str) -> str:
    """An arm's current name (a name from before a rename gives the new one)."""
    return LEGACY_ARMS.get(label, label)


def migrate_results(results: dict) -> dict:
    """A results dict of the study as this version writes it: arms renamed since it was written
    (`adversarial-residual` -> `fgsm-at-loss`) under their new names, and every AT setting added
    since at its default (what the older code did). Returns a new dict; the input is not changed."""
    from ..diffusion.losses import ATConfig
    r = copy.deepcopy(results)
    for part in ("summary", "at", "cost"):
        if isinstance(r.get(part), dict):
            r[part] = {arm_name(k): v for k, v in r[part].items()}
    for k, v in (r.get("at") or {}).items():
        r["at"][k] = {**ATConfig().as_dict(), **v}
    for run in r.get("runs", []):
        run["variant"] = arm_name(run["variant"])
        if isinstance(run.get("at"), dict):
            run["at"] = {**ATConfig().as_dict(), **run["at"]}
    return r


def project_2d(x: torch.Tensor, dist):
    """A 2D view of samples for plots: the data itself in 2D, else (first coordinate on the
    data's subspace, distance to it). float32 numpy (n, 2)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if dist.dim > 2:
        v = x - dist.means[0]
        c = v @ dist.U[0]                                                  # (n, k)
        x = torch.stack([c[:, 0], (v - c @ dist.U[0].T).norm(dim=1)], 1)
    return x.float().numpy()
