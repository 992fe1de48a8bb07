"""Settings of adversarial training (:mod:`dmat_core.robust.train`) and the named presets.

Every field of :class:`TrainATConfig` has the value of the paper's recipe by default
(Wang et al., ICML 2023, docs/science.md section 4, checked against the DM-Improves-AT code:
``train-wa.py``, ``core/utils/parser.py``, ``gowal21uncovering/utils/{watrain,trades}.py``).
A preset overrides a few fields; a JSON config file or command-line flags override a preset.
Types, ranges and choices are declared on the fields and checked by the typed settings layer
(:mod:`dmat_core.common.settings`: strict types, one line per error, ``None`` a value only where
a field says what it means).
"""
from __future__ import annotations

from typing import Any, Dict, Literal, Optional

from pydantic import Field, model_validator

from ..common.settings import Budget, Device, Settings

__all__ = ["TrainATConfig", "PRESETS", "PRESET_NOTES", "make_config"]


class TrainATConfig(Settings):
    """All settings of one adversarial-training run (defaults: the paper's WRN-28-10 recipe)."""

    # -- data
    data_dir: Optional[str] = None          # CIFAR-10 python format; None: $DMAT_DATA, else ./data
    dataset: Literal["cifar10", "cifar100", "digits"] = "cifar10"   # dmat_core.images.datasets
    generated: Optional[str] = None         # generated set (.npz, docs/science.md section 4); None: none
    unsup_fraction: float = Field(0.7, ge=0.0, le=1.0)   # fraction of each batch from the generated set
    n_val: int = Field(1024, ge=0)          # first n_val training images held out (model selection)
    epoch_size: Optional[int] = Field(None, ge=1)   # images per "epoch"; None: the paper's definition,
                                            # the size of the real training set (50000) with generated
                                            # data, the training images left after n_val without
    augment: bool = True                    # crop 32 (pad 4) + horizontal flip
    make_tiny_data: bool = False            # no CIFAR under data_dir: write the tiny synthetic archive
    # -- model
    arch: str = "wrn-28-10"
    arch_kw: Dict[str, Any] = Field(default_factory=lambda: {"activation": "silu"})
    batchnorm: bool = True                  # False: BN layers replaced by identity (DDP tests on CPU)
    sync_bn: bool = False                   # SyncBatchNorm across DDP ranks (CUDA only)
    # -- objective
    method: Literal["trades", "pgd"] = "trades"   # TRADES (Zhang et al. 2019) or PGD-AT (Madry et al. 2018)
    beta: float = Field(5.0, ge=0.0, le=1e6)  # TRADES weight of the KL term
    label_smoothing: float = Field(0.1, ge=0.0, le=1.0)
    norm: Literal["linf", "l2"] = "linf"
    eps: Budget = Field(8 / 255, gt=0.0, le=64.0)   # in [0, 1] image units; Linf at most 1
    attack_steps: int = Field(10, ge=1)
    attack_step_size: Optional[Budget] = Field(2 / 255, gt=0.0, le=64.0)   # None: the attack's default for the norm
    attack_init: Literal["uniform", "normal", "none"] = "uniform"   # trades: uniform / normal; pgd: uniform / none
    attack_bn: Optional[Literal["frozen", "eval"]] = None   # BN during the attack; None: frozen for
                                            # TRADES as the reference, eval for PGD-AT
    # -- optimisation
    batch_size: int = Field(512, ge=1)      # global batch (all ranks together)
    epochs: float = Field(400, gt=0.0, le=1e6)
    steps: Optional[int] = Field(None, ge=1)   # total optimiser steps; None: epochs x batches/epoch
    lr: float = Field(0.2, gt=0.0, le=100.0)
    momentum: float = Field(0.9, ge=0.0, le=1.0)   # used when cycle_momentum is False
    cycle_momentum: bool = True             # OneCycleLR's 0.95 -> 0.85 -> 0.95 (reference code)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)
    no_decay: Literal["bn", "bn_bias", "none"] = "bn"   # no weight decay on: BN (reference), BN and biases, nothing
    warmup_frac: float = Field(0.025, ge=0.0, le=1.0)
    schedule_unit: Literal["epoch", "step"] = "epoch"   # lr changes per epoch (reference) or per step
    grad_clip: Optional[float] = Field(None, gt=0.0)   # None: no clipping
    ema_tau: float = Field(0.995, ge=0.0, le=0.999999)
    bn_init_first_batch: bool = True        # BN momentum 1 on the first step (reference code)
    # -- validation (model selection by PGD-40, CW loss, on the held-out images)
    val_every: Optional[int] = Field(None, ge=1)   # steps between validations; None: one epoch
    val_steps: int = Field(40, ge=1)
    val_step_size: Optional[Budget] = Field(2 / 255, gt=0.0, le=64.0)   # None: the attack's default
    val_loss: Literal["ce", "cw"] = "cw"
    # -- engineering
    seed: int = Field(0, ge=0)
    out_dir: str = "runs/train-at"
    checkpoint_every: Optional[int] = Field(None, ge=1)   # steps between full-state checkpoints; None: one epoch
    log_every: int = Field(20, ge=1)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"   # auto: bf16 on GPUs that have it, fp16 on others, off on CPU
    channels_last: Optional[bool] = None    # None: on CUDA
    device: Device = "auto"                 # auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:N
    progress: bool = True

    @model_validator(mode="after")
    def _settings_agree(self) -> "TrainATConfig":
        """The checks across settings (each field's own type and range are declared above)."""
        if self.norm == "linf" and self.eps > 0.25:
            raise ValueError(f"eps={self.eps:.4g} is far beyond any Linf budget for images in [0, 1] "
                             "(8/255 = 0.0314); was it given in pixel units? write 8/255")
        inits = ("uniform", "normal") if self.method == "trades" else ("uniform", "none")
        if self.attack_init not in inits:
            raise ValueError(f"attack_init={self.attack_init!r}: for method {self.method!r} attack_init must "
                             f"be one of {', '.join(inits)}")
        from .classifiers import CLASSIFIERS
        if str(self.arch).lower().replace("_", "-") not in CLASSIFIERS:
            raise ValueError(f"arch={self.arch!r}: unknown classifier; known: {', '.join(sorted(CLASSIFIERS))}")
        if self.unsup_fraction > 0 and not self.generated:
            raise ValueError(
                f"unsup_fraction={self.unsup_fraction} draws that fraction of every batch from generated "
                "images, but no generated set is given: pass --generated FILE.npz (the paper's "
                "https://huggingface.co/datasets/P2333/DM-Improves-AT/resolve/main/cifar10/1m.npz) "
                "or --unsup-fraction 0 to train on real data only")
        return self


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
    """Defaults < preset < JSON config file < overrides, checked (SettingsError, one line).

    A setting left out keeps the value of the layer below; ``None`` is a value (``generated=None``:
    no generated set, ``epoch_size=None``: the paper's epoch), refused where a field has no use for it."""
    return TrainATConfig.layered(PRESETS, preset, config_file, **overrides)
