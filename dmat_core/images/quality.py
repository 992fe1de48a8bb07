"""Offline quality of a generated set: what a classifier says of it, class balance, FID; filtering.

    probs = class_probabilities(classifier, images)            # (N, K) softmax, inputs in [0, 1]
    report = quality_report(probs, labels)                      # accuracy, confidence, balance
    keep, info = top_fraction_per_class(probs[np.arange(N), labels], labels, 0.2)
    fid = fid_score(images, reference_images)                   # torch-fidelity, or "FID skipped"
    fd = feature_frechet(classifier, images, real_images)       # Frechet distance in its features

Filtering is the paper's (Wang et al. 2023, docs/science.md section 4): each generated image is scored
by a standard classifier's softmax probability of the class it was conditioned on, and the top 20%
per class are kept. FID (Heusel et al. 2017) comes from `torch-fidelity` (the `fid` extra), whose
Inception weights are fetched once into torch's hub cache; where they are neither cached nor
reachable (offline machines, CI) :func:`fid_score` says "FID skipped: <reason>" and gives no number.

Where Inception does not fit (8x8 grey digits), :func:`feature_frechet` is the same Frechet distance
between two Gaussians fitted to features, ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))``, in the
penultimate layer of a classifier trained on the real data: it is *not* FID (other network, other
data) and is only comparable between sets measured with the same classifier and the same sizes. Its
floor is the value between two real sets of the sizes used (not 0): the estimate is biased upwards by
the finite samples. Lower is better, down to that floor; a generator that copies a few training
images scores badly (its covariance is wrong), so collapse does not win it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..common.checkpoint import load_checkpoint
from .data import to_tensor_images
from .gendata import load_generated, save_generated

__all__ = ["open_generated", "class_probabilities", "class_balance", "quality_report", "top_fraction_per_class",
           "filter_generated", "fid_score", "classifier_features", "frechet_distance", "feature_frechet"]


def open_generated(path, num_classes: Optional[int] = 10) -> list:
    """The parts of a generated set, memory-mapped: [(images, labels)] for an `.npz`, one per shard
    (in order, all required) for an output directory of `dmat generate`."""
    from .generate import MANIFEST, shard_paths
    path = Path(path)
    paths = shard_paths(path) if path.is_dir() and (path / MANIFEST).is_file() else [path]
    return [load_generated(p, num_classes=num_classes, shape=None) for p in paths]


@torch.no_grad()
def class_probabilities(model, images, batch_size: int = 256, device=None) -> np.ndarray:
    """Softmax of a classifier (inputs [0, 1] NCHW, logits out) on uint8 (N, 32, 32, 3) images,
    in batches, in eval mode: float32 (N, K)."""
    device = torch.device(device) if device else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [torch.softmax(model(to_tensor_images(np.array(images[s:s + batch_size]), device)).float(), 1).cpu()
               for s in range(0, len(images), batch_size)]     # (b, K) each; a copy of a memmap's slice
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _check_labels(labels: np.ndarray, K: int) -> np.ndarray:
    labels = np.asarray(labels).astype(np.int64)
    if len(labels) and not 0 <= labels.min() <= labels.max() < K:
        raise ValueError(f"labels span {labels.min()}..{labels.max()} but there are {K} classes")
    return labels


def class_balance(labels, num_classes: int) -> dict:
    """Counts per class, max/min count ratio (None if a class is absent) and the entropy of the
    label histogram over log K (1 = perfectly balanced)."""
    K = int(num_classes)
    if K < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    counts = np.bincount(_check_labels(labels, K), minlength=K)
    p = counts[counts > 0] / max(counts.sum(), 1)
    return {"n": int(counts.sum()), "num_classes": K, "counts": counts.tolist(),
            "balance_max_min": float(counts.max() / counts.min()) if counts.min() > 0 else None,
            "label_entropy_ratio": float(-(p * np.log(p)).sum() / math.log(K)) if K > 1 else 1.0,
            "missing_classes": [k for k in range(K) if counts[k] == 0]}


def quality_report(probs: np.ndarray, labels, num_classes: Optional[int] = None) -> dict:
    """Accuracy of the classifier on the generated set (overall and per class: the label is the
    class the image was conditioned on), mean probability of that class, and :func:`class_balance`."""
    probs = np.asarray(probs, dtype=np.float64)
    K = int(num_classes or probs.shape[1])
    if probs.ndim != 2 or probs.shape[1] < K or len(probs) != len(labels) or not len(probs):
        raise ValueError(f"need (N, >= {K}) probabilities for N > 0 labels, got {probs.shape} and {len(labels)}")
    labels = _check_labels(labels, K)
    correct = probs.argmax(1) == labels
    conf = probs[np.arange(len(labels)), labels]                                 # (N,)
    present = [labels == k for k in range(K)]
    per = lambda v: [float(v[m].mean()) if m.any() else None for m in present]   # noqa: E731
    return {"accuracy": float(correct.mean()), "per_class_accuracy": per(correct),
            "mean_confidence": float(conf.mean()), "per_class_confidence": per(conf),
            **class_balance(labels, K)}


def top_fraction_per_class(scores, labels, fraction: float = 0.2):
    """Indices (sorted, int64) of the top `fraction` of each class by score, balanced: every class
    present keeps k = floor(fraction * smallest class count) images, ties to the lower index.
    Returns (keep, info) with kept counts and the score threshold (lowest kept score) per class."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(np.int64)
    if scores.shape != labels.shape or scores.ndim != 1 or not len(labels):
        raise ValueError(f"need (N,) scores and labels for N > 0, got {scores.shape} and {labels.shape}")
    classes, counts = np.unique(labels, return_counts=True)
    k = math.floor(fraction * counts.min() + 1e-9)
    if k < 1:
        raise ValueError(f"fraction {fraction} of the smallest class ({counts.min()} images) keeps nothing")
    keep, thresholds = [], {}
    for c in classes:
        idx = np.flatnonzero(labels == c)
        top = idx[np.argsort(-scores[idx], kind="stable")[:k]]                  # best first
        keep.append(top)
        thresholds[int(c)] = float(scores[top[-1]])
    keep = np.sort(np.concatenate(keep))
    return keep, {"fraction": fraction, "n_in": int(len(labels)), "n_kept": int(len(keep)),
                  "kept_per_class": {int(c): k for c in classes}, "threshold_per_class": thresholds}


