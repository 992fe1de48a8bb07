"""A small sigma-conditioned denoiser for toy data in any dimension (2D rings to R^3072).

The raw network F is an MLP on the preconditioned input `c_in x` with a sinusoidal embedding
of the EDM noise input `c_noise = ln(sigma) / 4`, added to every residual block; wrapped in
:class:`~dmat_core.diffusion.edm.EDMPrecond` it becomes a denoiser with the one interface of
dmat_core, `D(x, sigma, labels=None)` (docs/science.md section 2):

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise).

`sigma_data` is the data's own RMS standard deviation per coordinate (:func:`data_std`), so
that `c_in x` and the training target of F have unit variance as in EDM. Notebooks 02-04 train it.

**File format** of a trained toy denoiser (:func:`save_toy_denoiser`, :func:`load_toy_denoiser`;
what `dmat toy likelihood --denoiser PATH` reads): one `torch.save` dict, written atomically and
read back with `weights_only=True` (tensors and plain data, no code):

    {"format": "dmat-toy-denoiser/1",
     "config": {"dim": int, "sigma_data": float, "width": int, "depth": int, "emb_dim": int},
     "state_dict": the ToyDenoiserMLP's weights}
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..common.checkpoint import atomic_save, load_checkpoint
from ..diffusion.edm import EDMPrecond, NoiseEmbedding

Tensor = torch.Tensor


class ResidualBlock(nn.Module):
    """h + W2 SiLU(W1 SiLU(LayerNorm(h)) + E emb): a pre-norm MLP block conditioned on the noise."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(nn.functional.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(nn.functional.silu(z))


class NoiseConditionedMLP(nn.Module):
    """The raw network F(x_in, c_noise): Linear -> residual blocks -> LayerNorm -> Linear.

    Args:
        dim: data dimension d.
        width: hidden width (128 is plenty in 2D; 256-512 for d in the hundreds).
        depth: number of residual blocks.
        emb_dim: size of the noise embedding.
    The output layer starts at zero, so an untrained denoiser is D = c_skip x.
    """

    def __init__(self, dim: int, width: int = 128, depth: int = 3, emb_dim: int = 64):
        super().__init__()
        if dim < 1 or width < 1 or depth < 0:
            raise ValueError(f"need dim >= 1, width >= 1, depth >= 0; got {dim}, {width}, {depth}")
        self.dim = dim
        self.embed = NoiseEmbedding(emb_dim)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, emb_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_in: Tensor, c_noise: Tensor, labels=None) -> Tensor:
        emb = self.embed(c_noise)                                          # (B, emb_dim)
        h = self.inp(x_in)                                                 # (B, width)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.norm(h)))                 # (B, d)


class ToyDenoiserMLP(EDMPrecond):
    """EDM-preconditioned :class:`NoiseConditionedMLP`: a learned `D(x, sigma, labels=None)` for toy data.

    Example:
        >>> D = ToyDenoiserMLP(dim=2, sigma_data=data_std(x_train))
        >>> x0_hat = D(x_noisy, sigma)          # (B, 2), sigma a number or a (B,) tensor
    """

    def __init__(self, dim: int, sigma_data: float = 0.5, width: int = 128, depth: int = 3,
                 emb_dim: int = 64):
        if not (sigma_data > 0 and math.isfinite(sigma_data)):
            raise ValueError(f"sigma_data must be a positive number, got {sigma_data}")
        super().__init__(NoiseConditionedMLP(dim, width, depth, emb_dim), sigma_data)
        self.dim = dim
        self.config = dict(dim=dim, sigma_data=float(sigma_data), width=width, depth=depth,
                           emb_dim=emb_dim)

    @classmethod
    def from_config(cls, config: dict) -> "ToyDenoiserMLP":
        return cls(**config)


def data_std(x: Tensor) -> float:
    """RMS per-coordinate standard deviation of a data set (n, d): the EDM sigma_data of a toy."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need data of shape (n >= 2, d), got {tuple(x.shape)}")
    return float(x.var(0).mean().sqrt())


TOY_DENOISER_FORMAT = "dmat-toy-denoiser/1"


def save_toy_denoiser(path, model: ToyDenoiserMLP) -> None:
    """Write a :class:`ToyDenoiserMLP` (its constructor arguments and weights) to `path`, atomically."""
    if not isinstance(model, ToyDenoiserMLP):
        raise ValueError(f"save_toy_denoiser saves a ToyDenoiserMLP, got {type(model).__name__}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": TOY_DENOISER_FORMAT, "config": dict(model.config), "state_dict": state}, path)


def load_toy_denoiser(path, map_location="cpu") -> ToyDenoiserMLP:
    """The :class:`ToyDenoiserMLP` that :func:`save_toy_denoiser` wrote, in eval mode.

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for anything
    else: not a checkpoint, or a file of another kind (another `format` tag or none).
    """
    ck = load_checkpoint(path, map_location=map_location)
    tag = ck.get("format") if isinstance(ck, dict) else None
    if tag != TOY_DENOISER_FORMAT:
        raise ValueError(f"{path}: not a toy denoiser file (format {tag!r}, expected "
                         f"{TOY_DENOISER_FORMAT!r}; write one with save_toy_denoiser)")
    try:
        model = ToyDenoiserMLP.from_config(dict(ck["config"]))
        model.load_state_dict(ck["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise ValueError(f"{path}: a damaged toy denoiser file ({type(e).__name__}: {first})") from e
    return model.to(map_location).eval()


__all__ = ["ToyDenoiserMLP", "NoiseConditionedMLP", "NoiseEmbedding", "ResidualBlock", "data_std",
           "save_toy_denoiser", "load_toy_denoiser", "TOY_DENOISER_FORMAT"]
