"""Settings of adversarial training (:mod:`dmat_core.robust.train`) and the named presets.

Every field of :class:`TrainATConfig` has the value of the paper's recipe by default
(Wang et al., ICML 2023, docs/science.md section 4, checked against the DM-Improves-AT code:
``train-wa.py``, ``core/utils/parser.py``, ``gowal21uncovering/utils/{watrain,trades}.py``).
A preset overrides a few fields; a JSON config file or command-line flags override a preset.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional

from ..common.settings import check_device, parse_eps, preset_and_file

__all__ = ["TrainATConfig", "PRESETS", "PRESET_NOTES", "make_config"]


@dataclass
class TrainATConfig:
    """All settings of one adversarial-training run (defaults: the paper's WRN-28-10 recipe)."""

    # -- data
    data_dir: Optional[str] = None          # CIFAR-10 python format; default $DMAT_DATA, else ./data
    dataset: str = "cifar10"                # or "cifar100", "digits" (dmat_core.images.datasets)
    generated: Optional[str] = None         # generated set (.npz, docs/science.md section 4)
    unsup_fraction: float = 0.7             # fraction of each batch from the generated set
    n_val: int = 1024                       # first n_val training images held out (model selection)
    epoch_size: Optional[int] = None        # images per "epoch"; default: the paper's definition, the
                                            # size of the real training set (50000) with generated data,
                                            # the training images left after n_val without
    augment: bool = True                    # crop 32 (pad 4) + horizontal flip
    make_tiny_data: bool = False            # no CIFAR under data_dir: write the tiny synthetic archive
    # -- model
    arch: str = "wrn-28-10"
    arch_kw: Dict[str, Any] = field(default_factory=lambda: {"activation": "silu"})
    batchnorm: bool = True                  # False: BN layers replaced by identity (DDP tests on CPU)
    sync_bn: bool = False                   # SyncBatchNorm across DDP ranks (CUDA only)
    # -- objective
    method: str = "trades"                  # "trades" (Zhang et al. 2019) or "pgd" (Madry et al. 2018)
    beta: float = 5.0                       # TRADES weight of the KL term
    label_smoothing: float = 0.1
    norm: str = "linf"
    eps: float = 8 / 255
    attack_steps: int = 10
    attack_step_size: Optional[float] = 2 / 255   # None: the attack's default for the norm
    attack_init: str = "uniform"            # trades: uniform / normal; pgd: uniform / none
    attack_bn: Optional[str] = None         # BN during the attack: "frozen" / "eval" (None: frozen
                                            # for TRADES as the reference, eval for PGD-AT)
    # -- optimisation
    batch_size: int = 512                   # global batch (all ranks together)
    epochs: float = 400
    steps: Optional[int] = None             # total optimiser steps (default epochs x batches/epoch)
    lr: float = 0.2
    momentum: float = 0.9                   # used when cycle_momentum is False
    cycle_momentum: bool = True             # OneCycleLR's 0.95 -> 0.85 -> 0.95 (reference code)
    nesterov: bool = True
    weight_decay: float = 5e-4
    no_decay: str = "bn"                    # "bn" (reference), "bn_bias" or "none"
    warmup_frac: float = 0.025
    schedule_unit: str = "epoch"            # lr changes per "epoch" (reference) or per "step"
    grad_clip: Optional[float] = None
    ema_tau: float = 0.995
    bn_init_first_batch: bool = True        # BN momentum 1 on the first step (reference code)
    # -- validation (model selection by PGD-40, CW loss, on the held-out images)
    val_every: Optional[int] = None         # steps between validations (default: one epoch)
    val_steps: int = 40
    val_step_size: Optional[float] = 2 / 255
    val_loss: str = "cw"
    # -- engineering
    seed: int = 0
    out_dir: str = "runs/train-at"
    checkpoint_every: Optional[int] = None  # steps between full-state checkpoints (default: one epoch)
    log_every: int = 20
    amp: str = "auto"                       # auto (bf16 on GPUs that have it, fp16 on others, off on CPU), bf16, fp16, off
    channels_last: Optional[bool] = None    # default: on CUDA
    device: str = "auto"                    # auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:N
    progress: bool = True

    def __post_init__(self):
        if self.device is None or not isinstance(self.device, str):   # None (older files), torch.device
            self.device = "auto" if self.device is None else str(self.device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainATConfig":
        """Build from a dict; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(known))}")
        d = dict(d)
        for k in ("eps", "attack_step_size", "val_step_size"):
            if isinstance(d.get(k), str):
                d[k] = parse_eps(d[k])
        return cls(**d)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def replace(self, **changes) -> "TrainATConfig":
        return TrainATConfig.from_dict({**self.to_dict(), **changes})

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainATConfig":
        """Raise ValueError naming the first setting out of range; returns self."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"config: {msg}")

        def finite(name: str, lo: float, hi: float, lo_open: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi
            need(ok, f"{name}={v!r} must lie in {'(' if lo_open else '['}{lo}, {hi}]")

        need(self.method in ("trades", "pgd"), f"method must be 'trades' or 'pgd', got {self.method!r}")
        need(self.norm in ("linf", "l2"), f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if self.norm == "linf" and isinstance(self.eps, (int, float)) and self.eps > 0.25:
            raise ValueError(f"config: eps={self.eps:.4g} is far beyond any Linf budget for images in "
                             "[0, 1] (8/255 = 0.0314); was it given in pixel units? write 8/255")
        finite("eps", 0.0, 1.0 if self.norm == "linf" else 64.0, lo_open=True)
        for name in ("attack_step_size", "val_step_size"):
            if getattr(self, name) is not None:
                finite(name, 0.0, 64.0, lo_open=True)
        need(isinstance(self.attack_steps, int) and self.attack_steps >= 1, "attack_steps must be an integer >= 1")
        need(isinstance(self.val_steps, int) and self.val_steps >= 1, "val_steps must be an integer >= 1")
        inits = ("uniform", "normal") if self.method == "trades" else ("uniform", "none")
        need(self.attack_init in inits, f"attack_init for {self.method} must be one of {inits}, got {self.attack_init!r}")
        need(self.attack_bn in (None, "frozen", "eval"), f"attack_bn must be 'frozen' or 'eval', got {self.attack_bn!r}")
        need(self.val_loss in ("ce", "cw"), f"val_loss must be 'ce' or 'cw', got {self.val_loss!r}")
        finite("beta", 0.0, 1e6)
        finite("label_smoothing", 0.0, 1.0)
        finite("unsup_fraction", 0.0, 1.0)
        finite("lr", 0.0, 100.0, lo_open=True)
        finite("momentum", 0.0, 1.0)
        finite("weight_decay", 0.0, 1.0)
        finite("warmup_frac", 0.0, 1.0)
        finite("ema_tau", 0.0, 0.999999)
        finite("epochs", 0.0, 1e6, lo_open=True)
        need(self.no_decay in ("bn", "bn_bias", "none"), f"no_decay must be 'bn', 'bn_bias' or 'none', got {self.no_decay!r}")
        need(self.schedule_unit in ("epoch", "step"), f"schedule_unit must be 'epoch' or 'step', got {self.schedule_unit!r}")
        need(self.amp in ("auto", "bf16", "fp16", "off"), f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        need(self.dataset in ("cifar10", "cifar100", "digits"),
             f"dataset must be cifar10, cifar100 or digits, got {self.dataset!r}")
        self.device = check_device(self.device)
        for name in ("batch_size", "log_every"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        for name in ("steps", "val_every", "checkpoint_every", "epoch_size"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and v >= 1), f"{name} must be None or an integer >= 1, got {v!r}")
        need(isinstance(self.n_val, int) and self.n_val >= 0, f"n_val must be an integer >= 0, got {self.n_val!r}")
        need(self.grad_clip is None or (math.isfinite(self.grad_clip) and self.grad_clip > 0),
             f"grad_clip must be None or > 0, got {self.grad_clip!r}")
        need(isinstance(self.arch_kw, dict), f"arch_kw must be a dict, got {type(self.arch_kw).__name__}")
        from .classifiers import CLASSIFIERS
        need(str(self.arch).lower().replace("_", "-") in CLASSIFIERS,
             f"unknown classifier {self.arch!r}; known: {', '.join(sorted(CLASSIFIERS))}")
        if self.unsup_fraction > 0 and not self.generated:
            raise ValueError(
                f"config: unsup_fraction={self.unsup_fraction} draws that fraction of every batch from "
                "generated images, but no generated set is given: pass --generated FILE.npz (the paper's "
                "https://huggingface.co/datasets/P2333/DM-Improves-AT/resolve/main/cifar10/1m.npz) "
                "or --unsup-fraction 0 to train on real data only")
        return self

    def save(self, path) -> None:
        from ..common.checkpoint import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


# ----------------------------------------------------------------------------- presets

PRESETS: Dict[str, Dict[str, Any]] = {
    # The paper's CIFAR-10 Linf WRN-28-10 recipe with the 1M generated set: the command of the
    # DM-Improves-AT README (batch 512, 400 epochs, lr 0.2, TRADES beta 5, ls 0.1, fraction 0.7)
    # and the defaults of its parser/trainer (wd 5e-4 without decay on BN, Nesterov, OneCycle
    # 'cosinew' stepped per epoch with 2.5% warm-up, EMA 0.995, PGD-40 CW model selection).
    "paper-wrn28-10": dict(arch="wrn-28-10", arch_kw={"activation": "silu"}, batch_size=512, lr=0.2,
                           epochs=400, schedule_unit="epoch", no_decay="bn",
                           cycle_momentum=True, unsup_fraction=0.7),
    # About an hour on one Colab GPU, estimated, not measured (see PRESET_NOTES): PreActResNet-18, 15 epochs.
    "colab-small": dict(arch="preact-resnet18", arch_kw={"activation": "relu"}, batch_size=512, lr=0.2,
                        epochs=15, schedule_unit="step", no_decay="bn_bias",
                        unsup_fraction=0.7, checkpoint_every=200, log_every=20),
    # scikit-learn's 8x8 grey digits on a CPU in minutes; eps in [0, 1] pixel units (see PRESET_NOTES)
    "digits": dict(dataset="digits", arch="small-cnn", arch_kw={"width": 32, "in_channels": 1},
                   batch_size=128, lr=0.05, epochs=60, n_val=200, unsup_fraction=0.0,
                   schedule_unit="step", no_decay="bn_bias", eps=0.1, attack_step_size=0.025,
                   attack_steps=10, val_steps=20, val_step_size=0.025, checkpoint_every=200,
                   log_every=50, amp="off"),
    # Seconds on a CPU, on the tiny synthetic archive (tests, "I only have a CPU").
    "cpu-quick": dict(arch="small-cnn", arch_kw={"width": 16}, batch_size=64, lr=0.05, epochs=3,
                      n_val=100, unsup_fraction=0.0, schedule_unit="step", no_decay="bn_bias",
                      attack_steps=3, attack_step_size=4 / 255, val_steps=10, val_step_size=2 / 255,
                      make_tiny_data=True, checkpoint_every=8, log_every=4, amp="off"),
}

PRESET_NOTES = {
    "paper-wrn28-10": "Wang et al. 2023 with the 1M EDM set: the README command of DM-Improves-AT "
                      "(batch 512, 400 epochs). The published 67.31% AA WRN-28-10 used 20M generated "
                      "images (RobustBench model card) and a longer run whose batch size and epoch count "
                      "are in the paper's tables (the WRN-70-16 / 50M run: 2000 epochs); "
                      "set --batch-size/--epochs/--lr to match.",
    "colab-small": "PreActResNet-18, 15 epochs. Estimate (not measured here): TRADES-10 costs about 12 "
                   "forward+backward passes per image, ~20 GFLOP for PreActResNet-18, so a T4 with fp16 "
                   "should train ~200 images/s, 15 epochs of 50k images in about an hour (L4/A100: "
                   "faster). WRN-28-10 costs ~10x more per image: out of reach in an hour. Needs "
                   "--generated 1m.npz, or --unsup-fraction 0.",
    "digits": "SmallCNN (width 32, one input channel) on scikit-learn's handwritten digits (1,097 "
              "training images after 200 held out, 8x8 grey, no download), TRADES with Linf eps 0.1 "
              "(1.6 of the scans' 16 grey levels) and a 10-step attack, 60 epochs: minutes on a CPU. "
              "With --generated, a set of generated 8x8 digits (dmat generate on a digits DM).",
    "cpu-quick": "SmallCNN (width 16), 3-step attack, 3 epochs of the tiny synthetic archive, which is "
                 "written under data_dir when absent.",
}


def make_config(preset: Optional[str] = None, config_file=None, **overrides) -> TrainATConfig:
    """Defaults < preset < JSON config file < overrides.

    An override of None puts the setting back to its default (``epoch_size=None``: the
    paper's epoch definition; ``generated=None``: no generated set), whatever the preset or
    file said; leave a setting out to keep theirs."""
    d = preset_and_file(PRESETS, preset, config_file)
    known = {f.name for f in fields(TrainATConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(known))}")
    for k, v in overrides.items():
        if v is None:
            d.pop(k, None)                  # the dataclass default
        else:
            d[k] = v
    return TrainATConfig.from_dict(d).validate()
