"""Evaluating adversarially trained classifiers: load a checkpoint, measure clean / PGD / AutoAttack.

    model, info = load_trained_classifier("runs/quick/best.pt")           # a train-at file
    model, info = load_trained_classifier("cifar10_linf_wrn28-10.pt", "wrn-28-10")  # published
    report = evaluate(model, x, y, attacks=("clean", "pgd", "autoattack"), eps=8/255)

``dmat eval`` is these two calls on the first ``--n`` test images. PGD-k with a random start is
the cheap proxy; AutoAttack (standard) is the number to report (docs/science.md section 5).
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from ..common.checkpoint import load_checkpoint
from ..common.train_utils import strip_batchnorm
from ..images.datasets import dataset_info
from .classifiers import build_classifier, load_published_checkpoint
from .train import CHECKPOINT_FORMAT, WEIGHTS_FORMAT

__all__ = ["ATTACKS", "load_trained_classifier", "evaluate"]

ATTACKS = ("clean", "pgd", "autoattack")


def load_trained_classifier(path, arch: Optional[str] = None, *, arch_kw: Optional[dict] = None,
                            weights: str = "ema", num_classes: Optional[int] = None, map_location="cpu"):
    """A classifier from a ``train-at`` file or a published DM-Improves-AT checkpoint.

    Accepts ``checkpoint.pt`` (full state), ``best.pt`` / ``final.pt`` and the published files
    (``model_state_dict`` = EMA, ``unaveraged_model_state_dict``) and plain state dicts. The
    architecture comes from the file's config when it has one, else from ``arch`` (required
    then, e.g. ``'wrn-28-10'``; ``arch`` also overrides the file). ``weights``: ``'ema'``
    (default) or ``'model'`` (the unaveraged weights). Returns ``(model in eval mode, info)``;
    ``info['format']`` says what the file is: ``'dmat-at-train/1'`` (a full checkpoint),
    ``'dmat-at-weights/1'`` (best.pt / final.pt of ``dmat train-at``), ``'published'`` (the
    authors' files: weights without a config) or ``'state_dict'``.
    A file of another architecture raises ``CheckpointMismatchError`` (a ValueError).
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    ck = load_checkpoint(path, map_location=map_location)
    if not isinstance(ck, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ck).__name__}")
    cfg = ck.get("config") if isinstance(ck.get("config"), dict) else {}
    if ck.get("format") == CHECKPOINT_FORMAT:
        state = ck["ema"]["module"] if weights == "ema" else ck["model"]
    else:
        state = ck.get("model_state_dict" if weights == "ema" else "unaveraged_model_state_dict", ck)
    if arch is None and "arch" not in cfg:
        raise ValueError(f"{path} does not say which architecture it holds: pass --arch (e.g. wrn-28-10)")
    same = arch is None or arch == cfg.get("arch")
    name = arch or cfg["arch"]
    kw = dict(arch_kw if arch_kw is not None else (cfg.get("arch_kw", {}) if same else {}))
    classes = num_classes or dataset_info(cfg.get("dataset") or "cifar10").num_classes
    model = build_classifier(name, num_classes=classes, **kw)
    if same and cfg.get("batchnorm") is False:
        strip_batchnorm(model)
    load_published_checkpoint(state, model)
    if ck.get("format") in (CHECKPOINT_FORMAT, WEIGHTS_FORMAT):
        kind = ck["format"]
    elif "model_state_dict" in ck:   # dmat's own weights files before they were tagged carry a config
        kind = WEIGHTS_FORMAT if cfg.get("arch") else "published"
    else:
        kind = "state_dict"
    info = {"arch": getattr(model, "arch", name), "weights": weights, "step": ck.get("step"), "format": kind,
            "dataset": cfg.get("dataset")}
    return model.eval(), info


def evaluate(model, x: torch.Tensor, y: torch.Tensor, *, attacks=ATTACKS, eps: float = 8 / 255,
             norm: str = "linf", pgd_steps: int = 20, pgd_restarts: int = 1, pgd_loss: str = "ce",
             aa_version: str = "standard", aa_n_iter=None, aa_n_queries=None, batch_size: int = 256,
             seed: int = 0) -> dict:
    """Clean accuracy, PGD-``pgd_steps`` and AutoAttack robust accuracy of ``model`` on ``(x, y)``.

    ``x``: float (N, 3, H, W) in [0, 1]; ``y``: (N,) labels. Returns a JSON-ready dict.
    """
    from .autoattack import autoattack_eval, clean_accuracy, pgd_accuracy
    from .threat import attack_mode, check_attack_inputs, check_labels

    check_attack_inputs(x, y, eps, norm, (0.0, 1.0))
    with torch.no_grad(), attack_mode(model):  # eval mode: BN statistics untouched
        check_labels(y, model(x[:1].to(next(model.parameters()).device)).shape[1])
    out: dict = {"n": len(y), "eps": eps, "norm": norm}
    if "clean" in attacks:
        t0 = time.perf_counter()
        out["clean"] = {"accuracy": clean_accuracy(model, (x, y), batch_size=batch_size),
                        "seconds": time.perf_counter() - t0}
    if "pgd" in attacks:
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            acc = pgd_accuracy(model, (x, y), eps, norm, steps=pgd_steps, restarts=pgd_restarts,
                               loss=pgd_loss, batch_size=batch_size)
        out["pgd"] = {"steps": pgd_steps, "restarts": pgd_restarts, "loss": pgd_loss, "accuracy": acc,
                      "seconds": time.perf_counter() - t0}
    if "autoattack" in attacks:
        r = autoattack_eval(model, x, y, eps=eps, norm=norm, version=aa_version, batch_size=batch_size,
                            seed=seed, n_iter=aa_n_iter, n_queries=aa_n_queries)
        r["shortened"] = aa_n_iter is not None or aa_n_queries is not None
        out["autoattack"] = r
    return out
