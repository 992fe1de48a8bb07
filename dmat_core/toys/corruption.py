"""Corrupted training sets drawn from a known distribution (docs/science.md section 3, proof of concept).

The model is trained on the corrupted set and measured against the *clean* distribution, so
whatever the corruption leaves in the samples is measured exactly. Kinds:

  `clean`     n points of the distribution (with a small n: the memorization setting);
  `inlier`    a fraction p of the points gets Gaussian noise of std s (data units) in every
              coordinate, like the 90%-noisy images of the paper (p = 0.9, s in {0.1, 0.2});
  `outlier`   a fraction q is replaced by points far from the data: `uniform` in a wide box, or
              a spurious `cluster` (an isotropic Gaussian of std s_cluster away from the data);
  `offplane`  for data on a linear subspace (plane3d, subspace): a fraction p gets noise of std s
              in the directions orthogonal to the subspace only.

Each returns the set (n, d) float64 and a boolean mask (n,) of the corrupted points (the method
never sees it; the analysis may). Notebooks 03 and 04 use them.
"""
from __future__ import annotations

import math

import torch

from .mixtures import GaussianMixture

Tensor = torch.Tensor
KINDS = ("clean", "inlier", "outlier", "offplane")
OUTLIER_MODES = ("uniform", "cluster")


def _check_fraction(name: str, v: float) -> float:
    if not (0.0 <= float(v) <= 1.0):
        raise ValueError(f"{name} must be a fraction in [0, 1], got {v}")
    return float(v)


def data_extent(dist: GaussianMixture) -> float:
    """A radius holding the data: max_k ||mu_k|| + 3 sqrt(largest variance of any component)."""
    var = torch.cat([dist.lam.reshape(-1), dist.nu.reshape(-1)]).max()
    return float(dist.means.norm(dim=1).max() + 3 * var.sqrt())


def _pick(n: int, frac: float, generator) -> Tensor:
    """A mask of exactly round(frac * n) points chosen at random."""
    m = int(round(frac * n))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:m]] = True
    return mask


def corrupt(dist: GaussianMixture, n: int, kind: str = "clean", p: float = 0.9, s: float = 0.1,
            q: float = 0.1, outlier: str = "uniform", box_scale: float = 1.5,
            cluster_center: Tensor | None = None, s_cluster: float = 0.1,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A training set of n points of `dist` corrupted as `kind`, and the mask of corrupted points.

    Args:
        p: fraction of points with inlier / off-plane noise (0.9 in the paper).
        s: std of that noise, in data units (for ring8, whose modes have std 0.1, s = 0.2
           widens the corrupted modes to std 0.22).
        q: fraction of outliers (`outlier` kind).
        outlier: `uniform` in the box [-B, B]^d with B = box_scale * data_extent(dist), or a
            spurious `cluster` N(cluster_center, s_cluster^2 I); the default center is at
            distance box_scale * data_extent(dist) along (1, ..., 1)/sqrt(d).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {KINDS}")
    p, q = _check_fraction("p", p), _check_fraction("q", q)
    for name, v in (("s", s), ("s_cluster", s_cluster), ("box_scale", box_scale)):
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    if outlier not in OUTLIER_MODES:
        raise ValueError(f"unknown outlier model {outlier!r}; choose one of {OUTLIER_MODES}")
    x = dist.sample(n, generator)                                      # (n, d) float64
    d = dist.dim
    if kind == "clean":
        return x, torch.zeros(n, dtype=torch.bool)
    if kind == "inlier":
        mask = _pick(n, p, generator)
        x[mask] += s * torch.randn(int(mask.sum()), d, dtype=x.dtype, generator=generator)
        return x, mask
    if kind == "offplane":
        r = dist.U.shape[2]
        if r >= d or bool((dist.nu > 0).any()) or dist.n_components != 1:
            raise ValueError(f"off-plane noise needs data on one linear subspace (nu = 0, rank < d); "
                             f"{dist.name} is not")
        mask = _pick(n, p, generator)
        z = torch.randn(int(mask.sum()), d, dtype=x.dtype, generator=generator)
        U = dist.U[0]                                                  # (d, r)
        x[mask] += s * (z - (z @ U) @ U.T)                             # orthogonal part only
        return x, mask
    # outliers: replace a fraction q of the points
    mask = _pick(n, q, generator)
    m, extent = int(mask.sum()), box_scale * data_extent(dist)
    if outlier == "uniform":
        x[mask] = (2 * torch.rand(m, d, dtype=x.dtype, generator=generator) - 1) * extent
    else:
        c = (torch.full((d,), extent / math.sqrt(d), dtype=x.dtype) if cluster_center is None
             else torch.as_tensor(cluster_center, dtype=x.dtype).reshape(d))
        x[mask] = c + s_cluster * torch.randn(m, d, dtype=x.dtype, generator=generator)
    return x, mask


def corrupted_distribution(dist: GaussianMixture, kind: str = "clean", p: float = 0.9,
                           s: float = 0.1) -> GaussianMixture | None:
    """The distribution a corrupted training set of :func:`corrupt` is drawn from, where it is a
    Gaussian mixture itself (`clean`, `inlier`, `offplane`); None for outliers.

    Inlier noise turns each component N(mu, S) into (1-p) N(mu, S) + p N(mu, S + s^2 I), i.e.
    lam + s^2 and nu + s^2; off-plane noise adds s^2 to the orthogonal variance nu only. Its exact
    denoiser is what plain denoising-score training converges to: the *ideal standard model*,
    the reference against which the studies read how much of the corruption a model learned.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {KINDS}")
    p = _check_fraction("p", p)
    if kind == "clean" or p == 0:
        return dist
    if kind == "outlier":
        return None
    if kind == "offplane" and (dist.U.shape[2] >= dist.dim or bool((dist.nu > 0).any())):
        raise ValueError(f"off-plane noise needs data on a linear subspace; {dist.name} is not")
    s2 = float(s) ** 2
    lam = dist.lam + (s2 if kind == "inlier" else 0.0)
    two = lambda t: torch.cat([t, t])
    return GaussianMixture(torch.cat([(1 - p) * dist.weights, p * dist.weights]), two(dist.means),
                           two(dist.U), torch.cat([dist.lam, lam]), torch.cat([dist.nu, dist.nu + s2]),
                           two(dist.labels), f"{dist.name}+{kind}(p={p:g},s={s:g})")


__all__ = ["corrupt", "corrupted_distribution", "data_extent", "KINDS", "OUTLIER_MODES"]
