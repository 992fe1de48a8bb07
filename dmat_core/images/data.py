"""Data for adversarial training with generated images (docs/science.md section 4).

One import for everything a trainer or a notebook needs:

- real data: :func:`load_cifar` (python-format folder or archive, no MD5 checks, safe
  unpickling), :func:`split_validation` (first 1024 training images held out), and
  :func:`write_tiny_cifar` for tests and quick mode (in :mod:`dmat_core.images.cifar`);
- generated data: :func:`load_generated` (memory-mapped ``.npz``), :func:`save_generated`,
  :func:`merge_generated` (in :mod:`dmat_core.images.gendata`);
- :class:`MixedBatchSampler`: batches that are ``unsup_fraction`` generated, with the
  paper's epoch of ``ceil(n_real / batch_size)`` batches; deterministic, resumable mid-epoch,
  and split across DistributedDataParallel ranks;
- :func:`augment_crop_flip` (crop 32 with 4-pixel zero padding, horizontal flip) on the
  device, and :func:`to_tensor_images`.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .cifar import cifar_class_names, default_root, load_cifar, split_validation, write_tiny_cifar
from .gendata import load_generated, merge_generated, npz_to_npy_dir, save_generated, validate_generated

__all__ = ["load_cifar", "cifar_class_names", "default_root", "split_validation",
           "write_tiny_cifar", "load_generated", "save_generated", "merge_generated",
           "npz_to_npy_dir", "validate_generated", "MixedBatchSampler", "gather_mixed",
           "augment_crop_flip", "to_tensor_images"]

_REAL, _GENERATED = 0, 1  # random streams of the sampler


class MixedBatchSampler(torch.utils.data.Sampler):
    """Index batches mixing real and generated data (Wang et al. 2023, docs/science.md section 4).

    Indices refer to ``ConcatDataset([real, generated])``: ``i < n_real`` is real image ``i``,
    ``i >= n_real`` is generated image ``i - n_real``. Each global batch is
    ``n_real_per_batch`` real indices followed by ``n_gen_per_batch = round(batch_size *
    unsup_fraction)`` generated ones.

    - Epoch: ``num_batches = ceil(n_real / batch_size)`` batches whatever the size of the
      generated set (the paper's definition; pass ``num_batches=ceil(50000 / batch_size)``
      to match it exactly when 1024 real images are held out).
    - Real data: a fresh permutation each epoch, drawn without replacement; batches take
      consecutive slices, so with ``unsup_fraction=0`` an epoch is one pass over the real
      data (the last batch may be short).
    - Generated data: one stream of permutations across epochs, drawn without replacement
      until the whole set is used, then a new permutation.
    - Determinism: every permutation is a pure function of ``(seed, stream, epoch or pass)``,
      so any batch can be recomputed (:meth:`batch_indices`) without replaying the others.
    - Resume: :meth:`state_dict` holds ``epoch`` and ``batch`` (the next batch to yield);
      :meth:`load_state_dict` continues at exactly that batch. A ``DataLoader`` with worker
      processes pulls batches ahead of the training loop, so there save
      ``{'epoch': e, 'batch': batches_done}`` from the loop (same keys).
    - DDP: rank ``r`` of ``world_size`` gets ``global_batch[r::world_size]``: disjoint
      slices, equal sizes (+-1), the real/generated fraction kept on every rank, and the
      union is the single-process batch. The state does not depend on the world size.

    Args:
        n_real: number of real training images.
        n_generated: number of generated images (0 requires ``unsup_fraction=0``).
        batch_size: global batch size (all ranks together).
        unsup_fraction: fraction of each batch drawn from the generated set (paper: 0.7).
        num_batches: batches per epoch (default ``ceil(n_real / batch_size)``).
        seed: base seed (default 0); or ``generator``: a ``torch.Generator`` one seed is
            drawn from.
        rank, world_size: this process's slice of every batch.
    """

    def __init__(self, n_real: int, n_generated: int, batch_size: int,
                 unsup_fraction: float = 0.7, *, num_batches: Optional[int] = None,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 rank: int = 0, world_size: int = 1):
        if n_real < 1 or n_generated < 0 or batch_size < 1:
            raise ValueError(f"need n_real >= 1, n_generated >= 0, batch_size >= 1; got "
                             f"{n_real}, {n_generated}, {batch_size}")
        if not 0.0 <= unsup_fraction <= 1.0:
            raise ValueError(f"unsup_fraction must be in [0, 1], got {unsup_fraction}")
        if n_generated == 0 and unsup_fraction > 0:
            raise ValueError("no generated data: set unsup_fraction=0 to train on real data only")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if seed is None:
            seed = 0 if generator is None else int(
                torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        self.n_real, self.n_generated, self.batch_size = n_real, n_generated, batch_size
        self.n_gen_per_batch = round(batch_size * unsup_fraction)
        self.n_real_per_batch = batch_size - self.n_gen_per_batch
        self.num_batches = num_batches or math.ceil(n_real / batch_size)
        if self.n_gen_per_batch == 0 and self.n_real_per_batch * (self.num_batches - 1) >= n_real:
            raise ValueError(f"num_batches={self.num_batches} needs more than the {n_real} real "
                             "images of an epoch: the last batches would be empty")
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.epoch, self.batch = 0, 0
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    # -- the index streams
    def _permutation(self, stream: int, k: int, n: int) -> torch.Tensor:
        """Permutation ``k`` of ``stream``, a pure function of ``(seed, stream, k)``."""
        key = (stream, k)
        if key not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            state = np.random.SeedSequence([self.seed, stream, k]).generate_state(1, np.uint64)
            g = torch.Generator().manual_seed(int(state[0]))
            self._cache[key] = torch.randperm(n, generator=g)
        return self._cache[key]

    def batch_indices(self, epoch: int, batch: int) -> torch.Tensor:
        """The global batch ``batch`` of ``epoch`` (all ranks): int64 (n,) real then generated."""
        nr, ng = self.n_real_per_batch, self.n_gen_per_batch
        real = self._permutation(_REAL, epoch, self.n_real)[batch * nr:(batch + 1) * nr]
        parts = [real]
        pos = (epoch * self.num_batches + batch) * ng  # position in the generated stream
        end = pos + ng
        while pos < end:
            k, i = divmod(pos, self.n_generated)
            take = min(end - pos, self.n_generated - i)
            parts.append(self._permutation(_GENERATED, k, self.n_generated)[i:i + take]
                         + self.n_real)
            pos += take
        return torch.cat(parts)

    def rank_indices(self, epoch: int, batch: int) -> torch.Tensor:
        """This rank's disjoint slice of :meth:`batch_indices`."""
        return self.batch_indices(epoch, batch)[self.rank::self.world_size]

    # -- Sampler protocol
    def __iter__(self) -> Iterator[list[int]]:
        """Yield the rest of the current epoch (from :attr:`batch`), then move to the next."""
        while self.batch < self.num_batches:
            idx = self.rank_indices(self.epoch, self.batch)
            self.batch += 1
            yield idx.tolist()
        self.epoch, self.batch = self.epoch + 1, 0

    def __len__(self) -> int:
        """Batches left in the current epoch (``num_batches`` at an epoch start)."""
        return self.num_batches - self.batch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (the DistributedSampler convention)."""
        self.epoch, self.batch = int(epoch), 0

    def _config(self) -> dict[str, int]:
        return {"n_real": self.n_real, "n_generated": self.n_generated,
                "batch_size": self.batch_size, "n_gen_per_batch": self.n_gen_per_batch,
                "num_batches": self.num_batches}

    def state_dict(self) -> dict[str, int]:
        """Position (``epoch``, next ``batch``), ``seed`` and configuration: plain ints."""
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, **self._config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state['epoch']``, ``state['batch']``; the configuration must match."""
        for k, v in self._config().items():
            if k in state and int(state[k]) != v:
                raise ValueError(f"sampler state has {k}={int(state[k])}, this sampler {v}")
        if not 0 <= int(state["batch"]) <= self.num_batches:
            raise ValueError(f"batch {state['batch']} not in [0, {self.num_batches}]")
        self.seed = int(state.get("seed", self.seed))
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._cache.clear()


