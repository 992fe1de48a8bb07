"""Training a class-conditional image diffusion model, plain or adversarially (Briglia et al.).

    trainer = DMTrainer(make_dm_config("cpu-quick", data_dir="data/tiny", out_dir="runs/dm"))
    for state in trainer.run():             # one dict per optimiser step
        print(state["step"], state["loss_dsm"], state["loss_at"])
    D = trainer.ema.module                  # the EMA denoiser D(x, sigma, labels), x in [-1, 1]

Or ``train_dm(config) -> result`` (what ``dmat train-dm`` runs, also under ``torchrun``).

One step: the global batch of the (once-corrupted, docs/science.md section 3) training images, flipped
at random, with sigma (ln sigma ~ N(P_mean, P_std^2)) and noise drawn for the whole global batch;
each DDP rank takes its slice and minimises the EDM denoising loss + lambda * the AT term
(:func:`~dmat_core.diffusion.losses.at_dm_loss`, the labels passed to D) with Adam (linear warm-up, then
constant, as EDM), gradient clipping and an EMA of the weights (:class:`~dmat_core.common.train_utils.EMA`).

Exact resume: every random number of step ``t`` comes from seeds that are pure functions of
``(seed, t)`` (batch order per epoch, flips, sigma and noise of the global batch) and
``(seed, rank, t)`` (the AT random start, dropout); the corrupted copy of the data is a pure
function of ``seed``. A checkpoint (model, EMA, optimiser, step, RNG states) determines the rest:
a run killed at any point and started again with the same ``out_dir`` ends bitwise equal on CPU.

Files under ``out_dir`` (rank 0, each atomically): ``config.json``, ``checkpoint.pt`` (full
state, format ``dmat-dm/1``: :func:`~dmat_core.images.unet.load_image_denoiser` reads its EMA weights),
``denoiser.pt`` (weights only, at the end), ``samples/step_XXXXXX.png`` (fixed latents, one row
per class, EDM Heun on the EMA model) at every checkpoint, ``result.json``; ``log.csv`` gets a
row every ``log_every`` steps and is cut back to the checkpoint's step on resume.
"""
from __future__ import annotations

# Size: one module of about 320 lines on purpose: one trainer (data, loss, step, checkpoint, samples),
# whose parts share its state; the loss math is in dmat_core.diffusion.losses.

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..common.checkpoint import atomic_save, atomic_write_text, load_checkpoint, rng_state, set_rng_state
from ..common.settings import resolve_device
from ..common.train_utils import EMA, CSVLog, derived_seed, dist_info, process_group, unwrap
from ..common.training import NonFiniteLossError, Trainer, check_resumable, check_run_folder, prepare_out_dir
from ..diffusion import samplers
from ..diffusion.edm import edm_training_sigmas
from ..diffusion.losses import at_dm_loss
from .datasets import dataset_info, load_images
from .dm_config import TrainDMConfig, make_dm_config
from .pixels import corrupt_images, image_grid, image_to_model, model_to_image, save_png
from .unet import DM_CHECKPOINT_FORMAT, build_image_denoiser, denoiser_arch, save_image_denoiser

__all__ = ["DMTrainer", "train_dm", "check_run", "image_dm_loss", "noisy_mask", "NonFiniteLossError"]

_ORDER, _FLIP, _NOISE, _AT, _DROPOUT, _CORRUPT, _SAMPLES = range(1, 8)   # random streams
# settings that may change when a run is resumed (everything else must match the checkpoint)
_RESUMABLE = {"out_dir", "data_dir", "progress", "log_every", "checkpoint_every", "device", "amp",
              "channels_last", "make_tiny_data", "steps", "sample_per_class", "sample_steps"}
LOG_FIELDS = ["step", "epoch", "lr", "loss", "loss_dsm", "loss_at", "r_mean", "grad_norm"]


def image_dm_loss(D, x0: torch.Tensor, labels, config, sigma, noise, generator=None, sigma_data: float = 0.5):
    """EDM denoising loss + lambda * AT for DMs (:func:`~dmat_core.diffusion.losses.at_dm_loss`) on images
    x0 (B, C, H, W), the class labels (B,) passed to every call of D(x, sigma, labels)."""
    return at_dm_loss(lambda x, s: D(x, s, labels), x0, config, sigma_data, sigma=sigma, noise=noise,
                      generator=generator)


