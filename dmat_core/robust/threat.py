"""The threat model every attack shares: inputs, budget, ball and box, and the model's mode.

Input contract (RobustBench convention, docs/science.md section 5): ``model`` maps images in
[0, 1] to **logits** ``(B, K)``; normalisation lives inside the model. ``x`` is a float
tensor in [0, 1] (``clip=(0, 1)``, the default) and ``y`` holds integer labels in
``[0, K)``. The 2D toy models take raw coordinates instead: pass ``clip=None`` to disable
the box (or ``clip=(lo, hi)`` for another box). Every returned point satisfies the budget
``||x_adv - x|| <= eps`` and the box exactly (projection onto the ball, then clamping into
the box: the clamp only shrinks each coordinate of the perturbation, so the budget holds).

During an attack the model runs inside :func:`attack_mode`: BatchNorm running statistics are
never updated (``bn_mode='eval'``: the whole model in eval mode, the default; or
``bn_mode='frozen'``: train mode with BN using batch statistics without tracking them, as
``track_bn_stats(model, False)`` in the DM-Improves-AT trainer). The caller's train/eval
flags are restored afterwards and no gradient is accumulated into model parameters.

The attacks themselves are in ``attacks`` (FGSM, PGD) and ``trades`` (the TRADES inner
maximisation).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

Clip = Optional[Tuple[float, float]]
NORMS = ("linf", "l2")


@contextmanager
def attack_mode(model: nn.Module, bn_mode: str = "eval") -> Iterator[nn.Module]:
    """Context for running an attack: BN statistics untouched, parameters frozen, mode restored.

    ``bn_mode='eval'`` puts every submodule in eval mode (BN uses running statistics, dropout
    off). ``bn_mode='frozen'`` keeps the caller's modes but sets ``track_running_stats=False``
    on every BN layer, so BN normalises with batch statistics and leaves its buffers alone.
    """
    if bn_mode not in ("eval", "frozen"):
        raise ValueError(f"bn_mode must be 'eval' or 'frozen', got {bn_mode!r}")
    training = {m: m.training for m in model.modules()}
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    tracking = {m: m.track_running_stats for m in model.modules() if isinstance(m, _BatchNorm)}
    try:
        if bn_mode == "eval":
            model.eval()
        else:
            for m in tracking:
                m.track_running_stats = False
        for p in requires_grad:
            p.requires_grad_(False)
        yield model
    finally:
        for m, flag in training.items():
            m.training = flag
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
        for m, flag in tracking.items():
            m.track_running_stats = flag


# ----------------------------------------------------------------------------- checks

def check_budget(eps: float, norm: str) -> Tuple[float, str]:
    """A threat model's budget: ``(eps, norm)`` as a finite float >= 0 and 'linf' or 'l2'."""
    norm = str(norm).lower()
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return eps, norm


def check_attack_inputs(x: torch.Tensor, y: Optional[torch.Tensor], eps: float, norm: str,
                        clip: Clip) -> Tuple[float, str]:
    """Validate the input contract; return ``(eps, norm)`` as float and lower-case string."""
    eps, norm = check_budget(eps, norm)
    if not torch.is_floating_point(x):
        raise ValueError(f"x must be a floating-point tensor (images in [0, 1]), got {x.dtype}; "
                         "divide uint8 images by 255")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    if clip is not None:
        lo, hi = clip
        if norm == "linf" and eps > hi - lo:
            raise ValueError(f"Linf eps={eps} exceeds the width of the input box [{lo}, {hi}]; "
                             "images in [0, 1] need eps <= 1 (8/255 is the usual budget)")
        x_min, x_max = x.min().item(), x.max().item()
        if x_min < lo or x_max > hi:
            raise ValueError(f"x must lie in [{lo}, {hi}] (images in [0, 1], normalisation inside "
                             f"the model); got values in [{x_min:.4g}, {x_max:.4g}]. "
                             "For models on raw coordinates pass clip=None.")
    if y is not None:
        if y.dtype in (torch.bool,) or torch.is_floating_point(y) or torch.is_complex(y):
            raise ValueError(f"labels must be an integer tensor, got {y.dtype}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    return eps, norm


def check_labels(y: torch.Tensor, num_classes: int, name: str = "y") -> None:
    """Labels must index the model's logits: 0 <= y < num_classes."""
    if y.numel() and (y.min().item() < 0 or y.max().item() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}) (the model returns "
                         f"{num_classes} logits); got values in [{y.min().item()}, {y.max().item()}]")


