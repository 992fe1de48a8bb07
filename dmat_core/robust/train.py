"""Adversarial training of classifiers with generated data (Wang et al., ICML 2023;
docs/science.md section 4).

Size: one module of about 420 lines on purpose: the whole classifier recipe in one class (data,
model, the step, validation, checkpoint state), so that it reads side by side with the reference
trainer; the loop itself is :mod:`dmat_core.common.training`.

    trainer = ATTrainer(make_config("cpu-quick", data_dir="data/tiny", out_dir="runs/q"))
    for state in trainer.run():             # one dict per optimiser step
        if "val_robust_acc" in state:
            print(state["step"], state["loss"], state["val_robust_acc"])
    model = trainer.ema.module              # the EMA classifier (inputs in [0, 1], logits out)

Or ``train_at(config, reuse=True) -> result`` (what ``dmat train-at`` runs, also under
``torchrun``): with ``reuse``, a finished run of the same settings in ``out_dir`` is not trained
again, its ``result.json`` is returned (:func:`finished_result`: "load if finished, else train").

One step: the global batch (``unsup_fraction`` generated, the rest real) is augmented (crop +
flip), each DDP rank takes its slice, the inner maximisation finds ``x_adv`` (TRADES: KL from
the clean prediction, BN frozen; PGD-AT: cross-entropy), the outer loss (``trades_loss`` or
``pgd_at_loss``) is minimised by SGD Nesterov under the one-cycle cosine schedule, and the EMA
of the weights is updated. Every ``val_every`` steps the EMA model is attacked by PGD-40 (CW
loss) on the held-out first ``n_val`` training images; the best one is kept (``best.pt``).

Exact resume: every random number of step ``t`` comes from seeds that are a pure function
of ``(seed, t)`` (the augmentation, drawn for the global batch) and ``(seed, rank, t)`` (the
attack's random start), and the batch is ``sampler.batch_indices(epoch, batch)`` with
``(epoch, batch) = divmod(t, num_batches)``. A checkpoint (model, EMA, optimiser, step,
sampler position, RNG states, best score) therefore determines the rest of the run: a run
killed at any point and resumed from its last checkpoint ends bitwise equal on CPU (tested with
one process and with two DDP processes).

Files under ``out_dir``, written by rank 0: ``config.json``, ``checkpoint.pt`` (full state),
``best.pt`` and ``final.pt`` (``model_state_dict`` = EMA and ``unaveraged_model_state_dict``:
the published format, see ``load_published_checkpoint``, tagged ``format`` =
``WEIGHTS_FORMAT``) and ``result.json``, each atomically;
``log.csv`` and ``val.csv`` get one row at a time and are cut back to the checkpoint's step
when a run resumes.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..common.checkpoint import atomic_save, atomic_write_text, load_checkpoint, rng_state, set_rng_state
from ..common.settings import read_json_file, resolve_device
from ..common.train_utils import (EMA, CSVLog, all_reduce_sum, bn_momentum, derived_seed, dist_info,
                                  one_cycle_cosine, param_groups, process_group, strip_batchnorm, unwrap)
from ..common.training import (NonFiniteLossError, RunMismatchError, Trainer, check_resumable, check_run_folder,
                               prepare_out_dir)
from ..images.datasets import dataset_info, load_images
from ..images.data import (MixedBatchSampler, augment_crop_flip, gather_mixed, load_generated,
                           split_validation, to_tensor_images, validate_generated)
from .attacks import pgd
from .classifiers import build_classifier, load_published_checkpoint
from .config import TrainATConfig, make_config
from .pgd_at import pgd_at
from .trades import trades

__all__ = ["ATTrainer", "train_at", "finished_result", "check_run", "NonFiniteLossError", "CHECKPOINT_FORMAT",
           "WEIGHTS_FORMAT"]

CHECKPOINT_FORMAT = "dmat-at-train/1"   # checkpoint.pt: the full training state
WEIGHTS_FORMAT = "dmat-at-weights/1"    # best.pt, final.pt: weights in the published layout
_AUG, _ATTACK, _VAL = 1, 2, 3  # random streams
# settings that may change when a run is resumed (everything else must match the checkpoint)
_RESUMABLE = {"out_dir", "data_dir", "generated", "progress", "log_every", "checkpoint_every",
              "device", "amp", "channels_last", "make_tiny_data"}
_ARCH_KEYS = ("arch", "arch_kw", "batchnorm", "dataset")


class _ScaleGrad(torch.autograd.Function):
    """Identity on the logits (returned in float32); multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, logits, scale):
        ctx.scale, ctx.dtype = scale, logits.dtype
        return logits.float()

    @staticmethod
    def backward(ctx, g):
        return (g * ctx.scale).to(ctx.dtype), None


