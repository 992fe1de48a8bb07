"""The image datasets every pipeline reads, by name: ``cifar10``, ``cifar100``, ``digits``.

One place says what a dataset is (image shape, classes, the augmentation that suits it) and how
to load it, so that the trainers, the generator and the evaluation take ``dataset=...`` and run
unchanged on any of them:

    info = dataset_info("digits")        # shape (8, 8, 1), 10 classes, crop padding 1, no flip
    x, y = load_images("digits", train=False)

- ``cifar10`` / ``cifar100``: the python-format archives (:mod:`dmat_core.images.cifar`), 32x32 RGB,
  augmented by a 4-pixel crop and a horizontal flip (Wang et al. 2023);
- ``digits``: scikit-learn's handwritten digits (:mod:`dmat_core.images.digits`), 8x8 grey, shipped
  in the scikit-learn wheel; augmented by a 1-pixel crop and no flip (a flipped 3 is no digit).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .cifar import load_cifar, load_training_set
from .digits import DIGITS_SHAPE, load_digits

__all__ = ["ImageDataset", "DATASETS", "dataset_info", "load_images", "class_names"]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ImageDataset:
    """What a pipeline needs to know about a dataset."""
    name: str
    shape: tuple            # (H, W, C) of the uint8 NHWC images
    num_classes: int
    crop_padding: int       # training augmentation: random crop with this zero padding
    flip: bool              # ... and a random horizontal flip
    description: str


DATASETS = {
    "cifar10": ImageDataset("cifar10", (32, 32, 3), 10, 4, True,
                            "CIFAR-10, python format (50,000 training / 10,000 test images)"),
    "cifar100": ImageDataset("cifar100", (32, 32, 3), 100, 4, True,
                             "CIFAR-100 (fine labels), python format"),
    "digits": ImageDataset("digits", DIGITS_SHAPE, 10, 1, False,
                           "scikit-learn's handwritten digits, 8x8 grey (1,297 training / 500 test images)"),
}

DIGIT_NAMES = [str(k) for k in range(10)]


def dataset_info(name: str) -> ImageDataset:
    """The :class:`ImageDataset` called ``name``; an unknown name is a clear error."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_images(name: str, train: bool = True, data_dir: Optional[PathLike] = None,
                make_tiny: bool = False, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a dataset's training or test split: uint8 (N, H, W, C), int64 (N,).

    CIFAR comes from ``data_dir`` (default ``$DMAT_DATA``; ``make_tiny``: write the tiny synthetic
    archive when none is there, training split only; ``download``: fetch it); the digits come
    from scikit-learn and ignore all three."""
    dataset_info(name)
    if name == "digits":
        return load_digits(train)
    if train and not download:
        return load_training_set(data_dir, name, make_tiny)
    return load_cifar(Path(data_dir) if data_dir else None, name, train=train, download=download)


def class_names(name: str, data_dir: Optional[PathLike] = None) -> list[str]:
    """The class names of a dataset (CIFAR: read from its archive under ``data_dir``)."""
    dataset_info(name)
    if name == "digits":
        return list(DIGIT_NAMES)
    from .cifar import cifar_class_names
    return cifar_class_names(data_dir, name)