def noisy_mask(n: int, noise_p: float, seed: int) -> torch.Tensor:
    """Which of the ``n`` training images a run with this ``seed`` and ``noise_p`` noises: the same
    draw :class:`DMTrainer` makes (bool (n,)), so a baseline can take exactly the images it left clean."""
    gen = torch.Generator().manual_seed(derived_seed(seed, _CORRUPT))
    return corrupt_images(torch.zeros(n, 1), noise_p, 0.0, gen)[1]


class DMTrainer(Trainer):
    """EDM (+ AT) training driven step by step (:meth:`step`) or as a generator (:meth:`run`).

    Args:
        config: a :class:`~dmat_core.images.dm_config.TrainDMConfig` (or a dict of its fields).
        data: optional ``(images, labels)`` uint8 (N, H, W, 3) / int (N,) instead of CIFAR files.
        fresh: remove the files of an earlier run in ``out_dir`` and start over; without it a
            run with the same settings resumes and one with other settings is refused.
    """

    RUN_FILES = ("checkpoint.pt", "denoiser.pt", "log.csv", "result.json")

    def __init__(self, config, *, data=None, fresh: bool = False):
        self.cfg = cfg = config if isinstance(config, TrainDMConfig) else TrainDMConfig.from_dict(config)
        self.at = cfg.at_config()
        self.rank, self.world_size, local_rank = dist_info()
        if cfg.batch_size % self.world_size:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {self.world_size} processes")
        self.device = resolve_device(cfg.device, local_rank)  # cuda: one GPU per process under torchrun
        cuda = self.device.type == "cuda"
        # bf16 autocast: asked for (any device; CPU autocast has it too) or, with auto, on a GPU that has it
        self.amp_dtype = torch.bfloat16 if cfg.amp == "bf16" or (
            cfg.amp == "auto" and cuda and torch.cuda.is_bf16_supported()) else None
        self.channels_last = cuda if cfg.channels_last is None else cfg.channels_last
        self.out_dir = Path(cfg.out_dir)

        # -- data: images in [-1, 1], a fixed fraction noised once (a pure function of the seed)
        images, labels = self._load_data(data)
        x = image_to_model(images)                                       # (N, 3, H, W) float32
        gen = torch.Generator().manual_seed(derived_seed(cfg.seed, _CORRUPT))
        x, self.noisy = corrupt_images(x, cfg.noise_p, 2 * cfg.noise_std, gen)  # std 2s in [-1, 1]
        self.checksum = float(x.double().sum())                          # identifies the data on resume
        self.x, self.y = x.to(self.device), torch.as_tensor(labels, dtype=torch.long, device=self.device)
        self.num_classes = dataset_info(cfg.dataset).num_classes
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}) for {cfg.dataset}")
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"images must be square, got {tuple(x.shape[-2:])}")
        self.num_batches = len(x) // cfg.batch_size
        if self.num_batches < 1:
            raise ValueError(f"batch_size={cfg.batch_size} is larger than the {len(x)} training images")

        # -- model (same initial weights on every rank), EMA, optimiser
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = build_image_denoiser(cfg.size, self.num_classes if cfg.conditional else 0,
                                              cfg.sigma_data, x.shape[-1], x.shape[1], **cfg.unet)
        self.model = self.model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, cfg.ema_tau)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas))
        self.net = self.model  # what the loss calls: the DDP wrapper when distributed
        if self.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
        self.step_count, self.train_seconds = 0, 0.0
        self.total_steps, self.checkpoint_every, self.log_every = cfg.steps, cfg.checkpoint_every, cfg.log_every
        self.progress, self.desc = cfg.progress and self.rank == 0, f"train-dm {cfg.size} {cfg.at_variant}"
        self.log = CSVLog(self.out_dir / "log.csv", LOG_FIELDS)
        ck_path = self.out_dir / "checkpoint.pt"
        prepare_out_dir(self.out_dir, fresh=fresh, run_files=self.RUN_FILES, run_dirs=("samples",),
                        rank=self.rank, world_size=self.world_size)
        if ck_path.is_file():
            self.load_state_dict(load_checkpoint(ck_path))
        self._start_step = self.step_count
        if self.rank == 0:
            self.log.truncate(self.step_count)  # drop rows of steps that will be (re)done
            cfg.save(self.out_dir / "config.json")
            if self.step_count and not self._sample_path().is_file():  # killed before its grid
                self.save_samples()

    def _load_data(self, data):
        if data is not None:
            images, labels = np.asarray(data[0]), np.asarray(data[1])
            if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
                raise ValueError(f"data must be uint8 (N, H, W, C) images and N labels, got {images.dtype} "
                                 f"{images.shape} and {labels.shape}")
            return images, labels
        return load_images(self.cfg.dataset, True, self.cfg.data_dir, self.cfg.make_tiny_data)

    # ------------------------------------------------------------------ one step
    def lr(self, t: int) -> float:
        """Linear warm-up over ``warmup_steps``, then constant (EDM's learning-rate ramp)."""
        return self.cfg.lr * min(1.0, (t + 1) / self.cfg.warmup_steps) if self.cfg.warmup_steps else self.cfg.lr

    def batch(self, t: int):
        """This rank's slice of the global batch of step ``t``: (x0, labels, sigma, noise) on the device."""
        cfg, B = self.cfg, self.cfg.batch_size
        epoch, b = divmod(t, self.num_batches)
        if getattr(self, "_order", (None,))[0] != epoch:                 # a fresh permutation per epoch
            g = torch.Generator().manual_seed(derived_seed(cfg.seed, _ORDER, epoch))
            self._order = (epoch, torch.randperm(len(self.x), generator=g))
        idx = self._order[1][b * B:(b + 1) * B].to(self.device)         # (B,) the global batch, all ranks
        x0, y = self.x[idx], self.y[idx]                                 # (B, 3, H, W), (B,)
        if cfg.flip:
            flip = torch.rand(B, generator=torch.Generator().manual_seed(derived_seed(cfg.seed, _FLIP, t))) < 0.5
            x0 = torch.where(flip.to(self.device)[:, None, None, None], x0.flip(-1), x0)
        g = torch.Generator(self.device).manual_seed(derived_seed(cfg.seed, _NOISE, t))
        sigma = edm_training_sigmas(B, cfg.P_mean, cfg.P_std, generator=g, device=self.device)  # (B,)
        noise = torch.randn(x0.shape, generator=g, device=self.device)   # (B, 3, H, W)
        r, w = self.rank, self.world_size
        x0, noise = x0[r::w], noise[r::w]
        if self.channels_last:
            x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
        return x0, y[r::w], sigma[r::w], noise

    def step(self) -> dict:
        """One optimiser step; returns the step's metrics (averaged over ranks) as floats."""
        cfg, t = self.cfg, self.step_count
        start = time.perf_counter()
        lr = self.lr(t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x0, y, sigma, noise = self.batch(t)
        labels = y if cfg.conditional else None
        torch.manual_seed(derived_seed(cfg.seed, _DROPOUT, self.rank, t))     # dropout of this step
        g_at = torch.Generator(self.device).manual_seed(derived_seed(cfg.seed, _AT, self.rank, t))
        self.model.train()
        with self.autocast():
            loss, parts = image_dm_loss(self.net, x0, labels, self.at, sigma, noise, g_at, cfg.sigma_data)
        metrics = self.reduce(parts)
        self.check_finite(metrics, lr, "Lower the learning rate or use amp='off'.", self.out_dir / "checkpoint.pt")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.grad_clip or math.inf
        metrics["grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.optimizer.step()
        self.ema.update(self.model)
        self.step_count += 1
        self.train_seconds += time.perf_counter() - start
        return {"step": self.step_count, "epoch": t // self.num_batches, "lr": lr, **metrics}

    # ------------------------------------------------------------------ samples
    @torch.no_grad()
    def sample_grid(self, steps: Optional[int] = None) -> np.ndarray:
        """EDM Heun samples of the EMA model from fixed latents: uint8 (rows, cols, H, W, 3), one
        row per class (the first 10 classes; an unconditional model: 10 rows of samples)."""
        cfg = self.cfg
        rows, cols = min(self.num_classes, 10), cfg.sample_per_class
        gen = torch.Generator().manual_seed(derived_seed(cfg.seed, _SAMPLES))
        latents = samplers.latent_noise(rows * cols, self.x.shape[1:], generator=gen).to(self.device)
        labels = torch.arange(rows, device=self.device).repeat_interleave(cols) if cfg.conditional else None
        with self.autocast():
            x = samplers.run(self.ema.module, latents, "heun", steps or cfg.sample_steps, labels=labels)
        return model_to_image(x.float()).reshape(rows, cols, *self.x.shape[2:], self.x.shape[1])

    def _sample_path(self) -> Path:
        return self.out_dir / "samples" / f"step_{self.step_count:06d}.png"

    def save_samples(self) -> Path:
        """Write the sample grid of this step to ``samples/step_XXXXXX.png``."""
        g = self.sample_grid()                                           # (rows, cols, H, W, 3)
        path = self._sample_path()
        save_png(path, image_grid(g.reshape(-1, *g.shape[2:]), nrow=g.shape[1]), scale=max(1, 32 // g.shape[2]))
        return path

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        epoch, b = divmod(self.step_count, self.num_batches)
        return {"format": DM_CHECKPOINT_FORMAT, "kind": "train-state", "arch": denoiser_arch(self.model),
                "config": self.cfg.to_dict(), "step": self.step_count, "world_size": self.world_size,
                "data": {"n": len(self.x), "epoch": epoch, "batch": b, "num_batches": self.num_batches,
                         "noisy": int(self.noisy.sum()), "checksum": self.checksum},
                "model": unwrap(self.model).state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": rng_state()}

    def load_state_dict(self, ck: dict) -> None:
        """Continue from a checkpoint of :meth:`state_dict`; the settings must match (see _RESUMABLE)."""
        where = self.out_dir / "checkpoint.pt"
        check_resumable(ck, where, format=DM_CHECKPOINT_FORMAT, kind="train-state", what="train-dm",
                        saved=ck.get("config", {}) if isinstance(ck, dict) else {}, now=self.cfg.to_dict(),
                        may_change=_RESUMABLE)
        data = ck["data"]
        if data["n"] != len(self.x) or not math.isclose(data["checksum"], self.checksum, rel_tol=1e-9):
            raise ValueError(f"{where}: the training data differ from the checkpoint's ({data['n']} images then, "
                             f"{len(self.x)} now, or other values): resume on the same data or use --fresh")
        unwrap(self.model).load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.step_count = int(ck["step"])
        set_rng_state(ck["rng"])

    def save(self) -> None:
        """Write the full-state checkpoint and the sample grid (rank 0, atomically)."""
        if self.rank == 0:
            atomic_save(self.state_dict(), self.out_dir / "checkpoint.pt")
            self.save_samples()

    # ------------------------------------------------------------------ the loop (Trainer.run)
    def write_log(self, state: dict) -> None:
        if self.rank == 0:
            self.log.append(state)

    def postfix(self, state: dict) -> dict:
        return {"loss": f"{state['loss']:.3f}", "at": f"{state['loss_at']:.3f}"}

    def finish(self) -> None:
        """The weights file and the result, after the last step."""
        if self.rank == 0:
            save_image_denoiser(self.out_dir / "denoiser.pt", unwrap(self.model), self.ema.module,
                                config=self.cfg.to_dict(), step=self.step_count)
            atomic_write_text(self.out_dir / "result.json", json.dumps(self.result(), indent=2) + "\n")

    def result(self) -> dict:
        """Summary of the run: steps, throughput, files."""
        cfg = self.cfg
        done = self.step_count - self._start_step
        ips = done * cfg.batch_size / self.train_seconds if self.train_seconds else None
        return {"steps": self.step_count, "images": self.step_count * cfg.batch_size,
                "epochs": self.step_count / self.num_batches, "arch": denoiser_arch(self.model),
                "at": self.at.as_dict(), "noisy_images": int(self.noisy.sum()), "world_size": self.world_size,
                "device": str(self.device), "amp": "bf16" if self.amp_dtype else "off",
                "train_images_per_s": ips, "out_dir": str(self.out_dir),
                "files": {k: str(self.out_dir / k) for k in ("checkpoint.pt", "denoiser.pt", "log.csv", "samples")}}


def check_run(config: TrainDMConfig, overwrite: bool = False) -> str:
    """Before any work, reading only: may this run write into ``config.out_dir`` (a writable folder,
    empty or holding a train-dm run of the same settings, or ``overwrite``), and the tiny archive into
    the data folder when it is to be written? Returns "new", "resume" or "overwrite"."""
    from ..common.outputs import check_out_dir
    from .cifar import default_root
    if config.make_tiny_data:
        check_out_dir(config.data_dir or default_root(), flag="--data-dir")
    return check_run_folder(config.out_dir, config, what="train-dm", may_change=_RESUMABLE,
                            overwrite=overwrite, run_files=DMTrainer.RUN_FILES + ("samples",))


def train_dm(config, *, fresh: bool = False, **kwargs) -> dict:
    """Run a whole training (``dmat train-dm``); under ``torchrun`` it sets up DDP itself.

    ``config``: a :class:`TrainDMConfig`, a dict, or a preset name. Returns :meth:`DMTrainer.result`.
    """
    if isinstance(config, str):
        config = make_dm_config(config)
    cfg = config if isinstance(config, TrainDMConfig) else TrainDMConfig.from_dict(config)
    with process_group(cfg.device):
        trainer = DMTrainer(cfg, fresh=fresh, **kwargs)
        for _ in trainer.run():
            pass
        return trainer.result()