class _AttackView(nn.Module):
    """The model as an attack sees it under fp16 autocast: same logits, input gradients scaled
    by 2^8 so they do not underflow in half precision (sign and normalised steps ignore scale)."""

    def __init__(self, model: nn.Module, scale: float = 256.0):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return _ScaleGrad.apply(self.model(x), self.scale)


class ATTrainer(Trainer):
    """PGD-AT / TRADES training driven step by step (:meth:`step`) or as a generator (:meth:`run`).

    Args:
        config: a :class:`~dmat_core.robust.config.TrainATConfig` (or a dict of its fields).
        real: optional ``(images, labels)`` uint8 (N, 32, 32, 3) / int (N,) instead of CIFAR files.
        generated: optional ``(images, labels)`` instead of ``config.generated``.
        fresh: remove the files of an earlier run in ``out_dir`` and start over; without it a run
            with the same settings resumes from ``out_dir/checkpoint.pt`` and one with other
            settings is refused (:class:`~dmat_core.common.training.RunMismatchError`).
    """

    RUN_FILES = ("checkpoint.pt", "best.pt", "final.pt", "log.csv", "val.csv", "result.json")

    def __init__(self, config, *, real=None, generated=None, fresh: bool = False):
        self.cfg = cfg = config if isinstance(config, TrainATConfig) else TrainATConfig.from_dict(config)
        self.rank, self.world_size, local_rank = dist_info()
        if cfg.batch_size % self.world_size:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {self.world_size} processes")
        self.device = resolve_device(cfg.device, local_rank)  # "auto": cuda:LOCAL_RANK if available
        cuda = self.device.type == "cuda"
        self.amp_dtype = self._amp_dtype()
        self.channels_last = cuda if cfg.channels_last is None else cfg.channels_last
        self.out_dir = Path(cfg.out_dir)

        # -- data: real training images (first n_val held out), generated images, the sampler
        self.data = dataset_info(cfg.dataset)   # image shape, classes, the augmentation that suits it
        self.num_classes = self.data.num_classes
        x_all, y_all = self._load_real(real)
        (xtr, ytr), (xv, yv) = split_validation(x_all, y_all, cfg.n_val)
        self.train_real = (np.ascontiguousarray(xtr), np.ascontiguousarray(ytr))
        self.generated = self._load_generated(generated) if cfg.unsup_fraction > 0 else None
        epoch_size = cfg.epoch_size or (len(x_all) if cfg.unsup_fraction > 0 else len(xtr))
        self.num_batches = math.ceil(epoch_size / cfg.batch_size)
        self.sampler = MixedBatchSampler(len(xtr), len(self.generated[1]) if self.generated else 0,
                                         cfg.batch_size, cfg.unsup_fraction, num_batches=self.num_batches,
                                         seed=cfg.seed, rank=self.rank, world_size=self.world_size)
        self.total_steps = cfg.steps or max(1, round(cfg.epochs * self.num_batches))
        self.val_x = to_tensor_images(xv[self.rank::self.world_size], self.device)
        if self.channels_last:
            self.val_x = self.val_x.contiguous(memory_format=torch.channels_last)
        self.val_y = torch.as_tensor(yv[self.rank::self.world_size], device=self.device)
        self.val_every = (cfg.val_every or self.num_batches) if cfg.n_val > 0 else 0
        self.checkpoint_every = cfg.checkpoint_every or self.num_batches

        # -- model (same initial weights on every rank), EMA, optimiser
        self.model = self._build_model()
        self.ema = EMA(self.model, cfg.ema_tau, warmup=cfg.warmup_frac * self.total_steps)
        self.optimizer = torch.optim.SGD(param_groups(self.model, cfg.weight_decay, cfg.no_decay),
                                         lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.net = self.model  # what the outer loss calls: the DDP wrapper when distributed
        if self.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
        self.step_count, self.best = 0, {"val_robust_acc": -1.0, "step": 0}
        self.train_seconds, self.images_seen = 0.0, 0
        self.log = CSVLog(self.out_dir / "log.csv", ["step", "epoch", "lr", "momentum", "loss", "ce_clean",
                                                     "ce_adv", "kl", "acc_clean", "acc_adv", "images_per_s"])
        self.val_log = CSVLog(self.out_dir / "val.csv", ["step", "epoch", "val_clean_acc", "val_robust_acc"])
        self.log_every, self.progress = cfg.log_every, cfg.progress and self.rank == 0
        self.desc = f"train-at {cfg.method}"
        prepare_out_dir(self.out_dir, fresh=fresh, run_files=self.RUN_FILES, rank=self.rank,
                        world_size=self.world_size)
        if (self.out_dir / "checkpoint.pt").is_file():
            self.load_state_dict(load_checkpoint(self.out_dir / "checkpoint.pt"))
        if self.rank == 0:
            self.log.truncate(self.step_count)  # drop rows of steps that will be (re)done
            self.val_log.truncate(self.step_count)
            cfg.save(self.out_dir / "config.json")

    # ------------------------------------------------------------------ construction helpers
    def _amp_dtype(self) -> Optional[torch.dtype]:
        amp, cuda = self.cfg.amp, self.device.type == "cuda"
        if amp == "off" or (amp == "auto" and not cuda):
            return None
        if amp == "auto":  # bf16 needs Ampere or newer; fp16 elsewhere (T4, V100)
            return torch.bfloat16 if torch.cuda.get_device_capability(self.device) >= (8, 0) else torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _load_real(self, real):
        if real is not None:
            images, labels = real
            validate_generated(images, labels, self.num_classes, where="real training data",
                               shape=self.data.shape)
            return images, labels
        return load_images(self.cfg.dataset, True, self.cfg.data_dir, self.cfg.make_tiny_data)

    def _load_generated(self, generated):
        if generated is not None:
            validate_generated(generated[0], generated[1], self.num_classes, where="generated data",
                               shape=self.data.shape)
            return generated
        return load_generated(self.cfg.generated, num_classes=self.num_classes, shape=self.data.shape)

    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            try:
                model = build_classifier(cfg.arch, num_classes=self.num_classes, **cfg.arch_kw)
            except TypeError as e:
                raise ValueError(f"arch_kw {cfg.arch_kw} do not fit {cfg.arch!r}: {e}") from None
        if not cfg.batchnorm:
            strip_batchnorm(model)
            model.arch = getattr(model, "arch", cfg.arch) + " without BN"
        if cfg.sync_bn and self.world_size > 1 and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _attack_view(self, model: nn.Module) -> nn.Module:
        return _AttackView(model) if self.amp_dtype == torch.float16 else model

    # ------------------------------------------------------------------ one step
    def schedule(self, t: int) -> tuple:
        """``(lr, momentum)`` of step ``t``: one-cycle cosine per step or per epoch."""
        cfg = self.cfg
        pos, total = (t, self.total_steps) if cfg.schedule_unit == "step" else \
            (t // self.num_batches, math.ceil(self.total_steps / self.num_batches))
        lr = one_cycle_cosine(pos, total, cfg.warmup_frac, cfg.lr)
        mom = one_cycle_cosine(pos, total, cfg.warmup_frac, 0.85, start=0.95, end=0.95) \
            if cfg.cycle_momentum else cfg.momentum
        return lr, mom

    def batch(self, t: int):
        """This rank's slice of the augmented global batch of step ``t``: ``(x, y)`` on the device."""
        epoch, b = divmod(t, self.num_batches)
        idx = self.sampler.batch_indices(epoch, b).numpy()  # (B,) the global batch, all ranks
        images, labels = gather_mixed(idx, self.train_real, self.generated)
        x = to_tensor_images(images, self.device)  # (B, 3, 32, 32) in [0, 1]
        if self.cfg.augment:  # drawn for the global batch: the same on every rank
            x = augment_crop_flip(x, generator=torch.Generator().manual_seed(derived_seed(self.cfg.seed, _AUG, t)),
                                  padding=self.data.crop_padding, flip=self.data.flip)
        x = x[self.rank::self.world_size]
        y = torch.as_tensor(labels[self.rank::self.world_size], device=self.device)
        return (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y

    def step(self) -> dict:
        """One optimiser step; returns the step's metrics (averaged over ranks) as floats."""
        cfg, t = self.cfg, self.step_count
        start = time.perf_counter()
        lr, mom = self.schedule(t)
        for g in self.optimizer.param_groups:
            g["lr"], g["momentum"] = lr, mom
        x, y = self.batch(t)
        torch.manual_seed(derived_seed(cfg.seed, _ATTACK, self.rank, t))  # the attack's random start
        first = bn_momentum(self.model, 1.0) if t == 0 and cfg.bn_init_first_batch else contextlib.nullcontext()
        self.model.train()
        with first, self.autocast():
            attacked = self._attack_view(self.model)  # never the DDP wrapper: no gradient sync
            if cfg.method == "trades":
                loss, parts = trades(self.net, x, y, eps=cfg.eps, norm=cfg.norm, steps=cfg.attack_steps,
                                     step_size=cfg.attack_step_size, init=cfg.attack_init, beta=cfg.beta,
                                     label_smoothing=cfg.label_smoothing, bn_mode=cfg.attack_bn or "frozen",
                                     attack_model=attacked)
            else:
                loss, parts = pgd_at(self.net, x, y, eps=cfg.eps, norm=cfg.norm, steps=cfg.attack_steps,
                                     step_size=cfg.attack_step_size, random_start=cfg.attack_init == "uniform",
                                     label_smoothing=cfg.label_smoothing, bn_mode=cfg.attack_bn or "eval",
                                     attack_model=attacked)
        metrics = self.reduce(parts)
        self.check_finite(metrics, lr, "Lower the learning rate, or use amp='bf16'/'off' if fp16 overflows.",
                          self.out_dir / "checkpoint.pt")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.model)
        self.step_count += 1
        self.train_seconds += time.perf_counter() - start
        self.images_seen += len(x) * self.world_size
        return {"step": self.step_count, "epoch": t // self.num_batches, "lr": lr, "momentum": mom, **metrics}

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict:
        """Clean and PGD-``val_steps`` (``val_loss``) accuracy of the EMA model on the held-out images."""
        cfg, ema = self.cfg, self.ema.module
        attacked, bs = self._attack_view(ema), max(1, cfg.batch_size // self.world_size)
        clean = robust = 0
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), self.autocast():
            torch.manual_seed(derived_seed(cfg.seed, _VAL, self.rank, self.step_count))
            for i in range(0, len(self.val_y), bs):
                xb, yb = self.val_x[i:i + bs], self.val_y[i:i + bs]
                x_adv = pgd(attacked, xb, yb, eps=cfg.eps, norm=cfg.norm, steps=cfg.val_steps,
                            step_size=cfg.val_step_size, loss=cfg.val_loss)
                with torch.no_grad():
                    clean += (ema(xb).argmax(1) == yb).sum().item()
                    robust += (ema(x_adv).argmax(1) == yb).sum().item()
        clean, robust, n = all_reduce_sum([clean, robust, len(self.val_y)], self.device)
        return {"val_clean_acc": clean / max(n, 1), "val_robust_acc": robust / max(n, 1)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        epoch, b = divmod(self.step_count, self.num_batches)
        return {"format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "arch": self.model_arch,
                "step": self.step_count, "total_steps": self.total_steps, "world_size": self.world_size,
                "sampler": {**self.sampler.state_dict(), "epoch": epoch, "batch": b},
                "model": unwrap(self.model).state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "best": dict(self.best), "rng": rng_state()}   # torch's: every draw of a step is reseeded

    @property
    def model_arch(self) -> str:
        return getattr(unwrap(self.model), "arch", self.cfg.arch)

    def load_state_dict(self, ck: dict) -> None:
        """Continue from a checkpoint of :meth:`state_dict`; the settings must match (see _RESUMABLE)."""
        where = self.out_dir / "checkpoint.pt"
        saved = ck.get("config", {}) if isinstance(ck, dict) else {}
        if isinstance(ck, dict) and ck.get("format") == CHECKPOINT_FORMAT and any(
                saved.get(k) != self.cfg.to_dict()[k] for k in _ARCH_KEYS):
            raise RunMismatchError(
                f"{where} is a checkpoint of another architecture: {ck['arch']} "
                f"({', '.join(f'{k}={saved.get(k)!r}' for k in _ARCH_KEYS)}), this run builds {self.model_arch}; "
                "use another out_dir, the checkpoint's settings, or start over with fresh=True (--fresh)")
        check_resumable(ck, where, format=CHECKPOINT_FORMAT, what="train-at", saved=saved, now=self.cfg.to_dict(),
                        may_change=_RESUMABLE)
        load_published_checkpoint(ck["model"], unwrap(self.model))
        self.ema.load_state_dict(ck["ema"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.sampler.load_state_dict(ck["sampler"])  # checks the data sizes did not change
        self.step_count, self.best = int(ck["step"]), dict(ck["best"])
        set_rng_state(ck["rng"])

    def save(self) -> None:
        """Write the full-state checkpoint (rank 0, atomically)."""
        if self.rank == 0:
            atomic_save(self.state_dict(), self.out_dir / "checkpoint.pt")

    def _save_weights(self, name: str, **extra) -> None:
        if self.rank == 0:
            atomic_save({"format": WEIGHTS_FORMAT, "model_state_dict": self.ema.module.state_dict(),
                         "unaveraged_model_state_dict": unwrap(self.model).state_dict(),
                         "arch": self.model_arch, "config": self.cfg.to_dict(), "step": self.step_count,
                         **extra}, self.out_dir / name)

    # ------------------------------------------------------------------ the loop (Trainer.run)
    def start(self) -> None:
        self._last_log = (time.perf_counter(), self.images_seen)   # (time, images seen) at the last log row

    def write_log(self, state: dict) -> None:
        """A row of ``log.csv``, with the throughput since the last row."""
        now, (then, images) = time.perf_counter(), self._last_log
        state["images_per_s"] = (self.images_seen - images) / (now - then)
        self._last_log = (now, self.images_seen)
        if self.rank == 0:
            self.log.append(state)

    def after_step(self, state: dict) -> None:
        """Validation every ``val_every`` steps and after the last one; ``best.pt`` on a new best."""
        if not self.due(self.val_every) or not self.val_every:
            return
        state.update(self.validate())
        if self.rank == 0:
            self.val_log.append(state)
        if state["val_robust_acc"] >= self.best["val_robust_acc"]:
            self.best = {"val_robust_acc": state["val_robust_acc"], "val_clean_acc": state["val_clean_acc"],
                         "step": self.step_count}
            self._save_weights("best.pt", val=self.best)

    def postfix(self, state: dict) -> dict:
        return {"loss": f"{state['loss']:.3f}", "acc_adv": f"{state['acc_adv']:.2f}"}

    def finish(self) -> None:
        """``final.pt`` (EMA and raw weights) and ``result.json``, after the last step."""
        self._save_weights("final.pt")
        if self.rank == 0:
            atomic_write_text(self.out_dir / "result.json", json.dumps(self.result(), indent=2) + "\n")

    def result(self) -> dict:
        """Summary of the run: steps, throughput, last and best validation, files."""
        rows = []
        if self.val_log.path.is_file():
            with open(self.val_log.path, newline="") as f:
                rows = list(csv.DictReader(f))
        last = {k: float(v) for k, v in rows[-1].items() if k.startswith("val_")} if rows else {}
        ips = self.images_seen / self.train_seconds if self.train_seconds else None
        return {"steps": self.step_count, "total_steps": self.total_steps, "num_batches": self.num_batches,
                "epochs": self.step_count / self.num_batches, "arch": self.model_arch,
                "world_size": self.world_size, "device": str(self.device),
                "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
                "train_images_per_s": ips, "last_val": last, "best": self.best,
                "out_dir": str(self.out_dir), "files": {k: str(self.out_dir / k) for k in
                ("checkpoint.pt", "best.pt", "final.pt", "log.csv", "val.csv", "config.json")}}


def finished_result(config) -> Optional[dict]:
    """The ``result.json`` of a finished run of these settings in ``config.out_dir``, else None.

    Finished: ``final.pt`` and ``result.json`` are there (both are written after the last step).
    The same settings: ``config.json`` agrees on every setting a resumed run must keep (all but
    paths, logging, device and precision). A folder of other settings gives None, and training
    into it then stops with the trainer's clear error."""
    cfg = config if isinstance(config, TrainATConfig) else TrainATConfig.from_dict(config)
    out = Path(cfg.out_dir)
    if not all((out / f).is_file() for f in ("final.pt", "result.json", "config.json")):
        return None
    saved, now = TrainATConfig.from_file(out / "config.json", "train-at config").to_dict(), cfg.to_dict()
    if any(saved.get(k) != v for k, v in now.items() if k not in _RESUMABLE):
        return None
    return read_json_file(out / "result.json", "train-at result")


def check_run(config: TrainATConfig, overwrite: bool = False) -> str:
    """Before any work, reading only: may this run write into ``config.out_dir`` (a writable folder,
    empty or holding a train-at run of the same settings, or ``overwrite``), and are its input files
    there (the generated set; the data folder writable when the tiny archive is to be written)?
    Returns what the run will do there: "new", "resume" or "overwrite"."""
    from ..common.outputs import check_out_dir
    from ..images.cifar import default_root
    if config.unsup_fraction > 0 and config.generated and not Path(config.generated).exists():
        raise FileNotFoundError(f"generated data not found: {config.generated}")
    if config.make_tiny_data:
        check_out_dir(config.data_dir or default_root(), flag="--data-dir")
    return check_run_folder(config.out_dir, config, what="train-at", may_change=_RESUMABLE,
                            overwrite=overwrite, run_files=ATTrainer.RUN_FILES)


def train_at(config, *, reuse: bool = False, fresh: bool = False, **kwargs) -> dict:
    """Run a whole training (``dmat train-at``); under ``torchrun`` it sets up DDP itself.

    ``config``: a :class:`TrainATConfig`, a dict, or a preset name. ``reuse``: when ``out_dir``
    holds a finished run of the same settings, return its result without training
    (:func:`finished_result`). Returns :meth:`ATTrainer.result`.
    """
    if isinstance(config, str):
        config = make_config(config)
    cfg = config if isinstance(config, TrainATConfig) else TrainATConfig.from_dict(config)
    if reuse and not fresh and (done := finished_result(cfg)) is not None:
        return done
    with process_group(cfg.device):
        trainer = ATTrainer(cfg, fresh=fresh, **kwargs)
        for _ in trainer.run():
            pass
        return trainer.result()
