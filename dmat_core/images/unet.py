"""A class-conditional U-Net for small square images: the raw network F of EDM preconditioning.

    D = build_image_denoiser("small", num_classes=10)       # an EDMPrecond, D(x, sigma, labels)
    x0_hat = D(x, sigma, labels)                             # x (B, 3, 32, 32) in [-1, 1]
    D, arch = load_image_denoiser("runs/dm/checkpoint.pt")   # the EMA weights of `dmat train-dm`

    D(x, sigma, labels) = c_skip x + c_out F(c_in x, c_noise, labels),   c_noise = ln(sigma)/4

(Karras et al. 2022, Table 1; docs/science.md section 2). F follows DDPM++ / ADM (Song et al. 2021,
Dhariwal & Nichol 2021), small and readable: a conv stem; per resolution level `num_blocks`
residual blocks (GroupNorm, SiLU, dropout, scale/shift from an embedding of c_noise plus a
learned class embedding) with self-attention at `attn_resolutions`; a stride-2 conv down, a
nearest-neighbour + conv up; skip connections from every encoder block to the decoder; a
zero-initialised output conv, so an untrained denoiser is D = c_skip x exactly.

Sizes (`UNET_SIZES`, parameters for 10 classes at 32x32, counted by tests/test_unet.py):
  tiny   49,779      8 x (1, 2), attention at 16x16: tests and quick mode, seconds on a CPU;
  small  7,000,899   64 x (1, 2, 2), 2 blocks, attention at 16x16, dropout 0.1: the preset
                     colab-small (30k steps: 33 min measured on an H200, longer on Colab's GPUs);
  large  57,644,803  EDM's DDPM++ CIFAR-10 widths: 128 x (2, 2, 2), 4 blocks, attention at 16x16,
                     dropout 0.13 (EDM's own: about 56M, with a slightly different block);
  digits 181,795     16 x (1, 2), 1 block, no attention, for the 8x8 grey digits (181,217 at 8x8 with one
                     channel): about 40 ms per step of 64 images on one CPU core (preset digits).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..common.checkpoint import load_checkpoint
from ..diffusion.edm import EDMPrecond, NoiseEmbedding
from .pixels import image_to_model, model_to_image

__all__ = ["UNet", "UNET_SIZES", "build_image_denoiser", "denoiser_arch", "load_image_denoiser",
           "save_image_denoiser", "DM_CHECKPOINT_FORMAT", "image_to_model", "model_to_image"]

Tensor = torch.Tensor
DM_CHECKPOINT_FORMAT = "dmat-dm/1"
SKIP_SCALE = 1 / math.sqrt(2)          # keeps the variance of a residual sum (DDPM++)

UNET_SIZES = {
    "tiny": dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16], dropout=0.0),
    "small": dict(model_channels=64, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[16], dropout=0.1),
    "large": dict(model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.13),
    "digits": dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0),
}
UNET_KEYS = ("model_channels", "channel_mult", "num_blocks", "attn_resolutions", "dropout", "head_channels")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at most 32 groups of at least 4 channels (as EDM)."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual, zero-initialised projection."""

    def __init__(self, channels: int, head_channels: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)                        # (B, heads, HW, C/heads)
        a = F.scaled_dot_product_attention(q, k, v)                      # (B, heads, HW, C/heads)
        a = a.transpose(-1, -2).reshape(B, C, H, W)
        return (x + self.proj(a)) * SKIP_SCALE


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = SiLU(GN(h) (1 + scale) + shift) with (scale, shift) from the
    embedding; out = (skip(x) + conv(dropout(h))) / sqrt(2), then self-attention if asked."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0,
                 attention: bool = False, head_channels: int = 64):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.attn = SelfAttention(c_out, head_channels) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                            # (B, c_out, H, W)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)   # (B, c_out, 1, 1) each
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = (self.skip(x) + self.conv2(self.dropout(h))) * SKIP_SCALE
        return self.attn(h) if self.attn is not None else h


