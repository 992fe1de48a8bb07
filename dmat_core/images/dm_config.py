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

from typing import Annotated, ClassVar, List, Literal, Optional

from pydantic import BeforeValidator, ConfigDict, Field, model_validator
from typing_extensions import TypedDict

from ..common.settings import Budget, Device, Settings
from ..diffusion.losses import VARIANTS, WEIGHTINGS, ATConfig
from .unet import UNET_SIZES

__all__ = ["TrainDMConfig", "UNetOverrides", "DM_PRESETS", "DM_PRESET_NOTES", "make_dm_config"]

PosInt = Annotated[int, Field(ge=1)]


class UNetOverrides(TypedDict, total=False):
    """Settings of the U-Net that override those of its size (:data:`~dmat_core.images.unet.UNET_SIZES`)."""

    __pydantic_config__ = ConfigDict(strict=True, extra="forbid")   # type: ignore[misc]
    model_channels: PosInt
    channel_mult: Annotated[List[PosInt], Field(min_length=1)]       # e.g. [1, 2, 2]
    num_blocks: PosInt
    attn_resolutions: List[PosInt]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    head_channels: PosInt


def _as_list(v):
    return list(v) if isinstance(v, tuple) else v          # (0.9, 0.999) written in Python


class TrainDMConfig(Settings):
    """All settings of one run of `dmat train-dm` (defaults: the colab-small recipe)."""

    sigma_data: ClassVar[float] = 0.5      # images in [-1, 1] (a constant, not a setting)

    # -- data
    data_dir: Optional[str] = None          # CIFAR python format; None: $DMAT_DATA, else ./data
    dataset: Literal["cifar10", "cifar100", "digits"] = "cifar10"   # dmat_core.images.datasets
    flip: bool = True                       # random horizontal flip
    noise_p: float = Field(0.0, ge=0.0, le=1.0)   # fraction of training images corrupted (paper: 0.9)
    noise_std: Budget = Field(0.1, ge=0.0, le=10.0)   # std of that noise, [0, 1] image units (paper: 0.1, 0.2)
    make_tiny_data: bool = False            # no CIFAR under data_dir: write the tiny synthetic archive
    # -- model
    size: Literal[tuple(UNET_SIZES)] = "small"   # type: ignore[valid-type]  # U-Net size (UNET_SIZES)
    unet: UNetOverrides = Field(default_factory=dict)   # overrides of the size's settings
    conditional: bool = True                # class-conditional (labels from the archive)
    # -- loss: EDM denoising + lambda * AT for DMs (dmat_core.diffusion.losses.at_dm_loss)
    at_variant: Literal[tuple(VARIANTS)] = "standard"   # type: ignore[valid-type]
    lam: float = Field(0.3, ge=0.0)         # weight of the AT term (paper: 0.3)
    at_floor: Budget = Field(8 / 255, ge=0.0, le=1.0)   # smallest perturbation, [0, 1] image units
    at_r_max: float = Field(1.0, gt=0.0)    # budget r(sigma) = max(r_max u^exponent, floor), noise units
    at_exponent: float = Field(2.0, ge=0.0)
    at_fgsm_step: float = Field(1.0, ge=0.0)   # FGSM step, fraction of r(sigma)
    at_attack_target: Literal["gap", "residual"] = "gap"   # FGSM maximises the prediction gap (paper) or the residual
    at_detach_clean: bool = False
    weighting: Literal[tuple(WEIGHTINGS)] = "edm"   # type: ignore[valid-type]  # per-sigma weight of both terms
    P_mean: float = Field(-1.2, ge=-20.0, le=20.0)   # ln sigma ~ N(P_mean, P_std^2) (EDM)
    P_std: float = Field(1.2, ge=0.0)
    # -- optimisation
    batch_size: int = Field(128, ge=1)      # global batch (all ranks together)
    steps: int = Field(30_000, ge=1)
    lr: float = Field(4e-4, gt=0.0, le=1.0)   # Adam, linear warm-up, then constant (EDM)
    warmup_steps: int = Field(1000, ge=0)
    adam_betas: Annotated[List[Annotated[float, Field(ge=0.0, lt=1.0)]], BeforeValidator(_as_list),
                          Field(min_length=2, max_length=2)] = Field(default_factory=lambda: [0.9, 0.999])
    grad_clip: Optional[float] = Field(1.0, gt=0.0)   # None: no clipping
    ema_tau: float = Field(0.9999, ge=0.0, le=0.999999)   # EMA decay min(tau, (1+t)/(10+t)) (train_utils.EMA)
    # -- samples and files
    sample_per_class: int = Field(8, ge=1)   # columns of the sample grid (one row per class, <= 10 rows)
    sample_steps: int = Field(18, ge=1)     # EDM Heun steps of the sample grid
    seed: int = Field(0, ge=0)
    out_dir: str = "runs/train-dm"
    checkpoint_every: int = Field(2000, ge=1)   # steps between full-state checkpoints (+ sample grid)
    log_every: int = Field(50, ge=1)
    amp: Literal["auto", "bf16", "off"] = "auto"   # auto (bf16 on CUDA GPUs that have it), bf16 (any device), off
    channels_last: Optional[bool] = None    # None: on CUDA
    device: Device = "auto"                 # auto: cuda:LOCAL_RANK if available, else cpu; cpu, cuda, cuda:N
    progress: bool = True

    def at_config(self) -> ATConfig:
        """The loss settings as :class:`~dmat_core.diffusion.losses.ATConfig`, floor in data units."""
        return ATConfig(self.at_variant, lam=self.lam, r_max=self.at_r_max, exponent=self.at_exponent,
                        r_min=2 * self.at_floor / self.sigma_data, min_units="data",
                        fgsm_step=self.at_fgsm_step, attack_target=self.at_attack_target,
                        detach_clean=self.at_detach_clean, weighting=self.weighting)

    @model_validator(mode="after")
    def _settings_agree(self) -> "TrainDMConfig":
        """What the fields alone cannot say: the AT budget the loss builds from them."""
        self.at_config()
        return self


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
                   "CIFAR-10), Adam 4e-4 after 1k warm-up steps, EMA 0.9999 with warm-up. Measured on an H200 "
                   "in bf16 (bench/preset_time.py, 2026-11-30): 0.066 s per standard step, about 33 min "
                   "in all (--at-variant adversarial: 0.098 s, 49 min; random: 37 min); at this size a "
                   "step is bound by kernel launches more than by its 9.5 GFLOP per image; Colab's "
                   "L4 takes longer, and a T4 has no bf16 and runs fp32, several times slower: lower "
                   "--steps there. Compare on noisy data with --noise-p 0.9 --noise-std 0.2 and "
                   "--at-variant standard vs adversarial.",
    "paper": "large U-Net (57.6M, EDM's DDPM++ widths), EDM's CIFAR-10 recipe (batch 512, lr 1e-3, "
             "about 200M images) with AT for DMs as docs/science.md section 3: adversarial, lambda 0.3, budget "
             "exponent 2, floor 8/255, on 90% of the images noised with std 0.2. Days of GPU time.",
    "digits": "U-Net 'digits' (181k parameters) on scikit-learn's 1,297 training digits (8x8 grey, no "
              "download), batch 64, 2000 steps, Adam 2e-3, EMA 0.999, no flip: a few minutes on a CPU core.",
    "cpu-quick": "tiny U-Net (50k parameters), 60 steps of batch 16 on the tiny synthetic archive "
                 "(written under data_dir when absent), sample grids with 4 Heun steps: seconds on a CPU.",
}


def make_dm_config(preset: Optional[str] = None, config_file=None, **overrides) -> TrainDMConfig:
    """Defaults < preset < JSON config file < keyword overrides, checked (SettingsError, one line).
    A setting left out keeps the value of the layer below; ``None`` is a value (``grad_clip=None``:
    no clipping), refused where a field has no use for it."""
    return TrainDMConfig.layered(DM_PRESETS, preset, config_file, **overrides)
