"""Flow measures that need the known distribution: the denoiser's Jacobian on noised samples of
it, and memorization against fresh true samples.

  :func:`jacobian_frobenius`  ||dD/dx||_F per sigma on x = x0 + sigma n, x0 ~ p, beside the exact
                              denoiser's (:func:`~dmat_core.diffusion.flow.jacobian_sq_norm`);
  :func:`memorization_rate`   the share of samples within a radius of a training point, beside the
                              same share for fresh true samples (Briglia et al., memorization);
  :func:`likelihood_gap`      the model's exact log-likelihood (PF-ODE) of held-out true points,
                              a proper score that collapse loses, beside that of its training
                              points: the gap measures memorization without being fooled by collapse;
  :func:`mean_log_likelihood`  the mean of either likelihood (PF-ODE, or of the Tweedie-shrinkage
                              sampler) over given points, and :func:`validation_points`, a draw of
                              their own for tuning a knob.

Notebook 04 plots them; :mod:`dmat_core.studies.at_dm_study` reports them for every arm.
"""
from __future__ import annotations

import math

import torch

from ..diffusion.flow import jacobian_sq_norm
from ..diffusion.likelihood import log_likelihood
from ..diffusion.shrinkage import shrinkage_log_likelihood
from .mixtures import GaussianMixture

Tensor = torch.Tensor


def jacobian_frobenius(D, dist: GaussianMixture, sigmas, n: int = 512, method: str = "auto",
                       n_probe: int = 8, seed: int = 0, dtype=torch.float32) -> list[dict]:
    """||dD(x, sigma)/dx||_F on x = x0 + sigma n, x0 ~ dist, per sigma, beside the exact denoiser's.

    method: `exact`, `hutchinson`, or `auto` (exact for d <= 16). Returns rows with `sigma`,
    `jac_fro` (RMS over points of ||J||_F), `jac_fro_exact` (the same for dist.denoiser, always
    computed exactly where d <= 16, else by Hutchinson) and `per_dim` (jac_fro / sqrt(d): 1 for
    the identity, 0 for a constant).
    """
    if method not in ("auto", "exact", "hutchinson"):
        raise ValueError(f"method must be 'auto', 'exact' or 'hutchinson', got {method!r}")
    d = dist.dim
    method = ("exact" if d <= 16 else "hutchinson") if method == "auto" else method
    g = torch.Generator().manual_seed(seed)
    rows = []
    for s in sigmas:
        s = float(s)
        if s <= 0:
            raise ValueError(f"Jacobian needs sigma > 0, got {s}")
        x0 = dist.sample(n, g)
        x = x0 + s * torch.randn(x0.shape, dtype=x0.dtype, generator=g)
        jm = jacobian_sq_norm(D, x.to(dtype), s, method, n_probe, g)
        je = jacobian_sq_norm(dist.denoiser, x, s, method, n_probe, g)
        rows.append({"sigma": s, "jac_fro": float(jm.mean().sqrt()),
                     "jac_fro_exact": float(je.mean().sqrt()),
                     "per_dim": float(jm.mean().sqrt() / math.sqrt(d))})
    return rows


# ----------------------------------------------------------------------- memorization
def _nearest(a: Tensor, b: Tensor, chunk: int = 512) -> Tensor:
    """Distance from each row of a to its nearest row of b, in chunks (bounded memory)."""
    return torch.cat([torch.cdist(a[i:i + chunk], b).min(1).values for i in range(0, len(a), chunk)])


def memorization_rate(samples: Tensor, train: Tensor, dist: GaussianMixture | None = None,
                      radius: float | None = None, seed: int = 0, spread: float | None = None) -> dict:
    """Share of samples closer than `radius` to some training point (Euclidean), beside the same
    share for as many fresh true samples of `dist` (what an honest generator scores).

    Default radius: a third of the median distance from fresh true samples to their nearest
    training point (needs `dist`). Returns `mem_rate`, `mem_rate_fresh`, `radius`, and
    `nn_ratio` (median over samples of nearest-training distance over that of fresh samples; far
    below 1 means copies).

    Both fall for a model that only narrows its modes, without copying anything. `spread` (the
    samples' spread ratio, :func:`~dmat_core.toys.metrics.mode_stats`; needs a mixture of full-rank
    components) adds the same two numbers at matched spread: the fresh samples pulled towards their
    own component's mean to that spread, `x -> m_k + spread (x - m_k)`, score `mem_rate_matched_fresh`,
    and `nn_ratio_matched` divides by their median distance instead (1: as far from the training
    points as an honest generator of the same spread; far below 1: copies).
    """
    samples = torch.as_tensor(samples).to(torch.float64)
    train = torch.as_tensor(train).to(torch.float64)
    nn_s = _nearest(samples, train)                                        # (n,)
    out = {}
    if dist is not None:
        fresh = dist.sample(samples.shape[0], torch.Generator().manual_seed(30_000 + seed))
        nn_f = _nearest(fresh, train)
        radius = float(nn_f.median() / 3) if radius is None else float(radius)
        out["mem_rate_fresh"] = float((nn_f < radius).double().mean())
        out["nn_ratio"] = float(nn_s.median() / nn_f.median())
        if spread is not None:
            if not (dist.full_rank and math.isfinite(spread) and spread > 0):
                raise ValueError(f"matched spread needs a mixture of full-rank components and a spread "
                                 f"> 0, got {dist.name} and {spread}")
            g = torch.Generator().manual_seed(30_000 + seed)     # the same fresh points, with their modes
            fresh, comp = dist.sample(samples.shape[0], g, return_components=True)
            centre = dist.means[comp].to(torch.float64)
            nn_m = _nearest(centre + spread * (fresh.to(torch.float64) - centre), train)
            out["nn_ratio_matched"] = float(nn_s.median() / nn_m.median())
            out["mem_rate_matched_fresh"] = float((nn_m < radius).double().mean())
    elif radius is None:
        raise ValueError("give a radius, or the distribution to derive one")
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    out.update(mem_rate=float((nn_s < radius).double().mean()), radius=radius)
    return out


