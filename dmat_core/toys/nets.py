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

A **toy run** (:func:`save_toy_run`, :func:`trained_toy`) adds what trained it, so that a notebook
can load a finished model instead of training it again, and knows when it may not:

    {"format": "dmat-toy-run/1", "denoiser": the dict above,
     "settings": plain data (everything the training depended on), "history": [{str: float}, ...]}
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

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
    atomic_save(_denoiser_dict(model, "save_toy_denoiser"), path)


def _denoiser_dict(model, who: str) -> dict:
    if not isinstance(model, ToyDenoiserMLP):
        raise ValueError(f"{who} saves a ToyDenoiserMLP, got {type(model).__name__}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": TOY_DENOISER_FORMAT, "config": dict(model.config), "state_dict": state}


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


TOY_RUN_FORMAT = "dmat-toy-run/1"


def _plain(settings) -> dict:
    """The settings as JSON would give them back (tuples become lists), so they compare after a save."""
    try:
        return json.loads(json.dumps(settings, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"settings of a toy run must be plain data (numbers, strings, lists, dicts): {e}") from e


def save_toy_run(path, model: ToyDenoiserMLP, settings: dict, history: list | None = None) -> None:
    """Write a trained toy denoiser with the `settings` it was trained with and its training
    `history` (a list of {name: number} rows) to `path`, atomically."""
    den = _denoiser_dict(model, "save_toy_run")
    rows = [{k: float(v) for k, v in r.items() if isinstance(v, (int, float))} for r in (history or [])]
    atomic_save({"format": TOY_RUN_FORMAT, "settings": _plain(settings), "history": rows, "denoiser": den}, path)


def load_toy_run(path) -> tuple[ToyDenoiserMLP, dict, list]:
    """(denoiser in eval mode, settings, history) of a file :func:`save_toy_run` wrote; ValueError,
    naming the file, for anything else."""
    ck = load_checkpoint(path)
    tag = ck.get("format") if isinstance(ck, dict) else None
    if tag != TOY_RUN_FORMAT:
        raise ValueError(f"{path}: not a toy run (format {tag!r}, expected {TOY_RUN_FORMAT!r})")
    try:
        den = ck["denoiser"]
        model = ToyDenoiserMLP.from_config(dict(den["config"]))
        model.load_state_dict(den["state_dict"])
        settings, history = dict(ck["settings"]), list(ck["history"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: a damaged toy run ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from e
    return model.eval(), settings, history


def trained_toy(path, settings: dict, train: Callable[[], tuple], retrain: bool = False,
                save: bool = True) -> tuple[nn.Module, list]:
    """Load-else-train: the denoiser and history saved at `path` when the file holds a run with
    exactly these `settings`; otherwise `train()` -> (denoiser, history), saved to `path` when
    `save`. `retrain` trains even when the file matches. `path` None: always train, save nothing.
    Says on one line which it did."""
    want = _plain(settings)
    if path is not None and Path(path).is_file() and not retrain:
        model, saved, history = load_toy_run(path)
        if saved == want:
            print(f"loaded {path} (trained with these settings; retrain=True trains again)")
            return model, history
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        print(f"{path} was trained with other settings ({', '.join(diff)}): training")
    model, history = train()
    if path is not None and save:
        save_toy_run(path, model, want, history)
    return model, history