def gather_mixed(indices, real: tuple[np.ndarray, np.ndarray],
                 generated: Optional[tuple[np.ndarray, np.ndarray]] = None):
    """Images and labels for sampler indices (real ``i < n_real``, generated after).

    Reads memory-mapped generated data in sorted order (sequential on disk) and returns the
    batch in the order of ``indices``: uint8 (B, 32, 32, 3) and int64 (B,) numpy arrays.
    """
    idx = np.asarray(indices, dtype=np.int64)
    n_real = len(real[0])
    images = np.empty((len(idx), *real[0].shape[1:]), dtype=np.uint8)
    labels = np.empty(len(idx), dtype=np.int64)
    for source, mask, offset in ((real, idx < n_real, 0), (generated, idx >= n_real, n_real)):
        if not mask.any():
            continue
        if source is None:
            raise ValueError("indices point into the generated set but none was given")
        where = np.flatnonzero(mask)
        order = np.argsort(idx[where], kind="stable")
        rows = idx[where][order] - offset  # (b,) ascending
        images[where[order]] = source[0][rows]
        labels[where[order]] = source[1][rows]
    return images, labels


def to_tensor_images(images: Union[np.ndarray, torch.Tensor],
                     device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """uint8 (N, H, W, C) NHWC, C = 3 (RGB) or 1 (grey) -> float32 (N, C, H, W) in [0, 1] (moved as
    uint8, then scaled)."""
    x = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, H, W, C) images with C = 1 or 3, got {x.dtype} {tuple(x.shape)}")
    x = x.to(device) if device is not None else x
    return x.permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # (N, C, H, W)


