"""Images between the two scales dmat uses, and sample grids.

- the paper's files and CIFAR: uint8 (N, H, W, 3), NHWC, RGB, values 0..255
  (docs/science.md sections 4 and 6);
- a diffusion model: float (N, 3, H, W), NCHW, in [-1, 1], sigma_data = 0.5 (docs/science.md section 2).

A noise of std s in [0, 1] image units is a noise of std 2 s in model units; the AT floor of
8/255 of [0, 1] is 16/255 of [-1, 1] = 0.1255 sigma_data (``dmat_core.diffusion.losses.at_budget``).
:func:`corrupt_images` makes the noisy training sets of Briglia et al. (docs/science.md section 3).
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

from ..common.checkpoint import atomic_open

__all__ = ["image_to_model", "model_to_image", "corrupt_images", "image_grid", "save_png"]

Array = Union[np.ndarray, torch.Tensor]


def image_to_model(images: Array, device=None, dtype=torch.float32) -> torch.Tensor:
    """uint8 (N, H, W, C) NHWC -> float (N, C, H, W) in [-1, 1]: x = u / 127.5 - 1."""
    u = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if u.dtype != torch.uint8 or u.ndim != 4:
        raise ValueError(f"expected uint8 (N, H, W, C) images, got {u.dtype} {tuple(u.shape)}")
    u = u.to(device) if device is not None else u
    return u.permute(0, 3, 1, 2).to(dtype).div(127.5).sub(1.0).contiguous()   # (N, C, H, W)


def model_to_image(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C) numpy: round((x + 1) 127.5), clamped."""
    if not torch.is_tensor(x) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    u = ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return u.permute(0, 2, 3, 1).cpu().numpy()                                 # (N, H, W, C)


def corrupt_images(x: torch.Tensor, p: float, s: float, generator: torch.Generator | None = None):
    """Gaussian noise of std s on exactly round(p N) of the N images x (any units), chosen at random
    (Briglia et al.: p = 0.9). Returns (corrupted copy, mask (N,) of the noisy images)."""
    n = x.shape[0]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:int(round(p * n))]] = True
    out = x.clone()
    out[mask] += s * torch.randn(out[mask].shape, generator=generator, dtype=x.dtype)
    return out, mask


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows (H + pad) + pad, cols (W + pad) + pad, C) image,
    `nrow` images per row (default: about square), filled row by row, white padding."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 (N, H, W, C) images, got {images.dtype} {images.shape}")
    n, H, W, C = images.shape
    ncol = nrow or max(1, math.ceil(math.sqrt(n)))
    nrows = max(1, math.ceil(n / ncol))
    out = np.full((nrows * (H + pad) + pad, ncol * (W + pad) + pad, C), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = images[i]
    return out


def save_png(path, image: np.ndarray, scale: int = 1) -> None:
    """Write a uint8 (H, W, 3) or grey (H, W, 1) image as PNG, atomically, each pixel drawn as a
    ``scale`` x ``scale`` block (so that a grid of 8x8 digits is visible)."""
    import matplotlib.image
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)                            # grey -> RGB
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    with atomic_open(path, "wb") as f:
        matplotlib.image.imsave(f, np.ascontiguousarray(image), format="png")
