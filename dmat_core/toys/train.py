"""Training a toy denoiser, as a generator that yields its state every step.

    model = make_toy_model(dim=2, sigma_data=data_std(x_train), seed=0)
    for state in train_toy(model, x_train, ATConfig("adversarial"), steps=3000):
        if state["step"] % 100 == 0:
            print(state["step"], state["loss_dsm"], state["loss_at"])
    D = state["ema"]                        # the EMA denoiser, D(x, sigma, labels=None)

Each step draws a minibatch of the (possibly corrupted) training set, sigma from the EDM
log-normal and the noise, and minimises :func:`~dmat_core.diffusion.losses.at_dm_loss` with Adam
(linear warm-up, cosine decay), gradient clipping and an EMA of the weights (decay with the
usual warm-up min(ema, (1 + t)/(10 + t))). Everything random comes from one seeded generator,
so a run is reproducible and a checkpointed run resumes exactly. Notebook 05 runs it.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch
from torch import nn

from ..common.checkpoint import atomic_save, load_checkpoint
from ..diffusion.losses import ATConfig, at_dm_loss
from .nets import ToyDenoiserMLP

Tensor = torch.Tensor


def make_toy_model(dim: int, sigma_data: float, seed: int = 0, **kwargs) -> ToyDenoiserMLP:
    """A :class:`ToyDenoiserMLP` whose initial weights depend only on `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ToyDenoiserMLP(dim, sigma_data, **kwargs)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 5% of lr at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def train_toy(model: nn.Module, data: Tensor, config: ATConfig | None = None, steps: int = 3000,
              batch: int = 512, lr: float = 2e-3, warmup: int = 100, ema: float = 0.999,
              P_mean: float = -1.2, P_std: float = 1.2, grad_clip: float = 1.0, seed: int = 0,
              progress: bool = False, checkpoint: str | Path | None = None,
              checkpoint_every: int = 0, desc: str | None = None, device=None):
    """Train `model` (a denoiser `D(x, sigma)` with a `sigma_data` attribute) on `data` (n, d).

    Yields after every step a dict: `step` (1-based), `loss`, `loss_dsm`, `loss_at`, `r_mean`
    (mean AT budget of the batch, noise units), `lr`, `seconds` (since the start), and the
    modules `model` and `ema` (live references: copy them to keep a snapshot). A run resumed
    from a checkpoint at its last step yields its final state once (losses NaN).

    Args:
        config: the loss (:class:`~dmat_core.diffusion.losses.ATConfig`); None means standard training.
        batch: minibatch size (drawn with replacement, so tiny training sets work).
        ema: EMA decay of the weights. P_mean, P_std: the training noise distribution.
        checkpoint: a file to resume from if present, and to write every `checkpoint_every`
            steps and at the end (model, EMA, optimizer, step, generator state).
        device: where to train (default: where the model's parameters are). The data, the model
            and the one generator everything random is drawn from live there, so a CUDA run is
            reproducible by itself; on CPU the numbers do not depend on this argument.
    """
    config = config or ATConfig("standard")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    data = torch.as_tensor(data).to(device=device, dtype=torch.float32)
    if data.ndim != 2 or data.shape[0] < 1:
        raise ValueError(f"data must be (n, d) with n >= 1, got {tuple(data.shape)}")
    if int(steps) != steps or steps < 1 or int(batch) != batch or batch < 1:
        raise ValueError(f"steps and batch must be integers >= 1, got {steps}, {batch}")
    if not (0 <= ema < 1):
        raise ValueError(f"ema decay must be in [0, 1), got {ema}")
    sd = float(model.sigma_data)
    g = torch.Generator(device=device).manual_seed(seed)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        ck = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(ck["model"]), ema_model.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"]), g.set_state(ck["generator"].cpu())
        start = int(ck["step"])

    def save(step):
        atomic_save({"model": model.state_dict(), "ema": ema_model.state_dict(),
                     "opt": opt.state_dict(), "step": step, "generator": g.get_state(),
                     "config": config.as_dict()}, checkpoint)

    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=start, desc=desc or config.variant, disable=not progress,
               leave=False)
    t0 = time.perf_counter()
    if start >= steps:      # resumed at the end: yield the final state once
        bar.close()
        model.eval(), ema_model.eval()
        yield {"step": start, "loss": math.nan, "loss_dsm": math.nan, "loss_at": math.nan,
               "r_mean": math.nan, "lr": 0.0, "seconds": 0.0, "model": model, "ema": ema_model}
        return
    model.train()
    for step in range(start, steps):
        lr_t = lr_at(step, steps, lr, warmup)
        for group in opt.param_groups:
            group["lr"] = lr_t
        x0 = data[torch.randint(data.shape[0], (batch,), generator=g, device=device)]   # (B, d)
        loss, parts = at_dm_loss(model, x0, config, sd, P_mean=P_mean, P_std=P_std, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        ema_update(ema_model, model, min(ema, (1 + step) / (10 + step)))
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            save(step + 1)
        state = {k: float(v) for k, v in parts.items()}
        state.update(step=step + 1, lr=lr_t, seconds=time.perf_counter() - t0,
                     model=model, ema=ema_model)
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{state['loss']:.4f}")
        yield state
    bar.close()
    if checkpoint is not None:
        save(steps)
    model.eval()
    ema_model.eval()


def fit_toy(model: nn.Module, data: Tensor, config: ATConfig | None = None, log_every: int = 50,
            **kwargs):
    """Run :func:`train_toy` to the end; returns (EMA denoiser, history): one row every
    `log_every` steps with the loss terms averaged over those steps (and the first step)."""
    history, acc, state = [], {}, None
    for state in train_toy(model, data, config, **kwargs):
        for k in ("loss", "loss_dsm", "loss_at", "r_mean"):
            acc.setdefault(k, []).append(state[k])
        if state["step"] % log_every == 0 or state["step"] == 1:
            row = {k: v for k, v in state.items() if k not in ("model", "ema")}
            row.update({k: sum(v) / len(v) for k, v in acc.items()})
            history.append(row)
            acc = {}
    return state["ema"], history


__all__ = ["train_toy", "fit_toy", "make_toy_model", "lr_at", "ema_update"]