def augment_crop_flip(x: torch.Tensor, generator: Optional[torch.Generator] = None,
                      padding: int = 4, padding_mode: str = "constant", flip: bool = True) -> torch.Tensor:
    """Random crop with ``padding`` (zeros by default) and random horizontal flip, batched.

    The paper's augmentation (``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``,
    docs/science.md section 4) without a per-image loop: one gather over the padded batch.
    Random numbers are drawn on the generator's device, in this order: vertical offsets
    (B,), horizontal offsets (B,) in ``[0, 2 * padding]``, then flips ``rand(B) < 0.5``.

    Args:
        x: float (B, C, H, W) batch, on any device.
        generator: ``torch.Generator`` for reproducibility (default: the global RNG).
        padding_mode: ``'constant'`` (zeros), ``'reflect'`` or ``'replicate'``.
        flip: False keeps every image unflipped (digits); the flips are drawn all the same, so
            the crops of a seed do not depend on it.

    Returns:
        (B, C, H, W), same dtype and device.
    """
    B, C, H, W = x.shape
    dev = generator.device if generator is not None else x.device
    n = 2 * padding + 1
    dy = torch.randint(0, n, (B,), generator=generator, device=dev).to(x.device)
    dx = torch.randint(0, n, (B,), generator=generator, device=dev).to(x.device)
    flips = (torch.rand(B, generator=generator, device=dev) < 0.5).to(x.device) & flip
    xp = F.pad(x, (padding,) * 4, mode=padding_mode) if padding else x  # (B, C, H+2p, W+2p)
    rows = dy[:, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = torch.arange(W, device=x.device).expand(B, W)
    cols = dx[:, None] + torch.where(flips[:, None], W - 1 - cols, cols)  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    out = xp[b, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
