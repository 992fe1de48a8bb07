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
so a run is reproducible and a checkpointed run resumes exactly. :func:`fit_toy_snapshots` also
keeps the EMA weights at chosen steps (the checkpoints early stopping picks from). Notebooks 02-04
run it.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn

from ..common.checkpoint import atomic_save, load_checkpoint
from ..common.train_utils import EMA
from ..common.training import Trainer, check_resumable
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


CHECKPOINT_FORMAT = "dmat-toy-train/1"


class ToyTrainer(Trainer):
    """The toy denoiser's training on the shared skeleton (:class:`~dmat_core.common.training.Trainer`).

    One step: a minibatch of ``data`` drawn with replacement, sigma and noise, the loss
    :func:`~dmat_core.diffusion.losses.at_dm_loss`, Adam at the learning rate of :func:`lr_at`,
    gradient clipping, the EMA update. Everything random comes from one generator on the
    training device, so a checkpointed run resumes exactly. See :func:`train_toy` for the args.
    """

    def __init__(self, model: nn.Module, data: Tensor, config: ATConfig | None = None, steps: int = 3000,
                 batch: int = 512, lr: float = 2e-3, warmup: int = 100, ema: float = 0.999,
                 P_mean: float = -1.2, P_std: float = 1.2, grad_clip: float = 1.0, seed: int = 0,
                 progress: bool = False, checkpoint: str | Path | None = None,
                 checkpoint_every: int = 0, desc: str | None = None, device=None, fresh: bool = False):
        self.config = config or ATConfig("standard")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.data = torch.as_tensor(data).to(device=self.device, dtype=torch.float32)
        if self.data.ndim != 2 or self.data.shape[0] < 1:
            raise ValueError(f"data must be (n, d) with n >= 1, got {tuple(self.data.shape)}")
        if int(steps) != steps or steps < 1 or int(batch) != batch or batch < 1:
            raise ValueError(f"steps and batch must be integers >= 1, got {steps}, {batch}")
        if not (0 <= ema < 1):
            raise ValueError(f"ema decay must be in [0, 1), got {ema}")
        self.total_steps, self.batch, self.lr, self.warmup = int(steps), int(batch), lr, warmup
        self.P_mean, self.P_std, self.grad_clip = P_mean, P_std, grad_clip
        self.sigma_data = float(model.sigma_data)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # decay min(ema, t / (9 + t)) at update t: the shared EMA's warm-up rule shifted by one step
        self.ema = EMA(model, ema, warmup=1)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = checkpoint_every if self.checkpoint is not None else 0
        self.progress, self.desc, self.leave_bar = progress, desc or self.config.variant, False
        self.step_count = 0
        if self.checkpoint is not None and fresh:
            self.checkpoint.unlink(missing_ok=True)
        if self.checkpoint is not None and self.checkpoint.is_file():
            self.load_state_dict(load_checkpoint(self.checkpoint, map_location=self.device))
        self.model.train()
        self._t0 = time.perf_counter()

    def step(self) -> dict:
        t = self.step_count
        lr = lr_at(t, self.total_steps, self.lr, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        g = self.generator
        x0 = self.data[torch.randint(self.data.shape[0], (self.batch,), generator=g, device=self.device)]  # (B, d)
        loss, parts = at_dm_loss(self.model, x0, self.config, self.sigma_data, P_mean=self.P_mean,
                                 P_std=self.P_std, generator=g)
        state = self.reduce(parts)
        self.check_finite(state, lr, "Lower the learning rate.", self.checkpoint)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step_count += 1
        state.update(step=self.step_count, lr=lr, seconds=time.perf_counter() - self._t0,
                     model=self.model, ema=self.ema.module)
        return state

    def postfix(self, state: dict):
        return {"loss": f"{state['loss']:.4f}"} if (state["step"] - 1) % 50 == 0 else None

    def state_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step_count,
                "generator": self.generator.get_state(), "config": self.config.as_dict()}

    def load_state_dict(self, ck: dict) -> None:
        check_resumable(ck, self.checkpoint, format=CHECKPOINT_FORMAT, what="toy training",
                        saved=ck.get("config", {}) if isinstance(ck, dict) else {},
                        now=self.config.as_dict(), may_change=())
        self.model.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.generator.set_state(ck["generator"].cpu())
        self.step_count = int(ck["step"])

    def save(self) -> None:
        if self.checkpoint is not None:
            atomic_save(self.state_dict(), self.checkpoint)

    def finish(self) -> None:
        self.model.eval()


