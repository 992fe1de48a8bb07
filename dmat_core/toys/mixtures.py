"""Toy distributions whose density is known in closed form at every noise level.

Size: one module of about 330 lines on purpose: one class with every closed form (density, score,
denoiser at every sigma, sampling) and the presets built from it.

A Gaussian mixture stays a Gaussian mixture under the diffusion noising `x = x0 + sigma n`
(docs/science.md section 2):

    p_sigma(x) = sum_k w_k N(x; mu_k, S_k + sigma^2 I),

so its log-density, score `grad log p_sigma` and Tweedie denoiser `E[x0 | x] = x + sigma^2
score` are exact for every sigma. Notebook 01 teaches them.

Every covariance is stored as "low rank plus isotropic":

    S_k = U_k diag(lam_k) U_k^T + nu_k (I - U_k U_k^T),   U_k: (d, r) orthonormal columns,

which covers full covariances (r = d), isotropic modes (r = 0) and Gaussians on a linear
subspace (nu_k = 0, r < d, exact for every sigma > 0) in any dimension at O(d r) cost a point.
All arithmetic runs in float64; results come back in the input's dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)


def _check_sigma(sigma, x: Tensor) -> Tensor:
    """sigma as a float64 tensor of shape (B, 1), validated (>= 0, finite)."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    s = s.reshape(-1)
    if s.shape[0] != x.shape[0]:
        raise ValueError(f"sigma has {s.shape[0]} entries for a batch of {x.shape[0]} points")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError(f"sigma must be finite and >= 0, got min {s.min().item():g}")
    return s[:, None]


