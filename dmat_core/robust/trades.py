"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, ICML 2019, sec. 4) in one place.

    loss, parts = trades(model, x, y, eps=8 / 255, steps=10, beta=5.0)   # then loss.backward()

:func:`trades` is the ``trades_loss(model, x_natural, y, optimizer, step_size, epsilon,
perturb_steps, beta, distance)`` of the TRADES code, also used by Wang et al. (ICML 2023,
DM-Improves-AT): the inner maximisation :func:`trades_inner` (the KL divergence from the clean
prediction, by PGD), then the outer loss :func:`trades_loss` ``CE_ls(z(x), y) + beta *
KL(p(x) || p(x_adv))`` (:func:`trades_kl`), see docs/science.md section 4. The inner
maximisation leaves BN statistics alone (``bn_mode``, see
:func:`~dmat_core.robust.threat.attack_mode`); the outer loss runs the model in the caller's
mode (train mode during training: these two forward passes update the BN statistics).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import pgd_steps
from .threat import Clip, attack_mode, check_attack_inputs, check_labels, linf_bounds, project, sample_ball


def trades_inner(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                 eps: float = 8 / 255, norm: str = "linf", steps: int = 10,
                 step_size: Optional[float] = None, init: str = "normal", init_scale: float = 1e-3,
                 clip: Clip = (0.0, 1.0), bn_mode: str = "eval") -> torch.Tensor:
    """Inner maximisation of TRADES (Zhang et al., ICML 2019, sec. 4): returns ``x_adv``.

    ``x_adv = argmax_{||x' - x|| <= eps} KL(p(x) || p(x'))``, ``p = softmax(model(.))``, by
    projected sign (Linf) or normalised (L2) gradient ascent (:func:`~dmat_core.robust.attacks.pgd_steps`
    on the KL objective). This is the quantity
    ``nn.KLDivLoss(log_softmax(z(x')), softmax(z(x)))`` of the TRADES and DM-Improves-AT code,
    which papers often write KL(p_adv || p_clean) after the argument order of KLDivLoss.
    ``y`` is not used by the objective (TRADES is label-free); it is validated if given.

    Args:
        eps: default 8/255. norm: ``'linf'`` (default) or ``'l2'`` (128/255 in the DM paper).
        steps: default 10. step_size: default ``eps / 4`` for Linf (2/255 at 8/255, as in TRADES)
            and ``2 * eps / steps`` for L2 (the TRADES L2 code).
        init: ``'normal'`` (default, ``x + init_scale * N(0, I)``, TRADES), ``'uniform'``
            (uniform in the ball, the DM-Improves-AT trainer) or ``'none'``.
        clip: input box, default ``(0, 1)``. bn_mode: see :func:`~dmat_core.robust.threat.attack_mode`.
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

        def kl(logits):  # (B,): KL(p(x_i) || p(x'_i)) per example
            return F.kl_div(F.log_softmax(logits.float(), dim=1), p_clean, reduction="none").sum(1)

        return pgd_steps(model, x, x_adv, kl, eps=eps, norm=norm, steps=steps, alpha=step_size,
                         clip=clip, bounds=bounds)


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """TRADES regulariser, batch mean of ``sum_k p_k(x) [log p_k(x) - log p_k(x')]``.

    In the usual notation this is KL(p_clean || p_adv); it equals
    ``nn.KLDivLoss(reduction='batchmean')(log_softmax(logits_adv), softmax(logits_clean))``,
    the expression of the TRADES and DM-Improves-AT code, whose argument order reads like
    KL(p_adv || p_clean) (docs/science.md section 4). Gradients flow through both arguments,
    as in the reference code. Computed in float32.
    """
    log_p_adv = F.log_softmax(logits_adv.float(), dim=1)
    p_clean = F.softmax(logits_clean.float(), dim=1)
    return F.kl_div(log_p_adv, p_clean, reduction="batchmean")


def trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                beta: float = 5.0, label_smoothing: float = 0.1) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """TRADES objective (Zhang et al., ICML 2019, sec. 4) as used by Wang et al. (ICML 2023).

    ``L = CE_ls(z(x), y) + beta * KL(p(x) || p(x_adv))`` with label smoothing ``ls``: the
    target is ``(1 - ls) * onehot(y) + ls / K`` (``F.cross_entropy(label_smoothing=ls)``, the
    same as the SmoothCrossEntropyLoss of DM-Improves-AT). Defaults: beta 5, smoothing 0.1.

    Returns ``(loss, parts)``, parts: ``loss``, ``ce_clean``, ``kl``, ``acc_clean``, ``acc_adv``.
    """
    logits_clean = model(x)  # (B, K)
    logits_adv = model(x_adv)  # (B, K)
    ce = F.cross_entropy(logits_clean.float(), y, label_smoothing=label_smoothing)
    kl = trades_kl(logits_adv, logits_clean)
    loss = ce + beta * kl
    parts = {"loss": loss.detach(), "ce_clean": ce.detach(), "kl": kl.detach(),
             "acc_clean": (logits_clean.argmax(1) == y).float().mean().detach(),
             "acc_adv": (logits_adv.argmax(1) == y).float().mean().detach()}
    return loss, parts


def trades(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
           norm: str = "linf", steps: int = 10, step_size: Optional[float] = None, init: str = "normal",
           beta: float = 5.0, label_smoothing: float = 0.1, bn_mode: str = "eval",
           clip: Clip = (0.0, 1.0), attack_model: Optional[nn.Module] = None
           ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The TRADES loss of a batch (Zhang et al., ICML 2019, sec. 4): :func:`trades_inner`, then
    :func:`trades_loss`. Returns ``(loss, parts)`` as :func:`trades_loss`.

    The arguments are those of the two steps. ``attack_model`` (default ``model``) is the model
    the inner maximisation runs on: a trainer passes the bare module (not the DDP wrapper, which
    must not sync gradients during the attack), or a view of it that scales input gradients
    under fp16, while the outer loss runs through ``model``.
    """
    x_adv = trades_inner(model if attack_model is None else attack_model, x, y, eps=eps, norm=norm,
                         steps=steps, step_size=step_size, init=init, clip=clip, bn_mode=bn_mode)
    return trades_loss(model, x, y, x_adv, beta=beta, label_smoothing=label_smoothing)