def train_toy(model: nn.Module, data: Tensor, config: ATConfig | None = None, steps: int = 3000,
              batch: int = 512, lr: float = 2e-3, warmup: int = 100, ema: float = 0.999,
              P_mean: float = -1.2, P_std: float = 1.2, grad_clip: float = 1.0, seed: int = 0,
              progress: bool = False, checkpoint: str | Path | None = None,
              checkpoint_every: int = 0, desc: str | None = None, device=None, fresh: bool = False):
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
            steps and at the end (model, EMA, optimizer, step, generator state); a checkpoint of
            another loss is refused. fresh: remove it first and start over.
        device: where to train (default: where the model's parameters are). The data, the model
            and the one generator everything random is drawn from live there, so a CUDA run is
            reproducible by itself; on CPU the numbers do not depend on this argument.
    """
    trainer = ToyTrainer(model, data, config, steps, batch, lr, warmup, ema, P_mean, P_std, grad_clip, seed,
                         progress, checkpoint, checkpoint_every, desc, device, fresh)
    if trainer.step_count >= trainer.total_steps:      # resumed at the end: the final state, once
        trainer.finish()
        nan = math.nan
        yield {"step": trainer.step_count, "loss": nan, "loss_dsm": nan, "loss_at": nan, "r_mean": nan,
               "lr": 0.0, "seconds": 0.0, "model": trainer.model, "ema": trainer.ema.module}
        return
    yield from trainer.run()


def fit_toy(model: nn.Module, data: Tensor, config: ATConfig | None = None, log_every: int = 50,
            **kwargs):
    """Run :func:`train_toy` to the end; returns (EMA denoiser, history): one row every
    `log_every` steps with the loss terms averaged over those steps (and the first step)."""
    D, history, _ = fit_toy_snapshots(model, data, config, (), log_every, **kwargs)
    return D, history


def fit_toy_snapshots(model: nn.Module, data: Tensor, config: ATConfig | None = None,
                      snapshot_steps=(), log_every: int = 50, **kwargs):
    """:func:`fit_toy` that also keeps the EMA weights after each step of `snapshot_steps` (1-based,
    at most the run's steps): returns (EMA denoiser, history, {step: state_dict}). A snapshot is a
    copy of the EMA's weights at that step of *this* run (same learning-rate schedule), the
    checkpoints early stopping chooses among; copying them costs a few hundred kB each and
    changes nothing in the run (the final denoiser is the one fit_toy returns). A run resumed from a
    checkpoint keeps only the snapshots of the steps it ran."""
    steps = kwargs.get("steps", 3000)
    want = sorted({int(s) for s in snapshot_steps})
    if any(s < 1 or s > steps for s in want):
        raise ValueError(f"snapshot steps must be in [1, {steps}], got {list(snapshot_steps)}")
    history, acc, state, snaps = [], {}, None, {}
    for state in train_toy(model, data, config, **kwargs):
        for k in ("loss", "loss_dsm", "loss_at", "r_mean"):
            acc.setdefault(k, []).append(state[k])
        if state["step"] % log_every == 0 or state["step"] == 1:
            row = {k: v for k, v in state.items() if k not in ("model", "ema")}
            row.update({k: sum(v) / len(v) for k, v in acc.items()})
            history.append(row)
            acc = {}
        if state["step"] in want:
            snaps[state["step"]] = {k: v.detach().clone() for k, v in state["ema"].state_dict().items()}
    return state["ema"], history, snaps


__all__ = ["ToyTrainer", "train_toy", "fit_toy", "fit_toy_snapshots", "make_toy_model", "lr_at"]