class Downsample(nn.Conv2d):
    """Halve the resolution: 3x3 conv with stride 2."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, stride=2, padding=1)


class Upsample(nn.Module):
    """Double the resolution: nearest neighbour, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """F(x_in, c_noise, labels) for (B, in_channels, R, R) images, R divisible by 2^(levels-1).

    Args:
        img_resolution: R the model is built for (attention resolutions refer to it).
        num_classes: 0 for an unconditional model (labels must be None), else labels int64 (B,).
        model_channels: channels of the first level; level i has model_channels * channel_mult[i].
        num_blocks: residual blocks per level in the encoder (num_blocks + 1 in the decoder).
        attn_resolutions: resolutions with self-attention after each residual block.
        head_channels: channels per attention head.
    """

    def __init__(self, img_resolution: int = 32, in_channels: int = 3, num_classes: int = 10,
                 model_channels: int = 64, channel_mult=(1, 2, 2), num_blocks: int = 2,
                 attn_resolutions=(16,), dropout: float = 0.1, head_channels: int = 64):
        super().__init__()
        levels = len(channel_mult)
        if levels < 1 or min(channel_mult) < 1 or model_channels < 4 or num_blocks < 1:
            raise ValueError(f"need channel_mult >= 1 (at least one level), model_channels >= 4, "
                             f"num_blocks >= 1; got {channel_mult}, {model_channels}, {num_blocks}")
        if img_resolution < 1 or img_resolution % 2 ** (levels - 1):
            raise ValueError(f"img_resolution {img_resolution} must be divisible by 2^{levels - 1} "
                             f"for {levels} levels")
        if not (0 <= dropout < 1) or num_classes < 0 or in_channels < 1:
            raise ValueError(f"need 0 <= dropout < 1, num_classes >= 0, in_channels >= 1; got "
                             f"{dropout}, {num_classes}, {in_channels}")
        self.levels, self.num_classes, self.in_channels = levels, int(num_classes), in_channels
        emb_dim = 4 * model_channels
        self.noise_embed = NoiseEmbedding(emb_dim)                       # sinusoids of c_noise + MLP
        self.class_embed = nn.Embedding(num_classes, emb_dim) if num_classes else None
        block = dict(emb_dim=emb_dim, dropout=dropout, head_channels=head_channels)

        self.stem = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.encoder, skips, ch, res = nn.ModuleList(), [model_channels], model_channels, img_resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.encoder.append(ResBlock(ch, model_channels * mult, attention=res in attn_resolutions, **block))
                ch = model_channels * mult
                skips.append(ch)
            if level < levels - 1:
                self.encoder.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        self.middle = nn.ModuleList([ResBlock(ch, ch, attention=True, **block), ResBlock(ch, ch, **block)])
        self.decoder = nn.ModuleList()
        for level in reversed(range(levels)):
            for _ in range(num_blocks + 1):
                c_out = model_channels * channel_mult[level]
                self.decoder.append(ResBlock(ch + skips.pop(), c_out, attention=res in attn_resolutions, **block))
                ch = c_out
            if level > 0:
                self.decoder.append(Upsample(ch))
                res *= 2
        self.out_norm, self.out_conv = group_norm(ch), nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def embedding(self, c_noise: Tensor, labels) -> Tensor:
        """SiLU(MLP(sinusoids(c_noise)) + E[label]), (B, emb_dim)."""
        emb = self.noise_embed(c_noise)                                  # (B, emb_dim)
        if self.class_embed is None:
            if labels is not None:
                raise ValueError("this U-Net is unconditional (num_classes=0): pass labels=None")
            return F.silu(emb)
        if labels is None:
            raise ValueError(f"this U-Net is class-conditional ({self.num_classes} classes): pass labels")
        labels = torch.as_tensor(labels, device=emb.device)
        if labels.dtype.is_floating_point or labels.shape != emb.shape[:1]:
            raise ValueError(f"labels must be integers shaped ({emb.shape[0]},), got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        if not labels.is_cuda and len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {labels.min()}..{labels.max()}")
        return F.silu(emb + self.class_embed(labels.long()).to(emb.dtype))

    def forward(self, x: Tensor, c_noise: Tensor, labels=None) -> Tensor:
        B, C, H, W = x.shape
        if C != self.in_channels or H % 2 ** (self.levels - 1) or W % 2 ** (self.levels - 1):
            raise ValueError(f"input {tuple(x.shape)}: need {self.in_channels} channels and sides "
                             f"divisible by 2^{self.levels - 1}")
        emb = self.embedding(c_noise.reshape(-1).expand(B), labels)      # (B, emb_dim)
        h = self.stem(x)                                                 # (B, mc, H, W)
        skips = [h]
        for block in self.encoder:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb)                                            # (B, ch, H/2^(L-1), ...)
        for block in self.decoder:
            h = block(torch.cat([h, skips.pop()], 1), emb) if isinstance(block, ResBlock) else block(h)
        return self.out_conv(F.silu(self.out_norm(h)))                   # (B, C, H, W)


