"""Adversarial attacks on classifiers: FGSM, PGD and the TRADES inner maximisation.

One signature for every attack: ``attack(model, x, y, *, eps, ...) -> x_adv``.

Input contract (RobustBench convention, SCIENCE.md section 5): ``model`` maps images in
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
Losses are computed in float32, so attacks work under ``torch.autocast``. With
DistributedDataParallel pass ``model.module``: the attack must not start DDP's gradient sync.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
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


def _ascent_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest ascent direction of unit norm: sign(g) (Linf) or g/||g||_2 (L2)."""
    if norm == "linf":
        return g.sign()
    return g / _flat_norm(g, "l2").clamp_min(1e-12)


def _ascend(x_adv: torch.Tensor, g: torch.Tensor, step: float, norm: str) -> torch.Tensor:
    """``x_adv + step * direction(g)`` as a new tensor; ``g`` (the attack's own gradient) is
    overwritten. For Linf ``step * sign`` is exact, so the fused add equals the plain sum."""
    if norm == "linf":
        return torch.add(x_adv.detach(), g.sign_(), alpha=step)
    return x_adv.detach() + step * _ascent_direction(g, norm)


# ----------------------------------------------------------------------------- objectives

def attack_objective(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce",
                     y_target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-example objective the attacker maximises, in float32, shape ``(B,)``.

    ``'ce'``: CE(z, y) (untargeted) or -CE(z, t) (targeted).
    ``'cw'``: Carlini & Wagner (S&P 2017, sec. V.A) objective f6 without the clamp at -kappa:
    ``max_{j != y} z_j - z_y`` (untargeted) or ``z_t - max_{j != t} z_j`` (targeted).
    """
    z = logits.float()
    if loss == "ce":
        if y_target is None:
            return F.cross_entropy(z, y, reduction="none")
        return -F.cross_entropy(z, y_target, reduction="none")
    if loss == "cw":
        label = y if y_target is None else y_target
        z_label = z.gather(1, label[:, None]).squeeze(1)
        z_other = z.scatter(1, label[:, None], float("-inf")).amax(1)
        return z_other - z_label if y_target is None else z_label - z_other
    raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")


def _success(logits: torch.Tensor, y: torch.Tensor, y_target: Optional[torch.Tensor]) -> torch.Tensor:
    pred = logits.argmax(1)
    return pred != y if y_target is None else pred == y_target


def _keep_worst(best, cand):
    """Per example keep the worse point for the model: a success beats a failure, then higher loss."""
    if best is None:
        return cand
    (xb, sb, ob), (xc, sc, oc) = best, cand
    take = (sc & ~sb) | ((sc == sb) & (oc > ob))
    view = take.view(-1, *([1] * (xb.dim() - 1)))
    return torch.where(view, xc, xb), sb | sc, torch.where(take, oc, ob)


# ----------------------------------------------------------------------------- attacks

def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
         loss: str = "ce", targeted: bool = False, y_target: Optional[torch.Tensor] = None,
         clip: Clip = (0.0, 1.0), bn_mode: str = "eval") -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy, ICLR 2015, sec. 4).

    ``x_adv = clip(x + eps * sign(grad_x L(x, y)))`` for Linf; for ``norm='l2'`` the step is
    ``eps * g / ||g||_2`` (the "fast gradient method").

    Args:
        model: classifier, inputs in [0, 1] (or raw coordinates with ``clip=None``), logits out.
        x: ``(B, ...)`` float inputs inside ``clip``. y: ``(B,)`` integer labels.
        eps: budget, finite and >= 0 (<= box width for Linf). norm: ``'linf'`` (default) or ``'l2'``.
        loss: ``'ce'`` (default) or ``'cw'`` margin. targeted / y_target: with ``y_target``
            (target labels) the step moves towards the target class, as in :func:`pgd`.
        clip: input box, default ``(0, 1)``; None for unbounded inputs. bn_mode: see :func:`attack_mode`.
    """
    eps, norm = check_attack_inputs(x, y, eps, norm, clip)
    if targeted and y_target is None:
        raise ValueError("targeted=True needs y_target (the target labels)")
    x = x.detach()
    with attack_mode(model, bn_mode), torch.enable_grad():
        x_req = x.clone().requires_grad_(True)
        logits = model(x_req)
        check_labels(y, logits.shape[1])
        if y_target is not None:
            check_labels(y_target, logits.shape[1], "y_target")
        g, = torch.autograd.grad(attack_objective(logits, y, loss, y_target).sum(), x_req)
    return project(x + eps * _ascent_direction(g, norm), x, eps, norm, clip)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
        steps: int = 10, step_size: Optional[float] = None, random_start: bool = True,
        restarts: int = 1, loss: str = "ce", targeted: bool = False,
        y_target: Optional[torch.Tensor] = None, clip: Clip = (0.0, 1.0),
        bn_mode: str = "eval", keep_best: bool = True) -> torch.Tensor:
    """Projected Gradient Descent (Madry, Makelov, Schmidt, Tsipras & Vladu, ICLR 2018, sec. 2.1).

    ``x_{t+1} = Proj_{B(x, eps) & box}(x_t + alpha * d_t)`` with ``d_t = sign(g_t)`` (Linf) or
    ``g_t / ||g_t||_2`` (L2), ``g_t = grad_x L(x_t, y)``. Returns, per example, the worst point
    seen over all iterates and restarts (a misclassified point first, then the highest loss).

    Args:
        model: classifier, inputs in [0, 1] (or raw coordinates with ``clip=None``), logits out.
        x: ``(B, ...)`` float inputs inside ``clip``. y: ``(B,)`` integer true labels.
        eps: budget, finite and >= 0 (<= box width for Linf). norm: ``'linf'`` (default) or ``'l2'``.
        steps: iterations, default 10. step_size: alpha, default ``2.5 * eps / steps`` (Madry et al.).
        random_start: start uniformly in the ball (default True); False starts at ``x``.
        restarts: independent runs, default 1; the worst result per example is kept.
        loss: ``'ce'`` (default) or ``'cw'``, the Carlini & Wagner (S&P 2017) margin.
        targeted / y_target: with ``y_target`` (target labels) the attack pushes towards the
            target class; ``targeted=True`` without ``y_target`` is an error.
        clip: input box, default ``(0, 1)``; None for unbounded inputs (2D toys).
        bn_mode: ``'eval'`` (default) or ``'frozen'``, see :func:`attack_mode`.
        keep_best: return the worst iterate seen (default; costs one gradient-free forward pass
            per restart for the last iterate). False returns the last iterate of the last
            restart, like Madry et al.'s and torchattacks' PGD.
    """
    eps, norm = check_attack_inputs(x, y, eps, norm, clip)
    if targeted and y_target is None:
        raise ValueError("targeted=True needs y_target (the target labels)")
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    x = x.detach()
    bounds = linf_bounds(x, eps, clip) if norm == "linf" else None
    best, last, checked = None, None, False
    with attack_mode(model, bn_mode), torch.enable_grad():
        for _ in range(restarts):
            x_adv = sample_ball(x, eps, norm, clip, bounds) if random_start else x.clone()
            for t in range(steps + 1):
                if t == steps and not keep_best:
                    last = x_adv.detach()
                    break
                x_adv.requires_grad_(t < steps)
                with torch.set_grad_enabled(t < steps):   # the last iterate is only evaluated
                    logits = model(x_adv)
                if not checked:  # first forward pass: the labels can now be checked
                    check_labels(y, logits.shape[1])
                    if y_target is not None:
                        check_labels(y_target, logits.shape[1], "y_target")
                    checked = True
                objective = attack_objective(logits, y, loss, y_target)  # (B,)
                if keep_best:
                    cand = (x_adv.detach(), _success(logits.detach(), y, y_target), objective.detach())
                    best = _keep_worst(best, cand)
                if t == steps:
                    break
                g, = torch.autograd.grad(objective.sum(), x_adv)
                x_adv = project(_ascend(x_adv, g, alpha, norm), x, eps, norm, clip, bounds)
    return best[0] if keep_best else last


