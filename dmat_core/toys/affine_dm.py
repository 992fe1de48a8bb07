"""Diffusion models with an affine denoiser, whose samples are exactly Gaussian.

For Gaussian data N(m, S) the exact denoiser is affine in x at every noise level (Tweedie):

    D*(x, sigma) = A*(sigma) x + b*(sigma),  A* = S (S + sigma^2 I)^-1,  b* = sigma^2 (S + sigma^2 I)^-1 m

(:func:`gaussian_affine`). :class:`AffineDenoiser` learns such a map with EDM preconditioning
(Karras et al. 2022, Table 1): `D(x, sigma) = c_skip x + c_out (M(sigma) c_in x + v(sigma))`, with
M (d, d) and v (d,) piecewise linear in ln sigma over a grid of knots (constant beyond its ends):
linear in its parameters, so the denoising loss is a convex quadratic, and able to hold the
exact Gaussian denoiser at every knot (:meth:`AffineDenoiser.from_gaussian`). It is a denoiser
`D(x, sigma, labels=None)` with a `sigma_data`, so dmat's samplers and
:func:`~dmat_core.toys.train.train_toy` (any loss of ``dmat_core.diffusion.losses``, standard
or AT for DMs) use it unchanged. What it can learn: the affine map minimising the expected
squared error depends on the data only through its mean and covariance, so on any data the
optimum is the Gaussian denoiser of the data's sample mean and covariance; AT for DMs adds
`lambda E ||A w||^2` (the equivariance residual of an affine D is `-A w`), a penalty that shrinks A.

Because every Heun step of EDM's Algorithm 2 (Karras et al. 2022) is affine in x when D is,
the sampler's output law from Gaussian latents is Gaussian, and :func:`heun_gaussian`
propagates its mean and covariance exactly, discretisation error included (the churn of
Algorithm 2 adds isotropic Gaussian noise, which it propagates too). Its divergences from the
data law are then closed forms (``dmat_core.toys.gaussians``).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..diffusion.edm import EDMPrecond

Tensor = torch.Tensor
F64 = torch.float64


def _f64(a) -> Tensor:
    return torch.as_tensor(a, dtype=F64)


def gaussian_affine(mean, cov, sigma: float) -> tuple[Tensor, Tensor]:
    """(A*, b*) of the exact denoiser of N(mean, cov) at noise level sigma > 0 (float64)."""
    m, S = _f64(mean).reshape(-1), _f64(cov)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    R = S + sigma ** 2 * torch.eye(m.shape[0], dtype=F64)
    A = torch.linalg.solve(R, S).T                              # S R^-1 (S, R symmetric)
    return A, sigma ** 2 * torch.linalg.solve(R, m)


class _AffineNet(nn.Module):
    """F(x_in, c_noise) = M(sigma) x_in + v(sigma), M and v hat-interpolated in ln sigma = 4 c_noise."""

    def __init__(self, dim: int, knots: int, sigma_min: float, sigma_max: float):
        super().__init__()
        self.log_lo, self.log_step = math.log(sigma_min), (math.log(sigma_max) - math.log(sigma_min)) / (knots - 1)
        self.M = nn.Parameter(torch.zeros(knots, dim, dim))
        self.v = nn.Parameter(torch.zeros(knots, dim))

    def knot_sigmas(self) -> Tensor:
        """The noise levels of the knots, float64 (K,)."""
        return torch.exp(self.log_lo + self.log_step * torch.arange(self.v.shape[0], dtype=F64))

    def hat(self, c_noise: Tensor) -> Tensor:
        """(B, K) interpolation weights of each sigma over the knots (two non-zero per row)."""
        K = self.v.shape[0]
        pos = ((4 * c_noise.reshape(-1) - self.log_lo) / self.log_step).nan_to_num(0.0).clamp(0, K - 1)
        i0 = pos.floor().clamp(max=K - 2).long()
        frac = (pos - i0)[:, None]
        H = torch.zeros(pos.shape[0], K, dtype=c_noise.dtype, device=c_noise.device)
        return H.scatter(1, i0[:, None], 1 - frac).scatter(1, i0[:, None] + 1, frac)

    def forward(self, x_in: Tensor, c_noise: Tensor, labels=None) -> Tensor:
        H = self.hat(c_noise).to(x_in.dtype)                      # (B, K)
        B, K, d = x_in.shape[0], *self.v.shape
        Hx = (H[:, :, None] * x_in[:, None, :]).reshape(B, K * d)  # (B, K d)
        return Hx @ self.M.transpose(1, 2).reshape(K * d, d) + H @ self.v


class AffineDenoiser(EDMPrecond):
    """An EDM-preconditioned affine denoiser D(x, sigma) = A(sigma) x + b(sigma) (module docstring).

    Args:
        dim: data dimension d. sigma_data: the EDM sigma_data (the data's RMS std per coordinate).
        knots: grid points in ln sigma from sigma_min to sigma_max (M and v are zero at the start,
            so the untrained denoiser is c_skip x, exact for N(0, sigma_data^2 I)). Beyond
            sigma_max M and v stay constant: there the exact M decays like 1/sigma and v tends to
            m / sigma_data, so the constant is close, and those levels, rare under EDM's training
            distribution (P(sigma > 10) ~ 0.2%), need no knots of their own to be learned.
    """

    def __init__(self, dim: int, sigma_data: float = 1.0, knots: int = 24, sigma_min: float = 0.002,
                 sigma_max: float = 10.0):
        if int(dim) != dim or dim < 1 or int(knots) != knots or knots < 2:
            raise ValueError(f"need integers dim >= 1 and knots >= 2, got {dim}, {knots}")
        if not (sigma_data > 0 and 0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
            raise ValueError(f"need sigma_data > 0 and 0 < sigma_min < sigma_max, got {sigma_data}, "
                             f"{sigma_min}, {sigma_max}")
        super().__init__(_AffineNet(int(dim), int(knots), sigma_min, sigma_max), sigma_data)
        self.dim = int(dim)

    @classmethod
    def from_gaussian(cls, mean, cov, sigma_data: float | None = None, **kwargs) -> "AffineDenoiser":
        """The model holding the exact denoiser of N(mean, cov) at every knot (interpolated between)."""
        m, S = _f64(mean).reshape(-1), _f64(cov)
        sd = float(S.trace() / m.shape[0]) ** 0.5 if sigma_data is None else sigma_data
        model = cls(m.shape[0], sd, **kwargs).double()
        eye = torch.eye(m.shape[0], dtype=F64)
        with torch.no_grad():
            for k, s in enumerate(model.net.knot_sigmas()):
                c_skip, c_out, c_in = model.coefficients(s)
                A, b = gaussian_affine(m, S, float(s))
                model.net.M[k] = (A - c_skip * eye) / (c_out * c_in)
                model.net.v[k] = b / c_out
        return model


# --------------------------------------------------------------------- exact propagation
def _as_float64(D):
    """A float64 copy of an nn.Module denoiser with other weights (its own weights, exact
    arithmetic), else D itself."""
    if isinstance(D, nn.Module) and any(p.dtype != F64 for p in D.parameters()):
        return copy.deepcopy(D).double()
    return D


def affine_parts(D, sigma: float, dim: int, check: bool = True) -> tuple[Tensor, Tensor]:
    """(A, b) with D(x, sigma) = A x + b, read off D at 0 and at the unit vectors (float64; a module
    runs as a float64 copy); with `check`, one random point must obey it (else ValueError)."""
    D = _as_float64(D)
    X = torch.cat([torch.zeros(1, dim, dtype=F64), torch.eye(dim, dtype=F64)])
    with torch.no_grad():
        out = _f64(D(X, torch.full((dim + 1,), float(sigma), dtype=F64)))
        b, A = out[0], (out[1:] - out[0]).T
        if check:
            x = torch.randn(1, dim, dtype=F64, generator=torch.Generator().manual_seed(0)) * 3
            got = _f64(D(x, torch.full((1,), float(sigma), dtype=F64)))[0]
            err, scale = float((got - A @ x[0] - b).norm()), float((A @ x[0] + b).norm())
            if err > 1e-6 * (1 + scale):
                raise ValueError(f"the denoiser is not affine in x at sigma = {sigma:g} (error {err:.3g})")
    return A, b


def _heun_step(D, t_hat: float, t_next: float, dim: int) -> tuple[Tensor, Tensor]:
    """One deterministic Heun step of edm_heun from t_hat to t_next as x -> P x + q."""
    eye = torch.eye(dim, dtype=F64)
    A, b = affine_parts(D, t_hat, dim)
    h = t_next - t_hat
    J, c = (eye - A) / t_hat, -b / t_hat                          # d_cur = J x + c
    P, q = eye + h * J, h * c                                     # the Euler step
    if t_next > 0:                                                # 2nd-order correction
        A2, b2 = affine_parts(D, t_next, dim)
        J2, c2 = (eye - A2) / t_next, -b2 / t_next                # d' = J2 x_e + c2
        P, q = eye + h / 2 * (J + J2 @ P), h / 2 * (c + J2 @ q + c2)
    return P, q


def _check_sigmas(sigmas) -> list:
    s = [float(v) for v in torch.as_tensor(sigmas).reshape(-1)]
    if len(s) < 2 or any(not math.isfinite(v) for v in s) or any(a <= b for a, b in zip(s, s[1:])) or s[-1] < 0:
        raise ValueError("sigmas must be a decreasing sequence of >= 2 finite levels ending at >= 0")
    return s


def heun_affine_map(D, sigmas, dim: int) -> tuple[Tensor, Tensor]:
    """(F, g) with edm_heun(D, latents, sigmas)'s output = F x_N + g, x_N = sigmas[0] * latents
    (deterministic Heun, S_churn = 0), for an affine D."""
    s, D = _check_sigmas(sigmas), _as_float64(D)
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim}")
    Fm, g = torch.eye(int(dim), dtype=F64), torch.zeros(int(dim), dtype=F64)
    for t, tn in zip(s[:-1], s[1:]):
        P, q = _heun_step(D, t, tn, dim)
        Fm, g = P @ Fm, P @ g + q
    return Fm, g


def heun_gaussian(D, sigmas, mean0=None, cov0=None, dim: int | None = None, S_churn: float = 0.0,
                  S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0) -> tuple[Tensor, Tensor]:
    """Exact (mean, covariance) of edm_heun's output for an affine D when its initial state
    x_N = sigmas[0] * latents has law N(mean0, cov0) (default N(0, sigmas[0]^2 I), the sampler's
    own start; then give `dim`). Churn as in edm_heun: the noise it adds enters the covariance."""
    s, D = _check_sigmas(sigmas), _as_float64(D)
    if (mean0 is None) != (cov0 is None):
        raise ValueError("give both mean0 and cov0, or neither (the sampler's own start)")
    if mean0 is None:
        if dim is None or int(dim) != dim or dim < 1:
            raise ValueError(f"without mean0 and cov0 give the dimension dim >= 1, got {dim}")
        mean0, cov0 = torch.zeros(int(dim), dtype=F64), s[0] ** 2 * torch.eye(int(dim), dtype=F64)
    m, C = _f64(mean0).reshape(-1), _f64(cov0)
    d = m.shape[0]
    if C.shape != (d, d) or (dim is not None and dim != d):
        raise ValueError(f"mean0 (d,) and cov0 (d, d) must agree (and with dim), got "
                         f"{tuple(m.shape)}, {tuple(C.shape)}")
    N, eye = len(s) - 1, torch.eye(d, dtype=F64)
    for t, tn in zip(s[:-1], s[1:]):
        gamma = min(S_churn / N, math.sqrt(2) - 1) if S_tmin <= t <= S_tmax else 0.0
        t_hat = t + gamma * t
        if gamma > 0:
            C = C + (t_hat ** 2 - t ** 2) * S_noise ** 2 * eye
        P, q = _heun_step(D, t_hat, tn, d)
        m, C = P @ m + q, P @ C @ P.T
    return m, (C + C.T) / 2


def denoiser_excess(D, mean, cov, sigma: float) -> float:
    """E||D(x) - D*(x)||^2 / E||D*(x) - x0||^2 for data N(mean, cov), x = x0 + sigma n: the excess
    denoising error of an affine D over the Bayes error (MMSE), exact; 0 for the exact denoiser."""
    m, S = _f64(mean).reshape(-1), _f64(cov)
    d = m.shape[0]
    A, b = affine_parts(_as_float64(D), sigma, d)
    As, bs = gaussian_affine(m, S, sigma)
    dA, db = A - As, b - bs
    excess = ((dA @ m + db) ** 2).sum() + (dA @ (S + sigma ** 2 * torch.eye(d, dtype=F64)) * dA).sum()
    mmse = (S - As @ S).trace()                                   # tr(S - S (S + sigma^2)^-1 S)
    return float(excess / mmse)


__all__ = ["AffineDenoiser", "gaussian_affine", "affine_parts", "heun_affine_map", "heun_gaussian",
           "denoiser_excess"]
