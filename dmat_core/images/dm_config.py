"""Settings of diffusion-model training on images (:mod:`dmat_core.images.dm_train`) and the presets.

Units: images are in [-1, 1] inside the model (sigma_data = 0.5). The two settings given in
*image units* ([0, 1] pixels, as the papers state them) are converted once here:
  `noise_std` s: the corruption of a fraction `noise_p` of the training images (Briglia et al.:
      p = 0.9, s in {0.1, 0.2}) is Gaussian noise of std 2 s in model units;
  `at_floor`: the smallest AT perturbation (8/255, docs/science.md section 3) is 2 * 8/255 = 16/255
      in model units, i.e. r_min = 2 at_floor / sigma_data = 32/255 = 0.1255 of sigma_data in the
      data-unit floor of :func:`~dmat_core.diffusion.losses.at_budget` (the toy default 0.125 rounds it).
A preset overrides a few fields; a JSON config file or command-line flags override a preset.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional

from ..common.settings import check_device, parse_eps, preset_and_file
from ..diffusion.losses import ATConfig
from .unet import UNET_KEYS, UNET_SIZES

__all__ = ["TrainDMConfig", "DM_PRESETS", "DM_PRESET_NOTES", "make_dm_config"]


@dataclass
class TrainDMConfig:
    """All settings of one run of `dmat train-dm` (defaults: the colab-small recipe)."""

    sigma_data = 0.5                        # images in [-1, 1] (a constant, not a setting)

    # -- data
    data_dir: Optional[str] = None          # CIFAR python format; default $DMAT_DATA, else ./data
    dataset: str = "cifar10"                # or "cifar100", "digits" (dmat_core.images.datasets)
    flip: bool = True                       # random horizontal flip
    noise_p: float = 0.0                    # fraction of training images corrupted (paper: 0.9)
    noise_std: float = 0.1                  # std of that noise, [0, 1] image units (paper: 0.1, 0.2)
    make_tiny_data: bool = False            # no CIFAR under data_dir: write the tiny synthetic archive
    # -- model
    size: str = "small"                     # U-Net size (dmat_core.images.unet.UNET_SIZES)
    unet: Dict[str, Any] = field(default_factory=dict)   # overrides of the size's settings
    conditional: bool = True                # class-conditional (labels from the archive)
    # -- loss: EDM denoising + lambda * AT for DMs (dmat_core.diffusion.losses.at_dm_loss)
    at_variant: str = "standard"            # standard / random / adversarial / invariance
    lam: float = 0.3                        # weight of the AT term (paper: 0.3)
    at_floor: float = 8 / 255               # smallest perturbation, [0, 1] image units
    at_r_max: float = 1.0                   # budget r(sigma) = max(r_max u^exponent, floor), noise units
    at_exponent: float = 2.0
    at_fgsm_step: float = 1.0               # FGSM step, fraction of r(sigma)
    at_attack_target: str = "gap"           # FGSM maximises the prediction gap (paper) or the residual
    at_detach_clean: bool = False
    weighting: str = "edm"                  # per-sigma weight of both terms (edm / eps)
    P_mean: float = -1.2                    # ln sigma ~ N(P_mean, P_std^2) (EDM)
    P_std: float = 1.2
    # -- optimisation
    batch_size: int = 128                   # global batch (all ranks together)
    steps: int = 30_000
    lr: float = 4e-4                        # Adam, linear warm-up, then constant (EDM)
    warmup_steps: int = 1000
    adam_betas: tuple = (0.9, 0.999)
    grad_clip: Optional[float] = 1.0
    ema_tau: float = 0.9999                 # EMA decay min(tau, (1+t)/(10+t)) (train_utils.EMA)
    # -- samples and files
    sample_per_class: int = 8               # columns of the sample grid (one row per class, <= 10 rows)
    sample_steps: int = 18                  # EDM Heun steps of the sample grid
    seed: int = 0
    out_dir: str = "runs/train-dm"
    checkpoint_every: int = 2000            # steps between full-state checkpoints (+ sample grid)
    log_every: int = 50
    amp: str = "auto"                       # auto (bf16 on CUDA GPUs that have it), bf16 (any device), off
    channels_last: Optional[bool] = None    # default: on CUDA
    device: Optional[str] = None            # auto/None: cuda:LOCAL_RANK if available, else cpu; cpu, cuda, cuda:N
    progress: bool = True

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainDMConfig":
        """Build from a dict; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(known))}")
        d = dict(d)
        for k in ("at_floor", "noise_std"):
            if isinstance(d.get(k), str):
                d[k] = parse_eps(d[k])
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    def at_config(self) -> ATConfig:
        """The loss settings as :class:`~dmat_core.diffusion.losses.ATConfig`, floor in data units."""
        return ATConfig(self.at_variant, lam=self.lam, r_max=self.at_r_max, exponent=self.at_exponent,
                        r_min=2 * self.at_floor / self.sigma_data, min_units="data",
                        fgsm_step=self.at_fgsm_step, attack_target=self.at_attack_target,
                        detach_clean=self.at_detach_clean, weighting=self.weighting)

    def validate(self) -> "TrainDMConfig":
        """Raise ValueError naming the first setting out of range; returns self."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"config: {msg}")

        def number(name: str, lo: float, hi: float = math.inf) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
            need(ok, f"{name}={v!r} must be a number in [{lo}, {hi}]")

        def integer(name: str, lo: int = 1) -> None:
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= lo,
                 f"{name} must be an integer >= {lo}, got {v!r}")

        need(self.dataset in ("cifar10", "cifar100", "digits"),
             f"dataset must be cifar10, cifar100 or digits, got {self.dataset!r}")
        number("noise_p", 0.0, 1.0)
        number("noise_std", 0.0, 10.0)
        need(self.size in UNET_SIZES, f"unknown U-Net size {self.size!r}; choose one of {', '.join(UNET_SIZES)}")
        need(isinstance(self.unet, dict), f"unet must be a dict of U-Net settings, got {type(self.unet).__name__}")
        bad = sorted(set(self.unet) - set(UNET_KEYS))
        need(not bad, f"unknown U-Net setting(s) {bad} in unet; known: {', '.join(UNET_KEYS)}")
        number("lam", 0.0)
        number("at_floor", 0.0, 1.0)
        number("P_std", 0.0)
        number("P_mean", -20.0, 20.0)
        for name in ("batch_size", "steps", "warmup_steps", "sample_per_class", "sample_steps",
                     "checkpoint_every", "log_every"):
            integer(name, 0 if name == "warmup_steps" else 1)
        integer("seed", 0)
        number("lr", 0.0, 1.0)
        need(self.lr > 0, "lr must be > 0")
        need(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
             f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        need(self.grad_clip is None or (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0),
             f"grad_clip must be None or > 0, got {self.grad_clip!r}")
        number("ema_tau", 0.0, 0.999999)
        need(self.amp in ("auto", "bf16", "off"), f"amp must be auto, bf16 or off, got {self.amp!r}")
        try:
            check_device(self.device)
        except ValueError as e:
            raise ValueError(f"config: {e}") from None
        try:
            self.at_config()    # variant, lambda, budget, target, weighting
        except ValueError as e:
            raise ValueError(f"config: {e}") from None
        return self

    def save(self, path) -> None:
        from ..common.checkpoint import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


# ----------------------------------------------------------------------------- presets
DM_PRESETS: Dict[str, Dict[str, Any]] = {
    "colab-small": dict(size="small", batch_size=128, steps=30_000, lr=4e-4, warmup_steps=1000,
                        ema_tau=0.9999, checkpoint_every=2000, log_every=50, sample_steps=18),
    "paper": dict(size="large", batch_size=512, steps=400_000, lr=1e-3, warmup_steps=20_000,
                  ema_tau=0.9993, at_variant="adversarial", lam=0.3, at_floor=8 / 255, at_exponent=2.0,
                  noise_p=0.9, noise_std=0.2, checkpoint_every=5000, log_every=100),
    # scikit-learn's 8x8 grey digits on a CPU (minutes); noise and AT settings in data units as above
    "digits": dict(dataset="digits", size="digits", flip=False, batch_size=64, steps=2000, lr=2e-3,
                   warmup_steps=100, ema_tau=0.999, checkpoint_every=500, log_every=50,
                   sample_per_class=8, sample_steps=18, amp="off"),
    "cpu-quick": dict(size="tiny", batch_size=16, steps=60, lr=2e-3, warmup_steps=5, ema_tau=0.99,
                      checkpoint_every=20, log_every=5, sample_per_class=4, sample_steps=4,
                      make_tiny_data=True, amp="off"),
}

DM_PRESET_NOTES = {
    "colab-small": "small U-Net (7.0M parameters), batch 128, 30k steps (3.8M images, 77 epochs of "
                   "CIFAR-10), Adam 4e-4 after 1k warm-up steps, EMA 0.9999 with warm-up. Estimate (not "
                   "measured here): 9.5 GFLOP per image per standard step, so about 20 min on an L4 or "
                   "A100 in bf16 and 2-3x that for --at-variant adversarial (3 passes); a T4 has no bf16 "
                   "and runs fp32, several times slower: lower --steps there. Compare on noisy data with "
                   "--noise-p 0.9 --noise-std 0.2 and --at-variant standard vs adversarial.",
    "paper": "large U-Net (57.6M, EDM's DDPM++ widths), EDM's CIFAR-10 recipe (batch 512, lr 1e-3, "
             "about 200M images) with AT for DMs as docs/science.md section 3: adversarial, lambda 0.3, budget "
             "exponent 2, floor 8/255, on 90% of the images noised with std 0.2. Days of GPU time.",
    "digits": "U-Net 'digits' (181k parameters) on scikit-learn's 1,297 training digits (8x8 grey, no "
              "download), batch 64, 2000 steps, Adam 2e-3, EMA 0.999, no flip: a few minutes on a CPU core.",
    "cpu-quick": "tiny U-Net (50k parameters), 60 steps of batch 16 on the tiny synthetic archive "
                 "(written under data_dir when absent), sample grids with 4 Heun steps: seconds on a CPU.",
}


def make_dm_config(preset: Optional[str] = None, config_file=None, **overrides) -> TrainDMConfig:
    """Defaults < preset < JSON config file < keyword overrides."""
    d = preset_and_file(DM_PRESETS, preset, config_file)
    d.update(overrides)                     # as given: None is a value (grad_clip=None: no clipping)
    return TrainDMConfig.from_dict(d).validate()
