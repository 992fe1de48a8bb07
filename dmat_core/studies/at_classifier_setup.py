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

import torch

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
