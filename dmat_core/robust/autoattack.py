"""Robustness evaluation: clean accuracy, PGD accuracy and AutoAttack (Croce & Hein, ICML 2020).

PGD-k with a random start is the cheap proxy; AutoAttack (``pyautoattack``, the authors'
package) is the number to report (docs/science.md section 5). Models follow the RobustBench
contract: inputs in [0, 1], logits out. Everything runs in eval mode and restores the
caller's mode afterwards.

Gradient masking (Athalye, Carlini & Wagner, ICML 2018) makes a model *look* robust to
gradient attacks because its gradients are useless (random, saturated or zero), not because
it is robust. AutoAttack's sanity checks and :func:`check_model_contract` report it as
:class:`GradientMaskingWarning`.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .attacks import pgd
from .threat import attack_mode, check_attack_inputs, check_labels

Data = Union[Tuple[torch.Tensor, torch.Tensor], Iterable[Tuple[torch.Tensor, torch.Tensor]]]

_EXPLAIN = {  # AutoAttack check message fragment -> what it means
    "randomized defense": "the outputs differ between two identical forward passes (dropout left on, "
        "stochastic layers or input transforms); gradients of a random function are noisy, which masks "
        "them and makes gradient attacks look weak; make the model deterministic in eval mode or "
        "evaluate with version='rand' (expectation over transformation)",
    "probability distribution": "the model returns probabilities, not logits; cross-entropy on "
        "probabilities saturates and its gradients vanish, a form of gradient masking; return logits",
    "zero gradient": "some points have an exactly zero input gradient (saturated softmax, quantisation "
        "or non-differentiable preprocessing); gradient attacks cannot move them, a sign of gradient masking",
    "dynamic defense": "the forward pass itself calls backward/grad (a test-time defense); AutoAttack "
        "may not be adaptive enough, gradient masking is likely",
    "Square Attack has decreased": "the gradient-free Square attack found adversarial points the "
        "gradient attacks missed: the classic symptom of gradient masking",
    "target classes": "more target classes requested than the model has; a configuration problem",
}


class GradientMaskingWarning(UserWarning):
    """A robustness number may be inflated because gradients are masked or the contract is broken."""


def _explain(messages: List[str]) -> List[str]:
    """One explained warning per kind of check (the first message of each kind, with a count)."""
    kinds: dict = {}
    for msg in messages:
        kind = next((f for f in _EXPLAIN if f in msg), msg)
        kinds.setdefault(kind, []).append(msg.strip())
    out = []
    for kind, msgs in kinds.items():
        times = f" (reported {len(msgs)} times)" if len(msgs) > 1 else ""
        text = f" -> {_EXPLAIN[kind]}." if kind in _EXPLAIN else ""
        out.append(f"AutoAttack check: {msgs[0]}{times}{text}")
    return out


def _batches(data: Data, batch_size: int):
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
    else:
        for batch in data:
            yield batch[0], batch[1]


def _device_of(model: nn.Module, device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def clean_accuracy(model: nn.Module, data: Data, *, batch_size: int = 256, device=None) -> float:
    """Fraction of correctly classified points; ``data`` is ``(x, y)`` tensors or a loader."""
    device, correct, n = _device_of(model, device), 0, 0
    with attack_mode(model):
        for x, y in _batches(data, batch_size):
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            n += len(y)
    return correct / max(n, 1)


def pgd_accuracy(model: nn.Module, data: Data, eps: float, norm: str = "linf", *, steps: int = 20,
                 restarts: int = 1, step_size: Optional[float] = None, loss: str = "ce",
                 batch_size: int = 256, device=None) -> float:
    """Robust accuracy under PGD-``steps`` with random start (Madry et al. 2018), worst of ``restarts``."""
    device, correct, n = _device_of(model, device), 0, 0
    for x, y in _batches(data, batch_size):
        x, y = x.to(device), y.to(device)
        x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size,
                    restarts=restarts, loss=loss)
        with torch.no_grad(), attack_mode(model):
            correct += (model(x_adv).argmax(1) == y).sum().item()
        n += len(y)
    return correct / max(n, 1)


def check_model_contract(model: nn.Module, x: Optional[torch.Tensor] = None, *,
                         input_shape: Sequence[int] = (3, 32, 32), device=None) -> List[str]:
    """Warn (:class:`GradientMaskingWarning`) if outputs look like probabilities or are random.

    Runs in eval mode on ``x`` (default: 16 uniform random inputs of ``input_shape``). Returns
    the list of problems found (empty when the model honours the contract).
    """
    device = _device_of(model, device)
    if x is None:
        x = torch.rand(16, *input_shape, device=device)
    problems = []
    with torch.no_grad(), attack_mode(model):
        out1, out2 = model(x.to(device)).float(), model(x.to(device)).float()
    if (out1 >= 0).all() and torch.allclose(out1.sum(1), torch.ones_like(out1[:, 0]), atol=1e-4):
        problems.append("outputs are non-negative and rows sum to 1: they look like probabilities, not "
                        "logits; cross-entropy on probabilities saturates and masks gradients")
    if not torch.equal(out1, out2):
        problems.append("two forward passes in eval mode differ: the model is stochastic; gradients of a "
                        "random function are noisy, which masks them (use EOT or make it deterministic)")
    for p in problems:
        warnings.warn(p, GradientMaskingWarning, stacklevel=2)
    return problems


class _Capture(logging.Handler):
    """Collects the warnings that pyautoattack sends to its ``auto-attack`` logger."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _set_iterations(aa, n_iter: Optional[int], n_queries: Optional[int]) -> None:
    """Shorten AutoAttack for quick checks (its numbers are then *not* standard AutoAttack)."""
    if n_iter is not None:
        for apgd in (aa.apgd, aa.apgd_targeted):  # APGD checkpoints depend on n_iter (Croce & Hein 2020, sec. 3)
            apgd.n_iter = apgd.n_iter_orig = n_iter
            apgd.n_iter_2, apgd.n_iter_min = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1)
            apgd.size_decr = max(int(0.03 * n_iter), 1)
        aa.fab.n_iter = n_iter
    if n_queries is not None:
        aa.square.n_queries = n_queries