def trades_inner(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                 eps: float = 8 / 255, norm: str = "linf", steps: int = 10,
                 step_size: Optional[float] = None, init: str = "normal", init_scale: float = 1e-3,
                 clip: Clip = (0.0, 1.0), bn_mode: str = "eval") -> torch.Tensor:
    """Inner maximisation of TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, ICML 2019, sec. 4).

    ``x_adv = argmax_{||x' - x|| <= eps} KL(p(x) || p(x'))``, ``p = softmax(model(.))``, by
    projected sign (Linf) or normalised (L2) gradient ascent. This is the quantity
    ``nn.KLDivLoss(log_softmax(z(x')), softmax(z(x)))`` of the TRADES and DM-Improves-AT code,
    which papers often write KL(p_adv || p_clean) after the argument order of KLDivLoss.
    ``y`` is not used by the objective (TRADES is label-free); it is validated if given.

    Args:
        eps: default 8/255. norm: ``'linf'`` (default) or ``'l2'`` (128/255 in the DM paper).
        steps: default 10. step_size: default ``eps / 4`` for Linf (2/255 at 8/255, as in TRADES)
            and ``2 * eps / steps`` for L2 (the TRADES L2 code).
        init: ``'normal'`` (default, ``x + init_scale * N(0, I)``, TRADES), ``'uniform'``
            (uniform in the ball, the DM-Improves-AT trainer) or ``'none'``.
        clip: input box, default ``(0, 1)``. bn_mode: see :func:`attack_mode`.
    """
    eps, norm = check_attack_inputs(x, y, eps, norm, clip)
    if step_size is None:
        step_size = eps / 4 if norm == "linf" else 2 * eps / steps
    x = x.detach()
    bounds = linf_bounds(x, eps, clip) if norm == "linf" else None
    with attack_mode(model, bn_mode):
        with torch.no_grad():
            logits_clean = model(x)
            if y is not None:
                check_labels(y, logits_clean.shape[1])
            p_clean = F.softmax(logits_clean.float(), dim=1)  # (B, K), a constant of the attack
        if init == "normal":
            x_adv = project(x + init_scale * torch.randn_like(x), x, eps, norm, clip, bounds)
        elif init == "uniform":
            x_adv = sample_ball(x, eps, norm, clip, bounds)
        elif init == "none":
            x_adv = x.clone()
        else:
            raise ValueError(f"init must be 'normal', 'uniform' or 'none', got {init!r}")
        with torch.enable_grad():
            for _ in range(steps):
                x_adv.requires_grad_(True)
                log_p_adv = F.log_softmax(model(x_adv).float(), dim=1)
                kl = F.kl_div(log_p_adv, p_clean, reduction="sum")  # sum_i KL(p(x_i) || p(x'_i))
                g, = torch.autograd.grad(kl, x_adv)
                x_adv = project(_ascend(x_adv, g, step_size, norm), x, eps, norm, clip, bounds)
    return x_adv