class _Forward(nn.Module):
    """A plain module around one that takes no Python hooks (TorchScript): same forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@contextmanager
def labels_checked_on_first_call(model: nn.Module, y: Optional[torch.Tensor],
                                 y_target: Optional[torch.Tensor] = None) -> Iterator[nn.Module]:
    """Yield the model, checking the labels against the logits of its first forward pass.

    The number of classes is known only once the model has run; a one-shot forward hook
    checks ``0 <= y < K`` there (before any loss indexes the logits with ``y``) and removes
    itself, so the attack loop holds no checks and the model runs no extra pass. A TorchScript
    module (no Python hooks) is yielded inside a plain module that carries the hook.
    """
    def check(module, inputs, logits):
        handle.remove()
        if y is not None:
            check_labels(y, logits.shape[1])
        if y_target is not None:
            check_labels(y_target, logits.shape[1], "y_target")

    hooked = _Forward(model) if isinstance(model, torch.jit.ScriptModule) else model
    handle = hooked.register_forward_hook(check)
    try:
        yield hooked
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- geometry

def _flat_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example norm, shaped ``(B, 1, ..., 1)`` for broadcasting."""
    flat = v.flatten(1)
    n = flat.abs().amax(1) if norm == "linf" else flat.norm(p=2, dim=1)
    return n.view(-1, *([1] * (v.dim() - 1)))


def linf_bounds(x: torch.Tensor, eps: float, clip: Clip) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate interval ``[lo, hi]`` of the Linf ball around ``x`` intersected with the box.

    Exact in the tensor's own arithmetic: every value ``v`` in ``[lo, hi]`` has a measured
    ``|v - x| <= eps`` (float subtraction is monotone, so checking the two ends suffices; an
    end that rounding pushed past the budget moves one float towards ``x`` until it holds).
    Computed once per attack, so a projection step is a clamp with no host sync.
    """
    lo, hi = x - eps, x + eps
    for _ in range(64):  # one step is almost always enough; a float has few ulps per eps
        over_lo, over_hi = (lo - x).abs() > eps, (hi - x) > eps
        if not (over_lo.any() or over_hi.any()):
            break
        lo = torch.where(over_lo, torch.nextafter(lo, x), lo)
        hi = torch.where(over_hi, torch.nextafter(hi, x), hi)
    else:  # pragma: no cover - only for a dtype without enough precision for eps
        raise ArithmeticError(f"cannot represent the Linf ball of radius {eps} in {x.dtype}")
    if clip is not None:
        lo, hi = lo.clamp_min(clip[0]), hi.clamp_max(clip[1])
    return lo, hi


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, clip: Clip,
            bounds: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Project onto ``{||x_adv - x|| <= eps}``, then clamp into the box ``clip``.

    Exact in the tensor's own arithmetic: the measured ``(x_adv - x)`` never exceeds ``eps``.
    Linf: ``x + clamp(x_adv - x, -eps, eps)`` (the arithmetic of Madry et al.'s and
    torchattacks' PGD), clamped into ``bounds = linf_bounds(x, eps, clip)``, which also applies
    the box and removes the ulp by which rounding of the sum can overshoot. Attacks pass
    ``bounds`` computed once; without it they are computed here. L2: scale onto the sphere,
    clamp into the box, and shrink by a few ulps where rounding overshoots.
    """
    if norm == "linf":  # in place on one new tensor: the values of the plain expression
        lo, hi = linf_bounds(x, eps, clip) if bounds is None else bounds
        return (x_adv.detach() - x).clamp_(-eps, eps).add_(x).clamp_(lo, hi)
    delta = x_adv - x
    delta = delta * (eps / _flat_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
    x_adv = x + delta
    if clip is not None:
        x_adv = x_adv.clamp(*clip)
    for _ in range(8):  # float rounding of x + delta can overshoot by an ulp
        n = _flat_norm(x_adv - x, "l2")
        if not (n > eps).any():
            break
        shrink = torch.where(n > eps, eps / n * (1 - 4 * torch.finfo(x.dtype).eps), torch.ones_like(n))
        x_adv = x + (x_adv - x) * shrink
    return x_adv.detach()


def sample_ball(x: torch.Tensor, eps: float, norm: str, clip: Clip,
                bounds: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Uniform point of the ball: U(-eps, eps)^d (Linf) or eps * u^(1/d) * g/||g|| (L2)."""
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        g = torch.randn_like(x)
        d = x[0].numel()
        r = eps * torch.rand(x.shape[0], device=x.device, dtype=x.dtype).pow(1.0 / d)
        delta = g / _flat_norm(g, "l2").clamp_min(1e-12) * r.view(-1, *([1] * (x.dim() - 1)))
    return project(x + delta, x, eps, norm, clip, bounds)


def ascent_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest ascent direction of unit norm: sign(g) (Linf) or g/||g||_2 (L2)."""
    if norm == "linf":
        return g.sign()
    return g / _flat_norm(g, "l2").clamp_min(1e-12)


def ascend(x_adv: torch.Tensor, g: torch.Tensor, step: float, norm: str) -> torch.Tensor:
    """``x_adv + step * direction(g)`` as a new tensor; ``g`` (the attack's own gradient) is
    overwritten. For Linf ``step * sign`` is exact, so the fused add equals the plain sum."""
    if norm == "linf":
        return torch.add(x_adv.detach(), g.sign_(), alpha=step)
    return x_adv.detach() + step * ascent_direction(g, norm)