def autoattack_eval(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
                    version: str = "standard", n: Optional[int] = None, batch_size: int = 250, device=None,
                    seed: Optional[int] = 0, attacks: Optional[Sequence[str]] = None,
                    n_iter: Optional[int] = None, n_queries: Optional[int] = None,
                    return_adv: bool = False, verbose: bool = False) -> dict:
    """AutoAttack (Croce & Hein, ICML 2020) through ``pyautoattack``, with a per-attack breakdown.

    The standard version runs APGD-CE, APGD-T (9 targets), FAB-T (9) and Square (5000 queries),
    each only on the points still robust. The attacks are run one at a time through
    ``AutoAttack.run_standard_evaluation`` on the remaining robust points, which is the same
    sequence as one call but exposes the robust accuracy after each attack.

    Args:
        model: inputs in [0, 1], logits out. x: ``(N, C, H, W)`` in [0, 1]. y: ``(N,)`` labels.
        eps: budget (8/255 Linf or 128/255 L2, docs/science.md section 4).
        norm: ``'Linf'`` (default) or ``'L2'``.
        version: ``'standard'`` (default), ``'plus'``, ``'rand'`` or ``'custom'`` (then ``attacks``,
            a list from ``apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square``, is required).
        n: evaluate the first ``n`` points only (default all). batch_size: default 250.
        device: default the model's device. seed: AutoAttack's seed, default 0 (the caller's RNG
            state is preserved). n_iter / n_queries: shorten APGD/FAB iterations or Square queries
            for quick runs (default None keeps AutoAttack's 100 / 5000; shortened runs are not
            comparable to published numbers). return_adv: add ``x_adv`` to the result.

    Returns a dict: ``clean_accuracy``, ``robust_accuracy``, ``breakdown`` (robust accuracy after
    each attack, in order), ``n``, ``eps``, ``norm``, ``version``, ``seconds``, ``warnings``.
    AutoAttack's sanity checks are re-emitted as :class:`GradientMaskingWarning`.
    """
    from pyautoattack import AutoAttack
    from pyautoattack import checks as aa_checks

    norms = {"linf": "Linf", "l2": "L2"}
    if str(norm).lower() not in norms:
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    norm = norms[str(norm).lower()]
    eps, _ = check_attack_inputs(x, y, eps, norm.lower(), (0.0, 1.0))
    if version == "custom" and not attacks:
        raise ValueError("version='custom' needs attacks=[...], e.g. ['apgd-ce']")
    if version != "custom" and attacks is not None:
        raise ValueError(f"attacks= is only used with version='custom' (version={version!r} fixes them)")
    if n is not None:
        x, y = x[:n], y[:n]
    device = _device_of(model, device)
    x, y = x.to(device), y.to(device).long()

    logger, handler = logging.getLogger("auto-attack"), _Capture()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # we re-emit its warnings ourselves
    forked = [device.index or 0] if device.type == "cuda" else []
    start = time.perf_counter()
    try:
        with attack_mode(model), torch.random.fork_rng(devices=forked), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            aa = AutoAttack(model, eps=eps, norm=norm, version=version, device=device, seed=seed,
                            attacks=list(attacks) if attacks is not None else None)
            _set_iterations(aa, n_iter, n_queries)
            sequence = list(aa.attacks_to_run)
            with torch.no_grad():
                logits = [model(xb) for xb, _ in _batches((x, y), batch_size)]
            check_labels(y, logits[0].shape[1])
            robust = torch.cat(logits).argmax(1) == y
            breakdown = {"clean": robust.float().mean().item()}
            x_adv = x.clone()
            for attack in sequence:
                idx = robust.nonzero().squeeze(1)
                if len(idx) > 0:
                    aa.attacks_to_run = [attack]
                    xa, ya = aa.run_standard_evaluation(x[idx], y[idx], batch_size=batch_size)
                    fooled = ya.to(device) != y[idx]  # ya: predicted labels at the returned points
                    robust[idx[fooled]] = False
                    x_adv[idx[fooled]] = xa[fooled].to(device)
                breakdown[attack] = robust.float().mean().item()
                if verbose:
                    print(f"robust accuracy after {attack}: {breakdown[attack]:.2%} "
                          f"({time.perf_counter() - start:.1f} s)")
            aa.attacks_to_run = sequence
            aa_checks.check_square_sr(breakdown, logger=logger)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    seconds = time.perf_counter() - start

    messages = list(handler.messages)
    for w in caught:
        if w.category is Warning:  # pyautoattack warns with the bare Warning class when it has no logger
            messages.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    explained = _explain(messages)
    for text in explained:
        category = UserWarning if "target classes" in text else GradientMaskingWarning
        warnings.warn(text, category, stacklevel=2)
    result = {"clean_accuracy": breakdown.pop("clean"), "robust_accuracy": robust.float().mean().item(),
              "breakdown": breakdown, "n": len(y), "eps": eps, "norm": norm, "version": version,
              "attacks": sequence, "seconds": seconds, "warnings": explained}
    if return_adv:
        result["x_adv"] = x_adv
    return result