# ----------------------------------------------------------------------------- denoisers
def build_image_denoiser(size: str = "small", num_classes: int = 10, sigma_data: float = 0.5,
                         img_resolution: int = 32, in_channels: int = 3, **overrides) -> EDMPrecond:
    """EDM-preconditioned :class:`UNet` of a named size (`UNET_SIZES`), keys of UNET_KEYS overriding it.

    The result is a denoiser D(x, sigma, labels) for x in [-1, 1] (sigma_data 0.5); `D.arch` is its
    plain-data description (:func:`denoiser_arch`), from which it can be rebuilt exactly.
    """
    if size not in UNET_SIZES:
        raise ValueError(f"unknown U-Net size {size!r}; choose one of {', '.join(UNET_SIZES)}")
    unknown = sorted(set(overrides) - set(UNET_KEYS))
    if unknown:
        raise ValueError(f"unknown U-Net setting(s) {unknown}; known: {', '.join(UNET_KEYS)}")
    if not (sigma_data > 0 and math.isfinite(sigma_data)):
        raise ValueError(f"sigma_data must be a positive number, got {sigma_data}")
    kw = {"head_channels": 64, **UNET_SIZES[size], **overrides}
    kw = {k: [int(v) for v in kw[k]] if k in ("channel_mult", "attn_resolutions") else kw[k] for k in UNET_KEYS}
    arch = dict(size=size, num_classes=int(num_classes), sigma_data=float(sigma_data),
                img_resolution=int(img_resolution), in_channels=int(in_channels), **kw)
    net = UNet(img_resolution, in_channels, num_classes, **kw)
    D = EDMPrecond(net, sigma_data)
    D.arch = arch
    return D


def denoiser_arch(D) -> dict:
    """The plain-data description of a denoiser made by :func:`build_image_denoiser` (a copy)."""
    D = getattr(D, "module", D)                                          # a DDP wrapper
    if not hasattr(D, "arch"):
        raise ValueError(f"{type(D).__name__} was not made by build_image_denoiser: no arch")
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in D.arch.items()}


def _rebuild(arch: dict, where: str) -> EDMPrecond:
    try:
        rest = {k: arch[k] for k in UNET_KEYS}
        return build_image_denoiser(arch["size"], arch["num_classes"], arch["sigma_data"],
                                    arch["img_resolution"], arch["in_channels"], **rest)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: its architecture description is incomplete or invalid ({e})") from None


def save_image_denoiser(path, D, ema=None, **extra) -> None:
    """Write the weights of D (and of its EMA copy `ema`, default D) in the format
    :func:`load_image_denoiser` reads, atomically: {format, arch, model, ema: {module}, ...}."""
    from ..common.checkpoint import atomic_save
    ema_sd = (ema if ema is not None else D).state_dict()
    atomic_save({"format": DM_CHECKPOINT_FORMAT, "arch": denoiser_arch(D), "model": D.state_dict(),
                 "ema": {"module": ema_sd}, **extra}, path)


def load_image_denoiser(path, device="cpu", ema: bool = True, arch=None):
    """(D, arch) from a file of `dmat train-dm` (checkpoint.pt, denoiser.pt) or save_image_denoiser.

    Loads with weights_only=True, rebuilds the model from the file's `arch`, loads the EMA weights
    (`ema=False`: the raw ones); D is in eval mode without gradients. `arch` (a dict, or a size
    name) is what the caller expects: a file whose description differs in any key given is
    refused with a ValueError naming the differences, as is a file that is not a DM checkpoint.
    """
    ck = load_checkpoint(path, map_location="cpu")
    if not isinstance(ck, dict) or ck.get("format") != DM_CHECKPOINT_FORMAT:
        fmt = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise ValueError(f"{path}: not a dmat diffusion-model checkpoint (format {fmt!r}, expected "
                         f"{DM_CHECKPOINT_FORMAT!r}): write it with `dmat train-dm` or save_image_denoiser")
    saved = ck.get("arch")
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: the checkpoint has no architecture description")
    if arch is not None:
        want = {"size": arch} if isinstance(arch, str) else dict(arch)
        norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v      # noqa: E731
        diff = [k for k in want if norm(want[k]) != norm(saved.get(k))]
        if diff:
            raise ValueError(f"{path} holds another architecture: " + "; ".join(
                f"{k}={saved.get(k)!r} in the file, {want[k]!r} expected" for k in diff))
    D = _rebuild(saved, str(path))
    weights = ck["ema"]["module"] if ema else ck["model"]
    try:
        D.load_state_dict(weights)
    except RuntimeError as e:
        lines = "; ".join(str(e).splitlines()[1:4]).strip()
        raise ValueError(f"{path}: the weights do not fit the architecture it describes "
                         f"({saved.get('size')}): {lines}") from None
    D = D.to(device).eval().requires_grad_(False)
    return D, denoiser_arch(D)