def mean_log_likelihood(D, points: Tensor, sigma_min: float = 0.002, shrink_sigma: float = 0.0,
                        method: str = "auto", n_probe: int = 8, seed: int = 0) -> dict:
    """The mean exact log-likelihood a model gives `points` (n, d), with its standard error over points.

    `shrink_sigma` = 0: the density of the model's PF-ODE at `sigma_min`
    (:func:`~dmat_core.diffusion.likelihood.log_likelihood`). `shrink_sigma` > 0: the density of what
    the Tweedie-shrinkage sampler stopped there returns (:mod:`~dmat_core.diffusion.shrinkage`: the
    ODE to shrink_sigma and the change of variables of D(., shrink_sigma)); a point whose preimage
    is not found makes the mean NaN (`failed` counts them). Probes (d > 8) are drawn from a
    generator seeded 50 000 + `seed`. Returns {"mean", "se", "failed", "values"}.
    """
    g = torch.Generator().manual_seed(50_000 + seed)
    if shrink_sigma > 0:
        ll = shrinkage_log_likelihood(D, points, shrink_sigma, method=method, n_probe=n_probe,
                                      generator=g)["log_likelihood"]
    else:
        ll = log_likelihood(D, points, sigma_min=sigma_min, method=method, n_probe=n_probe,
                            generator=g)["log_likelihood"]
    se = float(ll.std() / math.sqrt(len(ll))) if len(ll) > 1 else math.nan
    return {"mean": float(ll.mean()), "se": se, "failed": int(ll.isnan().sum()), "values": ll}


def validation_points(dist: GaussianMixture, n: int, seed: int = 0) -> Tensor:
    """`n` fresh points of `dist` for choosing a knob (a generator seeded 60 000 + `seed`): a draw
    of their own, never the held-out points :func:`likelihood_gap` scores (seeded 40 000 + seed)."""
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n}")
    return dist.sample(int(n), torch.Generator().manual_seed(60_000 + seed))


def heldout_points(dist: GaussianMixture, n: int, seed: int = 0) -> Tensor:
    """The `n` held-out points of `dist` that :func:`likelihood_gap` scores a model on (a generator
    seeded 40 000 + `seed`): the same for every model of a seed, so their log-likelihoods pair."""
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n}")
    return dist.sample(int(n), torch.Generator().manual_seed(40_000 + seed))


def likelihood_gap(D, dist: GaussianMixture, train: Tensor, n: int = 1000, seed: int = 0,
                   sigma_min: float = 0.002, method: str = "auto", n_probe: int = 8,
                   shrink_sigma: float = 0.0) -> dict:
    """The mean exact log-likelihood (:func:`mean_log_likelihood`, density at `sigma_min`, or of the
    Tweedie-shrinkage sampler stopped at `shrink_sigma` > 0) the model gives `n` fresh points of
    `dist` and up to `n` of its training points.

    `heldout_ll` is E_p[log q] = -KL(p || q) - H(p) estimated on held-out points: a proper score, so a
    model that shrinks its modes or copies its training set scores lower than the truth
    (`heldout_ll_exact`, the same points under `dist` at `sigma_min`). `ll_gap` = `train_ll` -
    `heldout_ll`: about 0 for a model that generalises, large for one that memorised its training
    points; `ll_gap_exact`, the same gap under `dist`, is its right value (only sampling noise, and the
    corruption's effect on the training points). Each mean has its standard error over points (`*_se`; with Hutchinson's estimate in
    d > 8 it includes the probes' noise); with `shrink_sigma` > 0, `*_failed` counts the points
    whose preimage was not found (the mean is then NaN).
    """
    fresh = heldout_points(dist, n, seed)
    train = torch.as_tensor(train)[: int(n)]
    out = {}
    for name, pts in (("heldout_ll", fresh), ("train_ll", train)):
        r = mean_log_likelihood(D, pts, sigma_min, shrink_sigma, method, n_probe, seed)
        out[name], out[f"{name}_se"] = r["mean"], r["se"]
        if shrink_sigma > 0:
            out[f"{name}_failed"] = r["failed"]
    out["heldout_ll_exact"] = float(dist.log_prob(fresh.double(), sigma_min).mean())
    out["ll_gap"] = out["train_ll"] - out["heldout_ll"]
    out["ll_gap_exact"] = float(dist.log_prob(train.double(), sigma_min).mean()) - out["heldout_ll_exact"]
    return out


__all__ = ["jacobian_frobenius", "memorization_rate", "likelihood_gap", "mean_log_likelihood",
           "validation_points", "heldout_points"]
