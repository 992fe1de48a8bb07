"""The data sources and the distribution of the generated-data-for-AT study, below both the
study and its report.

The four sources of extra training data (:data:`VARIANTS`, with the names the tables give
them), one colour per class, and the known class densities: K classes interleaved on a ring of
Gaussians (:func:`ring_classes`), the density of one class (:func:`class_mixture`) and the
distribution of a configuration (:func:`make_dist`).
:mod:`~dmat_core.studies.at_classifier_study` trains and measures with them;
:mod:`~dmat_core.studies.at_classifier_report` tabulates and draws with them. The study
imports the report, the report only this module.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from ..common.settings import Settings
from ..toys.mixtures import GaussianMixture

VARIANTS = ("none", "weak-dm", "good-dm", "true")
VARIANT_NAMES = {"none": "(a) real only", "weak-dm": "(b) + weak DM", "good-dm": "(c) + good DM",
                 "true": "(d) + true samples"}
COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown")


def ring_classes(modes: int = 8, classes: int = 2, radius: float = 2.0, std: float = 0.3) -> GaussianMixture:
    """`modes` equal isotropic Gaussians evenly on a circle, labels 0, 1, ..., K-1, 0, 1, ...:
    K classes, each a known mixture of modes/K Gaussians (ring8 with alternating labels for K=2)."""
    if not 2 <= classes <= len(COLOURS):
        raise ValueError(f"classes must be in [2, {len(COLOURS)}], got {classes}")
    if modes < classes or modes % classes:
        raise ValueError(f"modes must be a multiple of classes={classes}, got {modes}")
    a = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    name = f"ring{modes}-alt" if classes == 2 else f"ring{modes}-{classes}class"
    return GaussianMixture.isotropic(radius * torch.stack([a.cos(), a.sin()], 1), std,
                                     labels=torch.arange(modes) % classes, name=name)


def two_class_ring(modes: int = 8, radius: float = 2.0, std: float = 0.3) -> GaussianMixture:
    """:func:`ring_classes` with two classes (ring8 with alternating labels)."""
    return ring_classes(modes, 2, radius, std)


def class_mixture(dist: GaussianMixture, c: int) -> GaussianMixture:
    """The class-conditional density p(x | y = c) as a mixture of its own components."""
    k = dist.labels == c
    return GaussianMixture(dist.weights[k], dist.means[k], dist.U[k], dist.lam[k], dist.nu[k],
                           torch.zeros(int(k.sum()), dtype=torch.long), f"{dist.name}|{c}")


def make_dist(cfg: dict) -> GaussianMixture:
    """The study's distribution: `ring-alt` (`ring8-alt` is its two-class name) with `modes`
    modes and `classes` classes (results written before `classes` existed: 2)."""
    if cfg["dist"] not in ("ring8-alt", "ring-alt"):
        raise ValueError(f"unknown distribution {cfg['dist']!r}; choose 'ring-alt' (or 'ring8-alt')")
    return ring_classes(cfg["modes"], cfg.get("classes", 2), cfg["radius"], cfg["std"])


class ATClassifierStudyConfig(Settings):
    """The schema of the study's configuration (the typed settings layer, :mod:`dmat_core.common.settings`):
    every key of its DEFAULTS, SIZES and presets, with its type and range."""

    dist: Literal["ring8-alt", "ring-alt"]
    modes: int = Field(ge=2)
    classes: int = Field(ge=2, le=len(COLOURS))
    radius: float = Field(gt=0.0)
    std: float = Field(gt=0.0)
    eps: float = Field(ge=0.0)              # threat radius
    norm: Literal["l2", "linf"]
    n_real: int = Field(ge=2)               # real points per class
    dm_batch: int = Field(ge=1)
    dm_lr: float = Field(gt=0.0)
    dm_width: int = Field(ge=1)
    dm_depth: int = Field(ge=1)
    sampler_steps: int = Field(ge=1)
    clf_width: int = Field(ge=1)
    clf_depth: int = Field(ge=1)
    batch: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    loss: Literal["trades", "pgd"]
    beta: float = Field(ge=0.0)
    label_smoothing: float = Field(ge=0.0, le=1.0)
    attack_steps: int = Field(ge=1)
    unsup_fraction: float = Field(ge=0.0, lt=1.0)
    n_gen: int = Field(ge=1)                # extra points per class
    dm_steps: int = Field(ge=2)
    dm_weak_steps: int = Field(ge=1)
    clf_steps: int = Field(ge=1)
    n_test: int = Field(ge=1)
    resolution: int = Field(ge=2)
    h: float = Field(gt=0.0)
    h_multiclass: float = Field(gt=0.0)
    refine: int = Field(ge=0)
    pgd_steps: int = Field(ge=1)
    pgd_restarts: int = Field(ge=1)
    preset: str
    size: Literal["full", "quick"]

    @model_validator(mode="after")
    def _settings_agree(self) -> "ATClassifierStudyConfig":
        if not self.dm_weak_steps < self.dm_steps:
            raise ValueError(f"need 0 < dm_weak_steps < dm_steps, got {self.dm_weak_steps}, {self.dm_steps}")
        make_dist(self.model_dump())                      # modes a multiple of classes
        return self
