"""The two-class Gaussian world and Gaussian generators whose quality is known exactly.

**The world** (Schmidt, Santurkar, Tsipras, Talwar & Madry, NeurIPS 2018; docs/science.md
section 8): y uniform on {-1, +1}, `x | y ~ N(y mu, Sigma)` in R^d. With equal covariances the
Bayes classifier is linear, `sign(mu' Sigma^-1 x)`, with accuracy `Phi(||mu||_{Sigma^-1})`.
Presets: `isotropic` (`Sigma = s^2 I`, Schmidt et al.'s regime: `mu` of entries +-1,
`s = d^(1/4)`, so the Bayes accuracy is `Phi(d^(1/4))` while Linf-robust learning needs about
`sqrt(d)` times more samples) and `lowrank` (`Sigma = s^2 (I + spike U U')`: a few noisy
directions, one of them partly along `mu`, so that a generator must get the covariance right).

**Generators** fitted per class to `n` labelled points (:func:`make_generator`), each a
two-component :class:`~dmat_core.toys.mixtures.GaussianMixture` (component and label 0 is y = -1)
with exact densities, denoisers and samples: `mle` (sample mean and covariance; singular for
n <= d, so its KLs are infinite), `shrinkage` (Ledoit & Wolf's 2004 covariance), `more-labelled`
(k times more labelled points, an oracle), `pseudo-label` (plus an unlabelled pool of k n points
labelled by a classifier fitted on the labelled ones: Carmon, Raghunathan, Schmidt, Liang &
Duchi, NeurIPS 2019, whose Gaussian analysis uses `sign(w' x)`, `w = mean(y x)`, the `mean`
labeller here) and `truth` (the world itself, a perfect generator).

**Exact quality** (:func:`generator_quality`, docs/science.md section 7): per class the KL
divergences both ways and W2 between Gaussians, in closed form (Dowson & Landau 1982: W2^2 =
`||m0 - m1||^2 + tr(S0 + S1 - 2 (S0^1/2 S1 S0^1/2)^1/2)`, the Frechet distance FID computes),
and the angle between the estimated and the true `mu`. Matrix square roots come from a
symmetric eigendecomposition (exact for PSD matrices, where `scipy.linalg.sqrtm` of the
non-symmetric `S0 S1` can return a complex rounding residue). All arithmetic is float64.

Used by ``dmat_core.robust.linear`` (labels, covariance checks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .mixtures import GaussianMixture

Tensor = torch.Tensor
F64 = torch.float64
ESTIMATORS = ("mle", "shrinkage")
GENERATORS = ("mle", "shrinkage", "more-labelled", "pseudo-label", "truth")
LABELLERS = ("mean", "lda")


def _f64(a) -> Tensor:
    return torch.as_tensor(a, dtype=F64)


def _check_points(x, name="x") -> Tensor:
    x = _f64(x)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be (n, d) with n >= 1 and d >= 1, got shape {tuple(x.shape)}")
    return x


def signed_labels(y) -> Tensor:
    """Labels as y in {-1, +1} (long): {-1, +1} is kept, {0, 1} (class indices) maps 0 -> -1."""
    y = torch.as_tensor(y).reshape(-1)
    if torch.is_floating_point(y) and not torch.equal(y, y.round()):
        raise ValueError("labels must be integers in {-1, +1} or {0, 1}")
    y = y.long()
    vals = set(y.unique().tolist())
    if not vals <= {-1, 0, 1} or {-1, 0} <= vals:
        raise ValueError(f"labels must lie in {{-1, +1}} or in {{0, 1}}, got values {sorted(vals)}")
    return torch.where(y == 0, -1, y)


@dataclass
class GaussianWorld:
    """y uniform on {-1, +1}, x | y ~ N(y mu, Sigma) (Schmidt et al. 2018). mu (d,), Sigma (d, d) PSD."""

    mu: Tensor
    Sigma: Tensor
    name: str = "gaussians"

    def __post_init__(self):
        self.mu, self.Sigma = _f64(self.mu).reshape(-1), _f64(self.Sigma)
        d = self.mu.shape[0]
        if d < 1:
            raise ValueError("the world needs d >= 1")
        check_covariance(self.Sigma, d)
        lam, V = torch.linalg.eigh(self.Sigma)
        self._root = V * lam.clamp_min(0).sqrt()                  # Sigma = root root'

    @property
    def dim(self) -> int:
        return self.mu.shape[0]

    def bayes_accuracy(self) -> float:
        """Clean accuracy of the Bayes classifier sign(mu' Sigma^-1 x): Phi(||mu||_{Sigma^-1})."""
        lam, V = torch.linalg.eigh(self.Sigma)
        p, keep = V.T @ self.mu, lam > 1e-12 * lam.abs().max()
        if (p[~keep].abs() > 1e-12 * self.mu.norm()).any():       # mu leaves a singular Sigma's range
            return 1.0
        return 0.5 * math.erfc(-float(((p[keep] ** 2) / lam[keep]).sum().sqrt()) / math.sqrt(2))

    def law(self, y: int) -> tuple[Tensor, Tensor]:
        """(mean, covariance) of x | y."""
        if y not in (-1, 1):
            raise ValueError(f"y must be -1 or +1, got {y}")
        return y * self.mu, self.Sigma

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n points (n, d) float64 and their labels y in {-1, +1} (long), y uniform."""
        if int(n) != n or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n}")
        y = 2 * torch.randint(0, 2, (int(n),), generator=generator) - 1
        z = torch.randn(int(n), self.dim, dtype=F64, generator=generator)
        return y[:, None] * self.mu + z @ self._root.T, y

    def as_mixture(self) -> GaussianMixture:
        """The world as a two-component mixture (component and label 0 is y = -1)."""
        return GaussianMixture.from_covariances([0.5, 0.5], torch.stack([-self.mu, self.mu]),
                                                torch.stack([self.Sigma, self.Sigma]), name=self.name)


def check_covariance(S: Tensor, d: int, name: str = "Sigma") -> None:
    """S must be a finite symmetric PSD (d, d) matrix (ValueError otherwise)."""
    if S.shape != (d, d):
        raise ValueError(f"{name} must be ({d}, {d}), got {tuple(S.shape)}")
    if not torch.isfinite(S).all() or not torch.allclose(S, S.T, rtol=1e-10, atol=1e-12):
        raise ValueError(f"{name} must be finite and symmetric")
    lam = torch.linalg.eigvalsh(S)
    if lam.min() < -1e-9 * lam.abs().max().clamp_min(1e-300):
        raise ValueError(f"{name} must be positive semi-definite (smallest eigenvalue {lam.min():.3g})")


# --------------------------------------------------------------------- presets
def _signs(d: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randint(0, 2, (d,), generator=g) - 1).to(F64)


def isotropic(d: int = 256, std: float | None = None, scale: float = 1.0, seed: int = 0) -> GaussianWorld:
    """mu = scale * (random signs), Sigma = std^2 I with std = d^(1/4) by default (Schmidt et al.):
    Bayes accuracy Phi(scale d^(1/4)); the best Linf-robust accuracy is Phi(d^(1/4) (scale - eps))."""
    if int(d) != d or d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d}")
    std = float(d) ** 0.25 if std is None else float(std)
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    return GaussianWorld(scale * _signs(d, seed), std ** 2 * torch.eye(d, dtype=F64), f"isotropic{d}")


def lowrank(d: int = 256, rank: int = 8, spike: float = 16.0, std: float | None = None,
            align: float = 0.5, scale: float = 1.0, seed: int = 0) -> GaussianWorld:
    """Sigma = std^2 (I + spike U U'), U (d, rank) orthonormal and random except that its first
    column has cosine `align` with mu; mu = scale * (random signs), std = d^(1/4) by default."""
    if int(d) != d or d < 1 or int(rank) != rank or not 1 <= rank <= d or not (spike >= 0 and 0 <= align <= 1):
        raise ValueError(f"need integers d >= 1 and 1 <= rank <= d, spike >= 0 and align in [0, 1]; got "
                         f"d={d}, rank={rank}, spike={spike}, align={align}")
    std, mu = float(d) ** 0.25 if std is None else float(std), scale * _signs(d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    R = torch.randn(d, rank, dtype=F64, generator=g)
    u = mu / mu.norm()
    r0 = R[:, 0] - (R[:, 0] @ u) * u
    R[:, 0] = align * u + math.sqrt(1 - align ** 2) * r0 / r0.norm().clamp_min(1e-300)
    U, _ = torch.linalg.qr(R)                                     # column 0 keeps its direction
    Sigma = std ** 2 * (torch.eye(d, dtype=F64) + spike * U @ U.T)
    return GaussianWorld(mu, (Sigma + Sigma.T) / 2, f"lowrank{d}r{rank}")


PRESETS = {"isotropic": isotropic, "lowrank": lowrank}


def make_world(name: str, **kwargs) -> GaussianWorld:
    """A preset world by name (`isotropic`, `lowrank`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown Gaussian world {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)


# --------------------------------------------------------------------- estimators
def ledoit_wolf(x) -> tuple[Tensor, float]:
    """Ledoit & Wolf (2004) shrinkage covariance of x (n, d): (1 - a) S + a (tr S / d) I with the
    closed-form a in [0, 1] (S: the MLE covariance; the estimator of scikit-learn's ledoit_wolf)."""
    x = _check_points(x)
    (n, d), (_, S) = x.shape, fit_gaussian(x, "mle")
    xc, m = x - x.mean(0), S.trace() / d
    delta = ((S - m * torch.eye(d, dtype=F64)) ** 2).sum() / d
    beta = ((((xc ** 2).sum(1) ** 2).sum() - n * (S ** 2).sum()) / (d * n ** 2)).clamp_min(0)
    a = 1.0 if delta <= 0 else float(torch.minimum(beta, delta) / delta)
    return (1 - a) * S + a * m * torch.eye(d, dtype=F64), a


def fit_gaussian(x, estimator: str = "mle") -> tuple[Tensor, Tensor]:
    """(mean, covariance) of points x (n, d): the sample mean and the MLE or Ledoit-Wolf covariance."""
    x = _check_points(x)
    if estimator == "mle":
        xc = x - x.mean(0)
        return x.mean(0), xc.T @ xc / x.shape[0]
    if estimator == "shrinkage":
        return x.mean(0), ledoit_wolf(x)[0]
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")


def fit_classes(x, y, estimator: str = "mle", name: str = "fitted") -> GaussianMixture:
    """One Gaussian per class (equal weights), as a mixture with component/label 0 for y = -1."""
    x, y = _check_points(x), signed_labels(y)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} points but {y.shape[0]} labels")
    if not ((y == -1).any() and (y == 1).any()):
        raise ValueError(f"no point of class y = {-1 if (y == 1).all() else 1}: a generator needs both classes")
    fits = [fit_gaussian(x[y == c], estimator) for c in (-1, 1)]
    return GaussianMixture.from_covariances([0.5, 0.5], torch.stack([m for m, _ in fits]),
                                            torch.stack([S for _, S in fits]), name=name)


def pseudo_label(x, y, x_pool, labeller="mean") -> Tensor:
    """Labels in {-1, +1} for the unlabelled x_pool from a classifier fitted on (x, y) (Carmon et al.):
    `mean`: sign(w' x), w = mean(y x); `lda`: the plug-in LDA rule with a Ledoit-Wolf pooled
    covariance; or a callable mapping points to real scores."""
    x, y, x_pool = _check_points(x), signed_labels(y), _check_points(x_pool, "x_pool")
    if callable(labeller):
        score = _f64(labeller(x_pool)).reshape(-1)
    elif labeller == "mean":
        score = x_pool @ (y[:, None] * x).mean(0)
    elif labeller == "lda":
        gen = fit_classes(x, y, "mle")
        m = gen.means
        S = ledoit_wolf(torch.cat([x[y == c] - m[i] for i, c in enumerate((-1, 1))]))[0]
        w = torch.linalg.lstsq(S, (m[1] - m[0])[:, None]).solution[:, 0]
        score = (x_pool - (m[0] + m[1]) / 2) @ w
    else:
        raise ValueError(f"unknown labeller {labeller!r}; choose one of {LABELLERS} or pass a callable")
    return torch.where(score >= 0, 1, -1)


def make_generator(kind: str, world: GaussianWorld, x, y, *, k: int = 4, estimator: str = "shrinkage",
                   labeller="mean", generator: torch.Generator | None = None) -> GaussianMixture:
    """The Gaussian generator `kind` (one of GENERATORS, see the module docstring) for the labelled
    points (x, y) of `world`. `more-labelled` fits `estimator` to the n points plus (k - 1) n fresh
    labelled ones; `pseudo-label` to the n points plus k n unlabelled ones labelled by `labeller`.
    Fresh points are drawn from `world` with `generator`."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown generator {kind!r}; choose one of {GENERATORS}")
    x, y = _check_points(x), signed_labels(y)
    if x.shape[1] != world.dim:
        raise ValueError(f"points have d = {x.shape[1]}, the world d = {world.dim}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
    n = x.shape[0]
    if kind == "truth":
        return world.as_mixture()
    if kind in ESTIMATORS:
        return fit_classes(x, y, kind, kind)
    if kind == "more-labelled":
        if k > 1:
            xe, ye = world.sample((int(k) - 1) * n, generator)
            x, y = torch.cat([x, xe]), torch.cat([y, ye])
        return fit_classes(x, y, estimator, f"more-labelled x{k}")
    pool, _ = world.sample(int(k) * n, generator)               # labels thrown away
    yp = pseudo_label(x, y, pool, labeller)
    return fit_classes(torch.cat([x, pool]), torch.cat([y, yp]), estimator, f"pseudo-label x{k}")


# --------------------------------------------------------------------- exact divergences
def gaussian_kl(m0, S0, m1, S1) -> float:
    """KL(N(m0, S0) || N(m1, S1)) in nats, closed form; inf if either covariance is singular."""
    m0, m1, S0, S1 = _f64(m0).reshape(-1), _f64(m1).reshape(-1), _f64(S0), _f64(S1)
    lam0, (lam1, V1) = torch.linalg.eigvalsh(S0), torch.linalg.eigh(S1)
    tol = 1e-12 * float(max(lam0.abs().max(), lam1.abs().max()))
    if lam0.min() <= tol or lam1.min() <= tol:
        return math.inf
    P1, dm = (V1 / lam1) @ V1.T, m1 - m0
    val = (P1 * S0).sum() + dm @ P1 @ dm - m0.shape[0] + lam1.log().sum() - lam0.log().sum()
    return max(float(val) / 2, 0.0)


def gaussian_w2(m0, S0, m1, S1) -> float:
    """W2(N(m0, S0), N(m1, S1)) (Dowson & Landau 1982), finite for singular covariances too."""
    m0, m1, S0, S1 = _f64(m0).reshape(-1), _f64(m1).reshape(-1), _f64(S0), _f64(S1)
    lam0, V0 = torch.linalg.eigh(S0)
    root0 = (V0 * lam0.clamp_min(0).sqrt()) @ V0.T
    cross = torch.linalg.eigvalsh(root0 @ S1 @ root0).clamp_min(0).sqrt().sum()
    sq = ((m0 - m1) ** 2).sum() + S0.trace() + S1.trace() - 2 * cross
    return math.sqrt(max(float(sq), 0.0))


def mean_angle(estimate, mu) -> float:
    """Angle in degrees between an estimate of mu and mu (90 for a zero estimate)."""
    a, b = _f64(estimate).reshape(-1), _f64(mu).reshape(-1)
    if float(a.norm()) == 0 or float(b.norm()) == 0:
        return 90.0
    a, b = a / a.norm(), b / b.norm()
    cos = float(a @ b)                                            # atan2: accurate near 0 and 180
    return math.degrees(math.atan2(float((a - cos * b).norm()), cos))


def generator_quality(world: GaussianWorld, gen: GaussianMixture) -> dict:
    """Exact quality of a two-class Gaussian generator against the world, averaged over y:
    `kl_pq` = KL(true || model) (minus the held-out log-likelihood up to the entropy), `kl_qp` =
    KL(model || true), `w2` = mean over y of W2 (the conditional W2 of Sehwag et al. 2022),
    `mean_angle_deg` = angle between (m_+ - m_-)/2 and mu, `mean_error` = mean over y of the
    class-mean error ||m_y - y mu||."""
    if gen.n_components != 2 or gen.dim != world.dim:
        raise ValueError(f"need a two-component generator in d = {world.dim}, got "
                         f"{gen.n_components} components in d = {gen.dim}")
    covs, out = gen.covariances(), {"kl_pq": 0.0, "kl_qp": 0.0, "w2": 0.0, "mean_error": 0.0}
    for i, c in enumerate((-1, 1)):
        m, S = world.law(c)
        out["kl_pq"] += gaussian_kl(m, S, gen.means[i], covs[i]) / 2
        out["kl_qp"] += gaussian_kl(gen.means[i], covs[i], m, S) / 2
        out["w2"] += gaussian_w2(m, S, gen.means[i], covs[i]) / 2
        out["mean_error"] += float((gen.means[i] - m).norm()) / 2
    out["mean_angle_deg"] = mean_angle((gen.means[1] - gen.means[0]) / 2, world.mu)
    return out