def filter_generated(parts: Sequence, classifier, out, fraction: float = 0.2, batch_size: int = 256,
                     device=None, num_classes: Optional[int] = None) -> dict:
    """Score every image of `parts` ([(images, labels)], e.g. :func:`open_generated`) by the
    classifier's probability of its label, keep the top `fraction` per class, write them (in their
    order) to `out` in the paper's format. Returns the report of :func:`top_fraction_per_class`."""
    scores, labels = [], []
    for images, y in parts:
        p = class_probabilities(classifier, images, batch_size, device)
        y = _check_labels(y, p.shape[1])
        scores.append(p[np.arange(len(y)), y])
        labels.append(y)
    keep, info = top_fraction_per_class(np.concatenate(scores), np.concatenate(labels), fraction)
    offsets = np.cumsum([0] + [len(y) for _, y in parts])
    images = np.concatenate([x[keep[(keep >= a) & (keep < b)] - a]
                             for (x, _), a, b in zip(parts, offsets[:-1], offsets[1:])])
    save_generated(out, images, np.concatenate(labels)[keep], num_classes, shape=None)
    info["out"] = str(out)
    return info


# ----------------------------------------------------------------------------- FID
class _Images(torch.utils.data.Dataset):
    """uint8 (N, H, W, 3) NHWC images as the uint8 (3, H, W) tensors torch-fidelity reads."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)


def _skipped(reason: str) -> dict:
    return {"fid": None, "fid_skipped": f"FID skipped: {reason}"}


def fid_score(images, reference, *, weights=None, download: bool = True, device=None,
              batch_size: int = 64) -> dict:
    """FID between two uint8 (N, 32, 32, 3) image sets with torch-fidelity's Inception-v3 (2048-d
    pool features of the TF-FID network). `weights`: a local copy of its weights file; else the one
    in torch's hub cache, fetched first when `download`. Returns {"fid", "n_generated",
    "n_reference", "library"}, or {"fid": None, "fid_skipped": "FID skipped: <reason>"} when the
    library or its weights cannot be had."""
    try:
        import torch_fidelity
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    except ImportError as e:
        return _skipped(f"torch-fidelity is not installed ({e}); pip install 'dmat[fid]'")
    if weights is None:
        weights = Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name
        if not weights.is_file():
            if not download:
                return _skipped(f"Inception weights not cached at {weights} and download is off")
            try:
                weights.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(URL_INCEPTION_V3, str(weights), progress=False)
            except Exception as e:   # offline: URLError, timeouts, HTTP errors, proxies, ...
                return _skipped(f"Inception weights could not be fetched from {URL_INCEPTION_V3} "
                                f"({type(e).__name__}: {e}); copy them to {weights} or pass --fid-weights")
    weights = Path(weights)
    load_checkpoint(weights)          # FileNotFoundError, or ValueError unless plain tensors (weights_only)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    r = torch_fidelity.calculate_metrics(
        input1=_Images(images), input2=_Images(reference), fid=True, cuda=device.type == "cuda",
        batch_size=batch_size, feature_extractor_weights_path=str(weights), cache=False,
        save_cpu_ram=True, verbose=False)
    return {"fid": float(r["frechet_inception_distance"]), "n_generated": len(images),
            "n_reference": len(reference), "library": f"torch-fidelity {torch_fidelity.__version__}"}


# ----------------------------------------------------------------------------- Frechet distance in a classifier's features
@torch.no_grad()
def classifier_features(model, images, batch_size: int = 512, device=None) -> np.ndarray:
    """The input of the classifier's last ``nn.Linear`` (its penultimate features) on uint8
    (N, H, W, C) images, in eval mode: float64 (N, F)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer whose input could serve as features")
    device = torch.device(device) if device else next(model.parameters()).device
    feats: list = []
    hook = linears[-1].register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach().double().cpu()))
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(images), batch_size):
            model(to_tensor_images(np.array(images[s:s + batch_size]), device))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(feats).numpy() if feats else np.zeros((0, linears[-1].in_features))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, F) and b (M, F):
    ``|mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a C_b)^(1/2))`` (unbiased covariances)."""
    import scipy.linalg
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two (N, F) feature sets with the same F and N >= 2, got {a.shape} and {b.shape}")
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb)
    root = root.real if np.iscomplexobj(root) else root     # tiny imaginary parts of round-off
    d = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(root))
    return max(d, 0.0)


def feature_frechet(model, images, reference, batch_size: int = 512) -> float:
    """:func:`frechet_distance` between two uint8 image sets in ``model``'s penultimate features."""
    return frechet_distance(classifier_features(model, images, batch_size),
                            classifier_features(model, reference, batch_size))
