"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu, ICLR 2018, sec. 2.1) in one place.

    loss, parts = pgd_at(model, x, y, eps=8 / 255, steps=10)   # then loss.backward()

:func:`pgd_at` finds ``x_adv`` by :func:`~dmat_core.robust.attacks.pgd` (the inner maximisation
of the saddle-point problem, eq. 2.1), then returns the outer loss :func:`pgd_at_loss`
``CE(z(x_adv), y)``. The attack leaves BN statistics alone (``bn_mode``, see
:func:`~dmat_core.robust.threat.attack_mode`); the outer loss runs the model in the caller's
mode (train mode during training: that one forward pass updates the BN statistics). The same
shape as :func:`~dmat_core.robust.trades.trades`, so a trainer can swap the two.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import pgd
from .threat import Clip


def pgd_at_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                label_smoothing: float = 0.0) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """PGD adversarial training (Madry et al., ICLR 2018, eq. 2.1): ``L = CE(z(x_adv), y)``.

    ``x`` (the clean batch) is not used by the loss: it is in the signature so that a trainer
    can swap :func:`~dmat_core.robust.trades.trades_loss` and :func:`pgd_at_loss`; a clean forward pass here would also
    update BN statistics in train mode. Returns ``(loss, parts)``, parts: ``loss``, ``ce_adv``,
    ``acc_adv``.
    """
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    logits_adv = model(x_adv)  # (B, K)
    ce = F.cross_entropy(logits_adv.float(), y, label_smoothing=label_smoothing)
    parts = {"loss": ce.detach(), "ce_adv": ce.detach(),
             "acc_adv": (logits_adv.argmax(1) == y).float().mean().detach()}
    return ce, parts


def pgd_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
           steps: int = 10, step_size: Optional[float] = None, random_start: bool = True,
           label_smoothing: float = 0.0, bn_mode: str = "eval", clip: Clip = (0.0, 1.0),
           attack_model: Optional[nn.Module] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The PGD-AT loss of a batch (Madry et al., ICLR 2018, eq. 2.1): :func:`~dmat_core.robust.attacks.pgd`
    (worst iterate kept), then :func:`pgd_at_loss`. Returns ``(loss, parts)`` as :func:`pgd_at_loss`.

    The arguments are those of the two steps. ``attack_model`` (default ``model``) is the model
    the attack runs on: a trainer passes the bare module (not the DDP wrapper, which must not
    sync gradients during the attack), or a view of it that scales input gradients under fp16,
    while the outer loss runs through ``model``.
    """
    x_adv = pgd(model if attack_model is None else attack_model, x, y, eps=eps, norm=norm, steps=steps,
                step_size=step_size, random_start=random_start, clip=clip, bn_mode=bn_mode)
    return pgd_at_loss(model, x, y, x_adv, label_smoothing=label_smoothing)
