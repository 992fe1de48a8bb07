"""Exact metrics: a set of samples, or a denoiser, measured against a known distribution.

Every distance comes with its reference: the NLL beside the true entropy, the sliced W2
beside its noise floor (the same statistic between two independent true sample sets of the
same size), so "how far from the truth" reads against "how far two honest draws are".
"""
from __future__ import annotations

import math

import torch

from .mixtures import GaussianMixture

Tensor = torch.Tensor


def _as2d(x: Tensor, d: int | None = None) -> Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        raise ValueError(f"samples must be (n, {d or 'd'}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"samples contain {int((~torch.isfinite(x)).any(1).sum())} non-finite rows")
    return x.to(torch.float64)


def nll(dist: GaussianMixture, x: Tensor) -> float:
    """Mean negative log-likelihood -E log p(x) of samples under the true density (nats)."""
    return float(-dist.log_prob(_as2d(x, dist.dim)).mean())


def _quantiles(p: Tensor, n: int) -> Tensor:
    """Projections (P, m), sorted along each row and resampled to n quantiles."""
    p = p.sort(-1).values
    m = p.shape[1]
    if m == n:
        return p
    q = (torch.arange(n, dtype=torch.float64, device=p.device) + 0.5) / n * m - 0.5
    lo = q.floor().clamp(0, m - 1).long()
    hi = (lo + 1).clamp(max=m - 1)
    w = (q - lo).clamp(0, 1)
    return p[:, lo] * (1 - w) + p[:, hi] * w


def sliced_w2(x: Tensor, y: Tensor | list[Tensor], n_proj: int = 256, seed: int = 0):
    """Sliced Wasserstein-2: sqrt of the mean over random unit directions of W2^2 of the 1-D
    projections (sorted-sample coupling; quantile-matched for sets of different sizes).
    Deterministic given `seed`. With a list of sets `y`, a list of distances (x is projected
    and sorted once)."""
    many = isinstance(y, (list, tuple))
    x, ys = _as2d(x), [_as2d(v) for v in (y if many else [y])]
    if any(v.shape[1] != x.shape[1] for v in ys):
        raise ValueError(f"dimension mismatch: {x.shape[1]} vs {[v.shape[1] for v in ys]}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n_proj, x.shape[1], dtype=torch.float64, generator=g).to(x.device)
    theta = theta / theta.norm(dim=1, keepdim=True)                 # (P, d) unit directions
    n = max([x.shape[0]] + [v.shape[0] for v in ys])
    px = _quantiles(theta @ x.T, n)                                  # (P, n)
    out = [float(((px - _quantiles(theta @ v.T, n)) ** 2).mean().sqrt()) for v in ys]
    return out if many else out[0]


def sw2_noise_floor(dist: GaussianMixture, n: int, repeats: int = 5, n_proj: int = 256,
                    seed: int = 0) -> tuple[float, float]:
    """Mean and std of sliced W2 between two independent true sample sets of size n
    (cached on the distribution: every row of a table shares it)."""
    key = ("sw2_floor", n, repeats, n_proj, seed)
    if key in dist._cache:
        return dist._cache[key]
    g = torch.Generator().manual_seed(10_000 + seed)
    vals = [sliced_w2(dist.sample(n, g), dist.sample(n, g), n_proj, seed + r) for r in range(repeats)]
    v = torch.tensor(vals)
    dist._cache[key] = (float(v.mean()), float(v.std()) if repeats > 1 else 0.0)
    return dist._cache[key]


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float | None = None, max_points: int = 4000,
            seed: int = 0) -> float:
    """Unbiased MMD^2 with an RBF kernel exp(-|a-b|^2 / (2 h^2)); h = median pairwise distance
    of the pooled sample when not given. At most `max_points` of each set are used."""
    x, y = _as2d(x), _as2d(y)
    g = torch.Generator().manual_seed(seed)
    if x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=g)[:max_points]]
    if y.shape[0] > max_points:
        y = y[torch.randperm(y.shape[0], generator=g)[:max_points]]
    if bandwidth is None:
        z = torch.cat([x, y])[:2000]
        d = torch.cdist(z, z)
        bandwidth = float(d[d > 0].median())
    k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * bandwidth ** 2))
    m, n = x.shape[0], y.shape[0]
    kxx, kyy = k(x, x), k(y, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1)) - 2 * k(x, y).mean())


