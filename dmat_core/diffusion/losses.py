"""Training losses of a diffusion denoiser: the denoising loss and adversarial training (AT)
with the equivariance target of Briglia et al. (arXiv 2505.21742, docs/science.md section 3).

Everything is in EDM coordinates (`x = x0 + sigma n`) with the noise prediction of a denoiser
`eps_th(x) = (x - D(x, sigma)) / sigma`. A perturbation in *noise units* `w` moves the input to
`x' = x + sigma w` (the DDPM `x_t' = sqrt(abar) x0 + sqrt(1 - abar)(eps + w)`), and

    L = ||eps_th(x) - eps||^2 + lambda ||eps_th(x') - (eps_th(x) + w)||^2        (equivariance)

The right answer for an input whose noise is `eps + w` is `eps + w`: the prediction moves
*with* the perturbation. Since `eps_th(x') - eps_th(x) - w = (D(x) - D(x')) / sigma`, this is
the same as asking the *denoiser* `D` to stay put: AT smooths `D` over the budget box. The
ablation that classifier AT would suggest, `eps_th(x') = eps_th(x)` (invariance), instead asks
`D(x') = D(x) + sigma w`: the denoiser passes the perturbation through and trajectories keep it.

Variants of `w` (the box is `[-r(sigma), r(sigma)]` per coordinate, :func:`at_budget`):
  `random`       uniform in the box (randomised-smoothing like);
  `adversarial`  random start, one FGSM step maximising the prediction gap
                 `||eps_th(x + sigma w) - eps_th(x)||^2`, projected back into the box;
  `invariance`   the adversarial `w` with the invariance target (watch it fail).
The equivariance target is the model's own prediction plus the perturbation, `eps_th(x) + w`
(the paper); `ATConfig(target="true-noise")` uses the true noise instead, `eps + w`. Since
`x' = x0 + sigma (eps + w)`, that term is the denoising loss at the perturbed point (the noise
`eps + w` is known exactly): AT with the true-noise target is denoising with adversarially
augmented noise, a control for how much of AT's effect the self-referential target carries.
Both terms carry the same per-sigma weight (`edm` or `eps`, :func:`eps_weight`) and are means
over coordinates, so lambda means the same in 2 and 3072 dimensions. Notebooks 02-04 teach it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .edm import edm_training_sigmas, expand_sigma

Tensor = torch.Tensor
VARIANTS = ("standard", "random", "adversarial", "invariance")
WEIGHTINGS = ("edm", "eps")
TARGETS = ("prediction", "true-noise")


# ----------------------------------------------------------------------- weights and budget
def eps_weight(sigma: Tensor, sigma_data: float, weighting: str = "edm") -> Tensor:
    """Per-sigma weight of a squared error in noise units `||eps_th - eps||^2`.

    `eps`: 1 (Ho et al. 2020, the plain noise-prediction loss). `edm`: (sigma^2 + sd^2)/sd^2,
    which makes `weight ||eps_th - eps||^2 = lambda(sigma) ||D - x0||^2` with the EDM weight
    lambda = (sigma^2 + sd^2)/(sigma sd)^2 (Karras et al. eq. 8 and Table 1).
    """
    if weighting == "eps":
        return torch.ones_like(sigma)
    if weighting == "edm":
        return (sigma ** 2 + sigma_data ** 2) / sigma_data ** 2
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")


def at_budget(sigma, sigma_data: float, r_max: float = 1.0, exponent: float = 2.0,
              r_min: float = 0.125, min_units: str = "data") -> Tensor:
    """Half-width r(sigma) of the AT box for `w`, in noise units (docs/science.md section 3).

        r(sigma) = max(r_max * u^exponent, floor),   u = sigma / sqrt(sigma^2 + sd^2),

    `u` is `sqrt(1 - abar)` of the variance-preserving view of data with std sd (for unit-variance
    data, `sigma / sqrt(1 + sigma^2)`), so the box grows with the noise level, shaped by
    `exponent` (2 in the paper). The floor is the paper's minimum (8/255 of the [0, 1] pixel range
    for images) (?):
      `min_units='data'`: `r_min` is the smallest perturbation *in data units*, as a fraction of
          sigma_data, so floor = r_min * sd / sigma (the box `sigma w` never shrinks below
          r_min * sd). 8/255 of [0, 1] is 16/255 of [-1, 1] = 0.125 sd for images with sd = 0.5,
          hence the default r_min = 0.125. For a toy, sigma_data is the data's RMS std per
          coordinate (ring8: 1.42, so the floor is 0.18 data units, about 1.8 mode stds).
      `min_units='noise'`: `r_min` is a floor in noise units directly.
    Returns a tensor shaped like sigma (float).
    """
    for name, v in (("r_max", r_max), ("r_min", r_min), ("exponent", exponent)):
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"budget {name} must be a finite number >= 0, got {v}")
    if min_units not in ("data", "noise"):
        raise ValueError(f"min_units must be 'data' or 'noise', got {min_units!r}")
    if not torch.is_tensor(sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
    u = sigma / (sigma ** 2 + sigma_data ** 2).sqrt()
    floor = r_min * sigma_data / sigma if min_units == "data" else torch.full_like(sigma, r_min)
    return torch.maximum(r_max * u ** exponent, floor)


@dataclass
class ATConfig:
    """Every knob of AT for diffusion models; defaults as docs/science.md section 3 (? = reconstructed).

    Args:
        variant: 'standard' (no AT term), 'random', 'adversarial' or 'invariance'.
        lam: weight lambda of the AT term (0.3; the paper finds 0.5 over-smooths).
        r_max, exponent, r_min, min_units: the budget schedule, see :func:`at_budget`.
        fgsm_step: FGSM step as a fraction of r(sigma) (1.0: a full step from the random start).
        attack_target: what FGSM maximises: 'gap' = ||eps_th(x') - eps_th(x)||^2 (the paper),
            'residual' = the AT term itself.
        detach_clean: stop the gradient through eps_th(x) inside the target (?): False lets the
            AT term move both predictions, as the loss is written.
        target: the equivariance target: 'prediction' = eps_th(x) + w (the paper), 'true-noise'
            = eps + w with the noise eps that made x (a denoising loss at x + sigma w; no
            gradient through a prediction, so detach_clean changes nothing there).
        weighting: 'edm' or 'eps' per-sigma weight of both terms (:func:`eps_weight`).
    """

    variant: str = "adversarial"
    lam: float = 0.3
    r_max: float = 1.0
    exponent: float = 2.0
    r_min: float = 0.125
    min_units: str = "data"
    fgsm_step: float = 1.0
    attack_target: str = "gap"
    detach_clean: bool = False
    weighting: str = "edm"
    target: str = "prediction"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown AT variant {self.variant!r}; choose one of {VARIANTS}")
        if not (self.lam >= 0 and math.isfinite(self.lam)):
            raise ValueError(f"lambda must be a finite number >= 0, got {self.lam}")
        if not (self.fgsm_step >= 0):
            raise ValueError(f"fgsm_step must be >= 0, got {self.fgsm_step}")
        if self.attack_target not in ("gap", "residual"):
            raise ValueError(f"attack_target must be 'gap' or 'residual', got {self.attack_target!r}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown AT target {self.target!r}; choose one of {TARGETS}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose one of {WEIGHTINGS}")
        at_budget(1.0, 1.0, self.r_max, self.exponent, self.r_min, self.min_units)  # validates

    def budget(self, sigma: Tensor, sigma_data: float) -> Tensor:
        return at_budget(sigma, sigma_data, self.r_max, self.exponent, self.r_min, self.min_units)

    def as_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------- the two terms
def _eps(D, x: Tensor, sigma: Tensor) -> Tensor:
    """eps_th(x) = (x - D(x, sigma)) / sigma."""
    return (x - D(x, sigma)) / expand_sigma(sigma, x)


def denoising_loss(D, x0: Tensor, sigma: Tensor, noise: Tensor, sigma_data: float,
                   weighting: str = "edm"):
    """The denoising loss E weight(sigma) ||eps_th(x0 + sigma n) - n||^2 (EDM eq. 2 / DDPM eq. 14).

    Returns (loss, eps_clean): the scalar (mean over batch and coordinates) and eps_th(x), (B, d),
    with its graph, for the AT term to reuse.
    """
    x = x0 + expand_sigma(sigma, x0) * noise                           # (B, d)
    eps_clean = _eps(D, x, sigma)
    per_point = ((eps_clean - noise) ** 2).flatten(1).mean(1)          # (B,)
    return (eps_weight(sigma, sigma_data, weighting) * per_point).mean(), eps_clean


def random_perturbation(r: Tensor, shape, generator=None) -> Tensor:
    """w uniform in the box [-r, r]^d per point; r is (B,)."""
    u = torch.rand(shape, generator=generator, device=r.device, dtype=r.dtype)
    return (2 * u - 1) * r.reshape(-1, *([1] * (len(shape) - 1)))


def prediction_gap(D, x: Tensor, sigma: Tensor, eps_clean: Tensor, w: Tensor) -> Tensor:
    """Per point mean_j (eps_th(x + sigma w) - eps_th(x))_j^2, (B,)."""
    x_pert = x + expand_sigma(sigma, x) * w
    return ((_eps(D, x_pert, sigma) - eps_clean) ** 2).flatten(1).mean(1)


def fgsm_perturbation(D, x: Tensor, sigma: Tensor, eps_clean: Tensor, r: Tensor, step: float = 1.0,
                      target: str = "gap", generator=None) -> Tensor:
    """Random start in the box, one FGSM step of size `step * r` on the objective, projection.

    Objective `gap`: ||eps_th(x + sigma w) - eps_th(x)||^2 (the paper); `residual`: the
    equivariance residual ||eps_th(x + sigma w) - eps_th(x) - w||^2. eps_clean is detached.
    One forward and one backward pass (to the input only). Returns w detached, (B, d).
    """
    eps_clean = eps_clean.detach()
    w = random_perturbation(r, x.shape, generator).requires_grad_(True)
    with torch.enable_grad():
        gap = _eps(D, x.detach() + expand_sigma(sigma, x) * w, sigma) - eps_clean
        if target == "residual":
            gap = gap - w
        (grad,) = torch.autograd.grad((gap ** 2).sum(), w)
    rb = r.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.maximum(torch.minimum(w.detach() + step * rb * grad.sign(), rb), -rb)


def equivariance_loss(D, x: Tensor, sigma: Tensor, eps_clean: Tensor, w: Tensor, sigma_data: float,
                      weighting: str = "edm", invariance: bool = False,
                      detach_clean: bool = False, noise: Tensor | None = None) -> Tensor:
    """The AT term  E weight(sigma) ||eps_th(x + sigma w) - (eps_th(x) + w)||^2  (Briglia et al.).

    With `invariance=True` the target is eps_th(x) (classifier-style AT, the failing ablation).
    `detach_clean` stops the gradient through eps_th(x) in the target. With `noise` (the true
    noise eps of x = x0 + sigma eps) the target is eps (+ w) instead of the prediction eps_th(x)
    (``ATConfig(target="true-noise")``). Scalar, mean over batch and coordinates (lambda is
    applied by the caller).
    """
    x_pert = x + expand_sigma(sigma, x) * w                            # x' = x + sigma w
    if noise is not None:
        target = noise
    else:
        target = eps_clean.detach() if detach_clean else eps_clean
    if not invariance:
        target = target + w
    per_point = ((_eps(D, x_pert, sigma) - target) ** 2).flatten(1).mean(1)
    return (eps_weight(sigma, sigma_data, weighting) * per_point).mean()


def at_dm_loss(D, x0: Tensor, config: ATConfig, sigma_data: float, sigma: Tensor | None = None,
               noise: Tensor | None = None, P_mean: float = -1.2, P_std: float = 1.2,
               generator=None):
    """One training loss of a denoiser on clean-or-not data x0 (B, d): denoising + lambda * AT.

    sigma defaults to the EDM log-normal (P_mean, P_std) and noise to N(0, I), both drawn from
    `generator`. Returns (loss, parts) with detached scalars `loss`, `loss_dsm`, `loss_at` and
    the mean budget `r_mean`.
    """
    B = x0.shape[0]
    if sigma is None:
        sigma = edm_training_sigmas(B, P_mean, P_std, generator, x0.device).to(x0.dtype)
    sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
    sigma = sigma.expand(B) if sigma.ndim == 0 else sigma              # (B,)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    loss_dsm, eps_clean = denoising_loss(D, x0, sigma, noise, sigma_data, config.weighting)
    parts = {"loss_dsm": loss_dsm.detach()}
    if config.variant == "standard" or config.lam == 0:
        parts.update(loss=loss_dsm.detach(), loss_at=torch.zeros(()), r_mean=torch.zeros(()))
        return loss_dsm, parts
    x = x0 + expand_sigma(sigma, x0) * noise
    r = config.budget(sigma, sigma_data).to(x0.dtype)                  # (B,)
    if config.variant == "random":
        w = random_perturbation(r, x.shape, generator)
    else:
        target = "gap" if config.variant == "invariance" else config.attack_target
        w = fgsm_perturbation(D, x, sigma, eps_clean, r, config.fgsm_step, target, generator)
    loss_at = equivariance_loss(D, x, sigma, eps_clean, w, sigma_data, config.weighting,
                                invariance=config.variant == "invariance",
                                detach_clean=config.detach_clean,
                                noise=noise if config.target == "true-noise" else None)
    loss = loss_dsm + config.lam * loss_at
    parts.update(loss=loss.detach(), loss_at=loss_at.detach(), r_mean=r.mean().detach())
    return loss, parts


# ----------------------------------------------------------------------- cost
# Network passes per training example. Forward: D(x) for the denoising loss, D(x + sigma w0) for
# the FGSM step, D(x') for the AT term. Backward: one to the input for FGSM, and the weight
# gradient through every forward pass the loss uses (x, and x').
COST = {
    "standard": {"forward": 1, "backward": 1},
    "random": {"forward": 2, "backward": 2},
    "adversarial": {"forward": 3, "backward": 3},
    "invariance": {"forward": 3, "backward": 3},
}


def cost_table(backward_over_forward: float = 2.0) -> dict:
    """Passes per example of each variant and the cost relative to standard training, taking a
    backward pass as `backward_over_forward` forwards (about 2 for an MLP). The paper quotes
    about 2.5x for the adversarial variant; the study also measures seconds per step."""
    base = 1 + backward_over_forward
    return {v: {**c, "relative": (c["forward"] + backward_over_forward * c["backward"]) / base}
            for v, c in COST.items()}


__all__ = ["ATConfig", "VARIANTS", "TARGETS", "at_budget", "eps_weight", "denoising_loss",
           "random_perturbation", "prediction_gap", "fgsm_perturbation", "equivariance_loss",
           "at_dm_loss", "cost_table", "COST"]
