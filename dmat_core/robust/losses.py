"""Outer losses of adversarial training: PGD-AT (Madry et al. 2018) and TRADES (Zhang et al. 2019).

Both take the adversarial points already computed (by :func:`dmat_core.robust.attacks.pgd` or
:func:`dmat_core.robust.attacks.trades_inner`) and run the model in the caller's mode (train mode
during training, so BN statistics are updated by these forward passes only). Each returns
``(loss, parts)``: ``loss`` a scalar with gradient, ``parts`` a dict of detached scalars
for logging (no ``.item()``, so no GPU synchronisation).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """TRADES regulariser, batch mean of ``sum_k p_k(x) [log p_k(x) - log p_k(x')]``.

    In the usual notation this is KL(p_clean || p_adv); it equals
    ``nn.KLDivLoss(reduction='batchmean')(log_softmax(logits_adv), softmax(logits_clean))``,
    the expression of the TRADES and DM-Improves-AT code, written KL(p_adv || p_clean) in
    SCIENCE.md after the argument order of KLDivLoss. Gradients flow through both arguments,
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


def pgd_at_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                label_smoothing: float = 0.0) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """PGD adversarial training (Madry et al., ICLR 2018, eq. 2.1): ``L = CE(z(x_adv), y)``.

    ``x`` (the clean batch) is not used by the loss: it is in the signature so that a trainer
    can swap :func:`trades_loss` and :func:`pgd_at_loss`; a clean forward pass here would also
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