def nearest_mode(dist: GaussianMixture, x: Tensor) -> tuple[Tensor, Tensor]:
    """(distance, index) of each sample's nearest component of a mixture of full-rank components,
    by Mahalanobis distance in that component's standard deviations."""
    if not dist.full_rank:
        raise ValueError(f"{dist.name}: mode statistics need full-rank components")
    x = _as2d(x, dist.dim)
    prec = torch.linalg.inv(dist.covariances())                   # (K, d, d)
    v = x[:, None, :] - dist.means[None]                          # (n, K, d)
    return torch.einsum("nkd,kde,nke->nk", v, prec, v).sqrt().min(1)


def mode_switches(dist: GaussianMixture, x: Tensor, y: Tensor) -> float:
    """Share of paired samples (row i of `x` and of `y`, e.g. one latent sampled without and with
    an attack) whose nearest component differs: how often a perturbation changes *which* mode a
    sample lands in, a count that shrinking every mode to its centre does not lower by itself."""
    x, y = _as2d(x, dist.dim), _as2d(y, dist.dim)
    if x.shape != y.shape:
        raise ValueError(f"mode_switches pairs rows: got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    return float((nearest_mode(dist, x)[1] != nearest_mode(dist, y)[1]).double().mean())


def mode_stats(dist: GaussianMixture, x: Tensor, n_std: float = 3.0, min_share: float = 0.1) -> dict:
    """Mode-level summary of samples from a mixture of full-rank components.

    A sample belongs to the component of smallest Mahalanobis distance if that distance is
    below `n_std` (in that component's standard deviations); otherwise it is off-mode.
    Returns: `off_mode_mass` (share of samples outside every mode), `modes_covered` (modes
    holding at least `min_share` of their expected count), `mode_weights` (share of in-mode
    samples per mode) with `weight_error` (max |share - w_k|), and `spread_ratio` (per-mode
    RMS distance to the mean over its true value, mean over covered modes; 1 is right).
    """
    x = _as2d(x, dist.dim)
    covs = dist.covariances()                                     # (K, d, d)
    dmin, k = nearest_mode(dist, x)
    inside = dmin < n_std
    counts = torch.bincount(k[inside], minlength=dist.n_components).to(torch.float64)
    share = counts / counts.sum().clamp_min(1)
    expected = dist.weights * x.shape[0]
    covered = counts >= min_share * expected
    ratios = []
    for j in torch.nonzero(covered).flatten().tolist():
        xs = x[inside & (k == j)]
        rms = ((xs - dist.means[j]) ** 2).sum(1).mean().sqrt()
        true_rms = covs[j].trace().sqrt()
        # the true RMS inside the n_std Mahalanobis ball is a little smaller: correct by MC
        ratios.append(float(rms / (true_rms * _truncation_factor(dist.dim, n_std))))
    return {"off_mode_mass": float(1 - inside.double().mean()),
            "modes_covered": int(covered.sum()), "n_modes": dist.n_components,
            "mode_weights": share.tolist(),
            "weight_error": float((share - dist.weights).abs().max()),
            "spread_ratio": float(sum(ratios) / len(ratios)) if ratios else float("nan")}


def _truncation_factor(d: int, n_std: float) -> float:
    """sqrt(E[|z|^2 | |z| < n_std] / d) for z ~ N(0, I_d): RMS shrink of a truncated Gaussian."""
    # E[chi2_d | chi2_d < c] / d = P(chi2_{d+2} < c) / P(chi2_d < c)
    c = n_std ** 2
    return math.sqrt(_chi2_cdf(d + 2, c) / _chi2_cdf(d, c))


def _chi2_cdf(k: int, c: float) -> float:
    return float(torch.special.gammainc(torch.tensor(k / 2, dtype=torch.float64),
                                        torch.tensor(c / 2, dtype=torch.float64)))


def manifold_residual(dist: GaussianMixture, x: Tensor) -> dict:
    """Distance of samples to the data manifold of a distribution living on affine subspaces
    (nu = 0, rank < d): per sample min_k ||(I - U_k U_k^T)(x - mu_k)||. Returns its RMS, its
    RMS per orthogonal dimension, and the share of samples whose distance per orthogonal dimension
    exceeds 0.1 (||res|| > 0.1 sqrt(d - r): in R^3 around a plane, farther than 0.1)."""
    r = dist.U.shape[2]
    if r >= dist.dim or bool((dist.nu > 0).any()):
        raise ValueError(f"{dist.name} is full-rank: it has no lower-dimensional manifold")
    x = _as2d(x, dist.dim)
    v = x[:, None, :] - dist.means[None]
    p = torch.einsum("kdr,nkd->nkr", dist.U, v)
    res = (v - torch.einsum("kdr,nkr->nkd", dist.U, p)).norm(dim=-1).min(1).values
    rms = float((res ** 2).mean().sqrt())
    return {"residual_rms": rms, "residual_rms_per_dim": rms / math.sqrt(dist.dim - r),
            "off_manifold_share": float((res > 0.1 * math.sqrt(dist.dim - r)).double().mean())}


def sample_metrics(dist: GaussianMixture, x: Tensor, n_proj: int = 256, repeats: int = 5,
                   seed: int = 0, mmd: bool = True) -> dict:
    """Every exact metric that applies to `dist`: NLL vs entropy (full rank), sliced W2 vs its
    noise floor, MMD, mode statistics (mixtures of several full-rank modes), manifold residual
    (subspace data).

    `sw2` is the mean of sliced W2 between x and `repeats` fresh true sets of the same size,
    `sw2_floor` the mean between `repeats` pairs of true sets: a perfect sampler has ratio ~1
    (one draw of either is noisy: on ring8 with n = 20000 it ranges over about 0.6x-1.4x).
    """
    x = _as2d(x, dist.dim)
    n = x.shape[0]
    g = torch.Generator().manual_seed(20_000 + seed)
    refs = [dist.sample(n, g) for _ in range(repeats)]
    sw2 = sliced_w2(x, refs, n_proj, seed)
    floor, floor_std = sw2_noise_floor(dist, n, repeats, n_proj, seed)
    out = {"n": n, "sw2": sum(sw2) / repeats, "sw2_floor": floor, "sw2_floor_std": floor_std}
    out["sw2_ratio"] = out["sw2"] / floor
    if mmd:
        out["mmd2"] = mmd_rbf(x, refs[0], seed=seed)
    if dist.full_rank:
        H, H_err = dist.entropy()
        out.update(nll=nll(dist, x), entropy=H, entropy_stderr=H_err)
        out["nll_gap"] = out["nll"] - H
        if dist.n_components > 1:
            out.update(mode_stats(dist, x))
    else:
        out.update(manifold_residual(dist, x))
    return out


@torch.no_grad()
def score_error(D, dist: GaussianMixture, sigmas, n: int = 4096, seed: int = 0, device="cpu",
                dtype=torch.float32) -> list[dict]:
    """Denoiser error against the exact one, per sigma, on x = x0 + sigma n with x0 ~ p:
    `score_mse` = E||s_theta - s*||^2 (= E||D - D*||^2 / sigma^4), and `relative` =
    E||D - D*||^2 / E||D* - x||^2 (the error over the size of the exact correction).
    The model sees `x` on `device` in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for s in sigmas:
        s = float(s)
        if s <= 0:
            raise ValueError(f"score error needs sigma > 0, got {s}")
        x0 = dist.sample(n, g)
        x = x0 + s * torch.randn(x0.shape, dtype=x0.dtype, generator=g)
        d_model = D(x.to(device, dtype), s).to(torch.float64).cpu()
        d_true = dist.denoiser(x, s)
        err = ((d_model - d_true) ** 2).sum(1).mean()
        rows.append({"sigma": s, "score_mse": float(err / s ** 4),
                     "relative": float(err / ((d_true - x) ** 2).sum(1).mean())})
    return rows
