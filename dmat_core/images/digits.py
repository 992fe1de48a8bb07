"""scikit-learn's handwritten digits as an image dataset: real images that need no download.

``sklearn.datasets.load_digits`` ships 1,797 scans of handwritten digits (UCI "Optical Recognition
of Handwritten Digits", Alpaydin & Kaynak 1998) inside the scikit-learn wheel: 8x8 grey levels
0..16, ten classes, 174-183 images each. Here they get the same convention as CIFAR-10:

- images uint8 ``(N, 8, 8, 1)`` NHWC, grey level ``g`` in 0..16 stored as ``round(255 g / 16)``
  (one-to-one, so nothing is lost; divided by 255 it is ``g / 16`` to within 0.002), labels int64;
- a fixed split: ``n_test_per_class`` images of every class (default 50: 500 test images) drawn by
  ``split_seed`` form the test set, the other 1,297 the training set, in a shuffled order (so
  :func:`~dmat_core.images.cifar.split_validation`'s "first n_val" is a random, not a sorted, subset).

The images stay 8x8: upsampling adds pixels, not information, and costs every experiment 4x
(16x16) or 16x (32x32) the compute; the small networks of the ``digits`` presets work at 8x8.
"""
from __future__ import annotations

import numpy as np

__all__ = ["DIGITS_SHAPE", "load_digits", "digits_grey_to_uint8"]

DIGITS_SHAPE = (8, 8, 1)
GREY_LEVELS = 16                         # the scans' grey levels are 0..16


def digits_grey_to_uint8(grey: np.ndarray) -> np.ndarray:
    """Grey levels 0..16 (any float or int array) as uint8 0..255, ``round(255 g / 16)``."""
    g = np.asarray(grey, dtype=np.float64)
    if g.size and (g.min() < 0 or g.max() > GREY_LEVELS or not np.all(g == np.round(g))):
        raise ValueError(f"digit grey levels must be integers in [0, {GREY_LEVELS}], "
                         f"got values in [{g.min()}, {g.max()}]")
    return np.round(g * 255.0 / GREY_LEVELS).astype(np.uint8)


def load_digits(train: bool = True, *, split_seed: int = 0,
                n_test_per_class: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """The training or test split of the handwritten digits: uint8 (N, 8, 8, 1), int64 (N,).

    The split is a pure function of ``split_seed`` and ``n_test_per_class`` (the same on every
    machine and every scikit-learn version that ships the same data)."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the digits dataset comes with scikit-learn: pip install scikit-learn") from None
    if not isinstance(n_test_per_class, int) or n_test_per_class < 0:
        raise ValueError(f"n_test_per_class must be an integer >= 0, got {n_test_per_class!r}")
    d = _sk_load_digits()
    images = digits_grey_to_uint8(d.images)[..., None]                   # (1797, 8, 8, 1)
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(split_seed)
    test = []
    for k in range(10):
        idx = np.flatnonzero(labels == k)
        if n_test_per_class >= len(idx):
            raise ValueError(f"n_test_per_class={n_test_per_class} leaves no training image of class {k} "
                             f"({len(idx)} images)")
        test.append(rng.permutation(idx)[:n_test_per_class])
    test = np.sort(np.concatenate(test))
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    chosen = np.flatnonzero(is_test if not train else ~is_test)
    chosen = chosen[rng.permutation(len(chosen))]
    return np.ascontiguousarray(images[chosen]), labels[chosen]