@dataclass
class GaussianMixture:
    """A mixture of Gaussians in R^d with exact noised densities.

    Args:
        weights: (K,) mixture weights, normalised on construction.
        means: (K, d) component means.
        U: (K, d, r) orthonormal eigenvectors of each covariance (r may be 0 or d).
        lam: (K, r) eigenvalues along U (>= 0).
        nu: (K,) variance in every direction orthogonal to U (0 for subspace data).
        labels: (K,) integer class label of each component (defaults to 0..K-1).
        name: a short name used in tables.
    """

    weights: Tensor
    means: Tensor
    U: Tensor
    lam: Tensor
    nu: Tensor
    labels: Tensor
    name: str = "mixture"

    def __post_init__(self):
        f64 = dict(dtype=torch.float64)
        self.means = torch.as_tensor(self.means, **f64)
        if self.means.ndim != 2:
            raise ValueError(f"means must be (K, d), got shape {tuple(self.means.shape)}")
        K, d = self.means.shape
        self.weights = torch.as_tensor(self.weights, **f64).reshape(-1)
        self.U = torch.as_tensor(self.U, **f64)
        self.lam = torch.as_tensor(self.lam, **f64)
        self.nu = torch.as_tensor(self.nu, **f64).reshape(-1)
        self.labels = torch.as_tensor(self.labels, dtype=torch.long).reshape(-1)
        if self.weights.shape != (K,) or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError(f"weights must be K={K} non-negative numbers with a positive sum")
        self.weights = self.weights / self.weights.sum()
        if self.U.ndim != 3 or self.U.shape[:2] != (K, d) or self.lam.shape != (K, self.U.shape[2]):
            raise ValueError(f"U must be (K, d, r) and lam (K, r) for K={K}, d={d}; "
                             f"got {tuple(self.U.shape)} and {tuple(self.lam.shape)}")
        if self.nu.shape != (K,) or (self.nu < 0).any() or (self.lam < 0).any():
            raise ValueError("variances (lam, nu) must be >= 0 and nu must have K entries")
        if self.labels.shape != (K,):
            raise ValueError(f"labels must have K={K} entries")
        self._log_w = self.weights.log()
        self._cache: dict = {}   # reference numbers that cost a Monte-Carlo run (entropy, floors)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_covariances(cls, weights, means, covs, labels=None, name="mixture"):
        """Mixture from full (K, d, d) or diagonal (K, d) covariances (rank-deficient allowed)."""
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        K, d = means.shape
        if covs.shape == (K, d):
            covs = torch.diag_embed(covs)
        if covs.shape != (K, d, d):
            raise ValueError(f"covs must be (K, d, d) or (K, d), got {tuple(covs.shape)}")
        if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10):
            raise ValueError("covariances must be symmetric")
        lam, U = torch.linalg.eigh(covs)
        if (lam < -1e-9 * lam.abs().amax().clamp_min(1.0)).any():
            raise ValueError("covariances must be positive semi-definite")
        labels = torch.arange(K) if labels is None else labels
        return cls(weights, means, U, lam.clamp_min(0.0), torch.zeros(K), labels, name)

    @classmethod
    def isotropic(cls, means, std, weights=None, labels=None, name="mixture"):
        """Equal-covariance isotropic modes `N(mu_k, std^2 I)`."""
        means = torch.as_tensor(means, dtype=torch.float64)
        K, d = means.shape
        weights = torch.ones(K) if weights is None else weights
        labels = torch.arange(K) if labels is None else labels
        return cls(weights, means, torch.zeros(K, d, 0), torch.zeros(K, 0),
                   torch.full((K,), float(std) ** 2), labels, name)

    # ----------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def full_rank(self) -> bool:
        """True where every component has a density at sigma = 0."""
        r = self.U.shape[2]
        pos_lam = bool((self.lam > 0).all())
        return pos_lam and (r == self.dim or bool((self.nu > 0).all()))

    def __eq__(self, other):   # identity: tensors make field-wise equality ambiguous
        return self is other

    __hash__ = object.__hash__

    def to(self, device) -> "GaussianMixture":
        """A copy on `device` (the arithmetic stays float64)."""
        return GaussianMixture(self.weights.to(device), self.means.to(device), self.U.to(device),
                               self.lam.to(device), self.nu.to(device), self.labels.to(device),
                               self.name)

    def covariances(self) -> Tensor:
        """Dense (K, d, d) covariances (for small d: plots and tests)."""
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.means.device)
        P = self.U @ self.U.transpose(1, 2)
        return (self.U * self.lam[:, None, :]) @ self.U.transpose(1, 2) + self.nu[:, None, None] * (eye - P)

    # ----------------------------------------------------------------- sampling
    def sample(self, n: int, generator: torch.Generator | None = None, return_components=False):
        """Draw n points (float64, (n, d)); with `return_components`, also each point's component."""
        if int(n) != n or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n}")
        dev = self.means.device
        k = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        z = torch.randn(int(n), self.dim, dtype=torch.float64, device=dev, generator=generator)
        U = self.U[k]                                              # (n, d, r)
        zr = torch.einsum("ndr,nd->nr", U, z)                      # coordinates along U
        par = torch.einsum("ndr,nr->nd", U, zr * self.lam[k].sqrt())
        perp = (z - torch.einsum("ndr,nr->nd", U, zr)) * self.nu[k, None].sqrt()
        x = self.means[k] + par + perp
        return (x, k) if return_components else x

    def sample_labeled(self, n: int, generator: torch.Generator | None = None):
        """Points and their class labels (the label of the component each was drawn from)."""
        x, k = self.sample(n, generator, return_components=True)
        return x, self.labels[k]

    # ----------------------------------------------------------------- exact noised quantities
    def _component_terms(self, x: Tensor, sigma):
        """Per-component log N(x; mu_k, S_k + sigma^2 I) (B, K) and S_sigma^-1 (x - mu_k) (B, K, d)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (B, {self.dim}) for {self.name}, got {tuple(x.shape)}")
        x = x.to(torch.float64)
        s2 = _check_sigma(sigma, x) ** 2                            # (B, 1)
        lam_s = self.lam[None] + s2[:, :, None]                     # (B, K, r)
        nu_s = self.nu[None] + s2                                   # (B, K)
        r = self.U.shape[2]
        if (nu_s <= 0).any() and r < self.dim or (lam_s <= 0).any():
            raise ValueError(f"{self.name} has no density at sigma = 0 (rank-deficient covariance); "
                             "use sigma > 0")
        v = x[:, None, :] - self.means[None]                        # (B, K, d)
        p = torch.einsum("kdr,bkd->bkr", self.U, v)                 # (B, K, r)
        v_perp = v - torch.einsum("kdr,bkr->bkd", self.U, p)        # (B, K, d)
        if r < self.dim:
            maha = (p ** 2 / lam_s).sum(-1) + (v_perp ** 2).sum(-1) / nu_s
            logdet = lam_s.log().sum(-1) + (self.dim - r) * nu_s.log()
            prec_v = torch.einsum("kdr,bkr->bkd", self.U, p / lam_s) + v_perp / nu_s[..., None]
        else:   # full eigenbasis: the orthogonal complement is empty
            maha = (p ** 2 / lam_s).sum(-1)
            logdet = lam_s.log().sum(-1)
            prec_v = torch.einsum("kdr,bkr->bkd", self.U, p / lam_s)
        log_n = -0.5 * (maha + logdet + self.dim * LOG_2PI)         # (B, K)
        return log_n, prec_v

    def _log_joint(self, x, sigma, labels):
        log_n, prec_v = self._component_terms(x, sigma)
        logits = self._log_w[None] + log_n                          # log w_k N_k, (B, K)
        if labels is not None:   # class-conditional: keep the components of each point's class
            labels = torch.as_tensor(labels, device=x.device).reshape(-1, 1)
            logits = logits.masked_fill(self.labels[None] != labels, -math.inf)
        return logits, prec_v

    def log_prob(self, x: Tensor, sigma=0.0, labels=None) -> Tensor:
        """Exact log p_sigma(x) (log p_sigma(x | y) with labels), (B,), via log-sum-exp."""
        logits, _ = self._log_joint(x, sigma, labels)
        if labels is not None:
            logits = logits - torch.logsumexp(self._class_log_w(labels), dim=1, keepdim=True)
        return torch.logsumexp(logits, dim=1).to(x.dtype)

    def _class_log_w(self, labels):
        labels = torch.as_tensor(labels, device=self.means.device).reshape(-1, 1)
        return self._log_w[None].masked_fill(self.labels[None] != labels, -math.inf)

    def responsibilities(self, x: Tensor, sigma=0.0, labels=None) -> Tensor:
        """Posterior p(k | x) of each component under the noised mixture, (B, K)."""
        logits, _ = self._log_joint(x, sigma, labels)
        return torch.softmax(logits, dim=1)

    def score(self, x: Tensor, sigma, labels=None) -> Tensor:
        """Exact score grad_x log p_sigma(x) = -sum_k p(k|x) (S_k + sigma^2 I)^-1 (x - mu_k)."""
        logits, prec_v = self._log_joint(x, sigma, labels)
        resp = torch.softmax(logits, dim=1)
        return (-(resp[..., None] * prec_v).sum(1)).to(x.dtype)

    def denoiser(self, x: Tensor, sigma, labels=None) -> Tensor:
        """Exact Tweedie denoiser D(x, sigma) = E[x0 | x] = x + sigma^2 * score (x itself at sigma 0).

        Has the `D(x, sigma, labels=None)` signature of every denoiser in dmat_core.
        """
        x64 = x.to(torch.float64)
        s = _check_sigma(sigma, x64)
        out = x64.clone()
        pos = s[:, 0] > 0
        if pos.any():
            lab = None if labels is None else torch.as_tensor(labels, device=x.device).reshape(-1)[pos]
            out[pos] = x64[pos] + s[pos] ** 2 * self.score(x64[pos], s[pos, 0], lab)
        return out.to(x.dtype)

    # ----------------------------------------------------------------- reference numbers
    def entropy(self, n: int = 200_000, seed: int = 12345) -> tuple[float, float]:
        """Differential entropy H = -E log p(x) in nats, with its standard error.

        Exact for a single full-rank Gaussian (stderr 0); a Monte-Carlo estimate otherwise.
        """
        if not self.full_rank:
            raise ValueError(f"{self.name} has no density (rank-deficient): entropy is -inf")
        key = ("entropy", n, seed)
        if key in self._cache:
            return self._cache[key]
        if self.n_components == 1:
            logdet = self.lam.log().sum() + (self.dim - self.U.shape[2]) * self.nu.clamp_min(1e-300).log().sum()
            return float(0.5 * (self.dim * (1 + LOG_2PI) + logdet)), 0.0
        g = torch.Generator(device=self.means.device).manual_seed(seed)
        lp = torch.cat([self.log_prob(self.sample(min(50_000, n - i), g))
                        for i in range(0, n, 50_000)])
        self._cache[key] = (float(-lp.mean()), float(lp.std() / math.sqrt(n)))
        return self._cache[key]


# --------------------------------------------------------------------- presets
def ring8(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """8 equal-weight isotropic modes (std 0.1) evenly on a circle of radius 2, first at angle 0."""
    a = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return GaussianMixture.isotropic(radius * torch.stack([a.cos(), a.sin()], 1), std, name="ring8")


def grid25(std: float = 0.1) -> GaussianMixture:
    """25 equal-weight isotropic modes (std 0.1) with means on the grid {-2,-1,0,1,2}^2."""
    g = torch.arange(-2, 3, dtype=torch.float64)
    means = torch.cartesian_prod(g, g)
    return GaussianMixture.isotropic(means, std, name="grid25")


def _random_basis(d: int, k: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, dtype=torch.float64, generator=g))
    return q


def plane3d(stds=(1.0, 0.5), tilt_deg: float = 30.0) -> GaussianMixture:
    """A 2D Gaussian (axis stds `stds`) living on a plane through 0 in R^3, tilted by `tilt_deg`
    about the x-axis and then about the z-axis. No density at sigma = 0 (rank 2 in R^3)."""
    t = math.radians(tilt_deg)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]],
                      dtype=torch.float64)
    rz = torch.tensor([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]],
                      dtype=torch.float64)
    U = (rz @ rx)[:, :2]                                             # (3, 2) orthonormal
    lam = torch.tensor(stds, dtype=torch.float64) ** 2
    return GaussianMixture(torch.ones(1), torch.zeros(1, 3), U[None], lam[None], torch.zeros(1),
                           torch.zeros(1, dtype=torch.long), "plane3d")


def subspace(d: int = 256, k: int = 8, std: float = 1.0, seed: int = 0) -> GaussianMixture:
    """N(0, std^2 U U^T): a rank-k Gaussian on a random k-dim linear subspace of R^d (d up to 3072).
    Exact for every sigma > 0; its off-manifold residual is ||(I - U U^T) x||."""
    if not (1 <= k <= d):
        raise ValueError(f"need 1 <= k <= d, got k={k}, d={d}")
    U = _random_basis(d, k, seed)
    return GaussianMixture(torch.ones(1), torch.zeros(1, d), U[None],
                           torch.full((1, k), float(std) ** 2), torch.zeros(1),
                           torch.zeros(1, dtype=torch.long), f"subspace{d}k{k}")


def anisotropic(d: int = 16, cond: float = 100.0, seed: int = 0) -> GaussianMixture:
    """A full-rank zero-mean Gaussian in R^d, variances log-spaced from 1 down to 1/cond,
    along a random orthonormal basis."""
    U = _random_basis(d, d, seed)
    lam = torch.logspace(0, -math.log10(cond), d, dtype=torch.float64)
    return GaussianMixture(torch.ones(1), torch.zeros(1, d), U[None], lam[None], torch.zeros(1),
                           torch.zeros(1, dtype=torch.long), f"aniso{d}")


PRESETS = {"ring8": ring8, "grid25": grid25, "plane3d": plane3d,
           "subspace": subspace, "anisotropic": anisotropic}


def make_distribution(name: str, **kwargs) -> GaussianMixture:
    """A preset by name (`ring8`, `grid25`, `plane3d`, `subspace`, `anisotropic`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown distribution {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)
