"""Adversarial attacks on classifiers: FGSM and PGD (the TRADES inner maximisation is in ``trades``).

One signature for every attack: ``attack(model, x, y, *, eps, ...) -> x_adv``. The input
contract, the budget checks, the projection onto the ball and the box, and
:func:`~dmat_core.robust.threat.attack_mode` (BN statistics untouched, the caller's modes
restored) are in ``threat`` (RobustBench convention, docs/science.md section 5): images in
[0, 1] (``clip=(0, 1)``; ``clip=None`` for the raw coordinates of the 2D toys), the model
returns logits, every returned point satisfies ``||x_adv - x|| <= eps`` and the box exactly.
Losses are computed in float32, so attacks work under ``torch.autocast``. With
DistributedDataParallel pass ``model.module``: the attack must not start DDP's gradient sync.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .threat import (Clip, ascend, ascent_direction, attack_mode, check_attack_inputs, check_labels,
                     labels_checked_on_first_call, linf_bounds, project, sample_ball)

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


class _WorstSeen:
    """Per example the worst point seen for the model: a success beats a failure, then the
    higher objective. Called with ``(x_t, logits_t, objective_t)``; the result is ``.x``."""

    def __init__(self, y: torch.Tensor, y_target: Optional[torch.Tensor]):
        self.y, self.y_target, self.best = y, y_target, None

    def __call__(self, x_t: torch.Tensor, logits: torch.Tensor, objective: torch.Tensor) -> None:
        xc, sc, oc = x_t.detach(), _success(logits.detach(), self.y, self.y_target), objective.detach()
        if self.best is None:
            self.best = xc, sc, oc
            return
        xb, sb, ob = self.best
        take = (sc & ~sb) | ((sc == sb) & (oc > ob))
        view = take.view(-1, *([1] * (xb.dim() - 1)))
        self.best = torch.where(view, xc, xb), sb | sc, torch.where(take, oc, ob)

    @property
    def x(self) -> torch.Tensor:
        return self.best[0]


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
    return project(x + eps * ascent_direction(g, norm), x, eps, norm, clip)


def pgd_steps(model: nn.Module, x: torch.Tensor, x_start: torch.Tensor,
              objective: Callable[[torch.Tensor], torch.Tensor], *, eps: float, norm: str, steps: int,
              alpha: float, clip: Clip = (0.0, 1.0), bounds: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
              on_iterate: Optional[Callable] = None) -> torch.Tensor:
    """One PGD run from ``x_start``: ``steps`` times forward, objective, gradient, step, projection.

    The loop of Madry et al. (ICLR 2018, sec. 2.1) and torchattacks' PGD, with no checks:
    ``objective`` maps logits ``(B, K)`` to the per-example values ``(B,)`` the attacker
    maximises (e.g. ``lambda z: attack_objective(z, y)``); ``alpha`` is the step size;
    ``bounds`` is ``linf_bounds(x, eps, clip)`` computed once (Linf), see :func:`project`.
    ``on_iterate(x_t, logits_t, objective_t)``, if given, sees every iterate before its step
    (:func:`pgd` keeps the worst). Returns the last iterate ``x_steps``, which is not evaluated.
    Run it inside :func:`attack_mode`, as :func:`pgd` and ``trades.trades_inner`` do.
    """
    x_adv = x_start.detach()
    with torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            loss = objective(logits)  # (B,)
            if on_iterate is not None:
                on_iterate(x_adv, logits, loss)
            g, = torch.autograd.grad(loss.sum(), x_adv)
            x_adv = project(ascend(x_adv, g, alpha, norm), x, eps, norm, clip, bounds)
    return x_adv


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
        steps: int = 10, step_size: Optional[float] = None, random_start: bool = True,
        restarts: int = 1, loss: str = "ce", targeted: bool = False,
        y_target: Optional[torch.Tensor] = None, clip: Clip = (0.0, 1.0),
        bn_mode: str = "eval", keep_best: bool = True) -> torch.Tensor:
    """Projected Gradient Descent (Madry, Makelov, Schmidt, Tsipras & Vladu, ICLR 2018, sec. 2.1).

    ``x_{t+1} = Proj_{B(x, eps) & box}(x_t + alpha * d_t)`` with ``d_t = sign(g_t)`` (Linf) or
    ``g_t / ||g_t||_2`` (L2), ``g_t = grad_x L(x_t, y)``. Returns, per example, the worst point
    seen over all iterates and restarts (a misclassified point first, then the highest loss).
    Each run is :func:`pgd_steps`; this wrapper checks the inputs (the labels against the
    logits of the first forward pass), draws the starts and keeps the worst point.

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
    objective = lambda logits: attack_objective(logits, y, loss, y_target)  # noqa: E731
    worst = _WorstSeen(y, y_target) if keep_best else None
    with attack_mode(model, bn_mode), labels_checked_on_first_call(model, y, y_target) as model:
        for _ in range(restarts):
            x_adv = sample_ball(x, eps, norm, clip, bounds) if random_start else x.clone()
            x_adv = pgd_steps(model, x, x_adv, objective, eps=eps, norm=norm, steps=steps, alpha=alpha,
                              clip=clip, bounds=bounds, on_iterate=worst)
            if keep_best:  # the last iterate too: one forward pass without gradient
                with torch.no_grad():
                    logits = model(x_adv)
                worst(x_adv, logits, objective(logits))
    return worst.x if keep_best else x_adv
