"""Pieces every trainer in dmat shares: schedule, EMA, optimiser groups, distributed helpers.

- :func:`one_cycle_cosine`: the one-cycle cosine schedule (Smith & Topin 2019) of
  ``torch.optim.lr_scheduler.OneCycleLR``, as a pure function of the step, so a resumed run
  needs no scheduler state. DM-Improves-AT trains with it (``--scheduler cosinew``: 2.5%
  warm-up) and it also cycles SGD momentum 0.95 -> 0.85 -> 0.95.
- :class:`EMA`: exponential moving average of the weights with warm-up (Gowal et al. 2020,
  as in DM-Improves-AT ``gowal21uncovering/utils/watrain.py``), with a ``state_dict``.
- :func:`param_groups`: SGD groups without weight decay on normalisation layers (and biases).
- :func:`bn_momentum`, :func:`strip_batchnorm`: BatchNorm helpers.
- :func:`dist_info`, :func:`unwrap`, :func:`all_reduce_sum`, :class:`CSVLog`: DDP and logs.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoint import atomic_write_text

__all__ = ["one_cycle_cosine", "EMA", "param_groups", "bn_momentum", "strip_batchnorm",
           "dist_info", "unwrap", "all_reduce_sum", "CSVLog", "process_group", "derived_seed"]

NORM_LAYERS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


# ----------------------------------------------------------------------------- schedule

def one_cycle_cosine(step: int, total: int, warmup_frac: float = 0.025, peak: float = 1.0, *,
                     start: Optional[float] = None, end: Optional[float] = None) -> float:
    """Value at ``step`` (0-based) of a one-cycle cosine schedule of ``total`` steps.

    Cosine ramp from ``start`` to ``peak`` until step ``warmup_frac * total - 1``, then cosine
    from ``peak`` to ``end`` at step ``total - 1``. Defaults ``start = peak / 25`` and
    ``end = start / 1e4`` make it ``OneCycleLR(max_lr=peak, total_steps=total,
    pct_start=warmup_frac)`` exactly (its ``div_factor`` and ``final_div_factor``). The same
    function gives OneCycleLR's momentum cycle: ``one_cycle_cosine(t, T, f, 0.85, start=0.95,
    end=0.95)``.
    """
    if total < 1 or not 0 <= step < total:
        raise ValueError(f"step must be in [0, total), got step={step}, total={total}")
    start = peak / 25.0 if start is None else start
    end = start / 1e4 if end is None else end

    def cos_anneal(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)

    warm_end = float(warmup_frac * total) - 1  # OneCycleLR's end of phase 1
    if warm_end > 0 and step <= warm_end:
        return cos_anneal(start, peak, step / warm_end)
    warm_end = max(warm_end, 0.0)
    if total - 1 <= warm_end:
        return peak
    return cos_anneal(peak, end, (step - warm_end) / (total - 1 - warm_end))


# ----------------------------------------------------------------------------- EMA

class EMA:
    """Exponential moving average of a model's weights, with warm-up.

    After update ``t`` (1-based): ``theta_ema = d_t theta_ema + (1 - d_t) theta`` with
    ``d_t = 0`` (a copy) while ``t < warmup``, then ``d_t = min(tau, (1 + s) / (10 + s))``,
    ``s = t - warmup`` (the rule of DM-Improves-AT, after Gowal et al. 2020). Buffers (BN
    running statistics) are copied from the model at every update. ``ema.module`` is the
    averaged copy, in eval mode, without gradients.

    Args:
        model: the model being trained (a DDP wrapper is unwrapped).
        tau: the decay after warm-up, default 0.995.
        warmup: updates during which the average just follows the model (default 0).
    """

    def __init__(self, model: nn.Module, tau: float = 0.995, warmup: float = 0):
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"EMA tau must be in [0, 1), got {tau}")
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.tau, self.warmup, self.num_updates = float(tau), float(warmup), 0

    def decay(self, t: int) -> float:
        """``d_t`` of update ``t`` (1-based)."""
        if t < self.warmup:
            return 0.0
        s = t - self.warmup
        return min(self.tau, (1.0 + s) / (10.0 + s))

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Average in the current weights of ``model``; returns the decay used."""
        self.num_updates += 1
        d = self.decay(self.num_updates)
        model = unwrap(model)
        for pe, pm in zip(self.module.parameters(), model.parameters()):
            if d == 0.0:
                pe.copy_(pm)
            else:
                pe.lerp_(pm, 1.0 - d)  # pe + (1 - d)(pm - pe) = d pe + (1 - d) pm
        for be, bm in zip(self.module.buffers(), model.buffers()):
            be.copy_(bm)
        return d

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates,
                "tau": self.tau, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.tau, self.warmup = float(state.get("tau", self.tau)), float(state.get("warmup", self.warmup))


# ----------------------------------------------------------------------------- optimiser

def param_groups(model: nn.Module, weight_decay: float, no_decay: str = "bn_bias") -> List[dict]:
    """Parameter groups for SGD: weight decay on the weights, none on the excluded ones.

    ``no_decay``: ``'bn_bias'`` (normalisation layers and every bias, the usual choice),
    ``'bn'`` (normalisation layers only, as the DM-Improves-AT code: its ``group_weight``
    excludes parameters named ``batchnorm``) or ``'none'``. Empty groups are dropped.
    """
    if no_decay not in ("bn_bias", "bn", "none"):
        raise ValueError(f"no_decay must be 'bn_bias', 'bn' or 'none', got {no_decay!r}")
    skip = set()
    if no_decay != "none":
        for m in model.modules():
            if isinstance(m, NORM_LAYERS):
                skip.update(id(p) for p in m.parameters(recurse=False))
    if no_decay == "bn_bias":
        skip.update(id(p) for n, p in model.named_parameters() if n.endswith("bias"))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in skip], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) in skip], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# ----------------------------------------------------------------------------- BatchNorm

@contextmanager
def bn_momentum(model: nn.Module, momentum: float) -> Iterator[None]:
    """Temporarily set the momentum of every BN layer (1.0: running stats := this batch's)."""
    saved = {m: m.momentum for m in model.modules() if isinstance(m, _BatchNorm)}
    try:
        for m in saved:
            m.momentum = momentum
        yield
    finally:
        for m, v in saved.items():
            m.momentum = v


def strip_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer by ``nn.Identity`` (in place; returns ``model``).

    On CPU, ``SyncBatchNorm`` is not available and each DDP rank normalises with its own
    batch statistics; a model without BN makes a DDP run equal to a single-process run.
    """
    for name, child in model.named_children():
        if isinstance(child, _BatchNorm):
            setattr(model, name, nn.Identity())
        else:
            strip_batchnorm(child)
    return model


# ----------------------------------------------------------------------------- distributed

def dist_info() -> tuple:
    """``(rank, world_size, local_rank)`` of this process: from the process group if one is
    initialised, else from the ``torchrun`` environment, else ``(0, 1, 0)``."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (else the model)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def all_reduce_sum(values: Sequence[float], device) -> List[float]:
    """Sum numbers over all ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- logs

class CSVLog:
    """A CSV file of rows keyed by ``step``, appended one row at a time.

    :meth:`truncate` (used on resume) rewrites the file atomically with only the rows up to a
    step, dropping rows of steps the resumed run will redo and any half-written last line.
    """

    def __init__(self, path, fields: Sequence[str]):
        self.path, self.fields = Path(path), list(fields)

    def truncate(self, step: int) -> None:
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f)
                    if r.get("step", "").isdigit() and int(r["step"]) <= step
                    and None not in r.values()]
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def append(self, row: Dict[str, object]) -> None:
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with `n` intra-op threads, then restore the caller's count (a worker that
    sets 1 thread must not leave the whole process at 1: results would change bitwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def process_group(device=None):
    """Under ``torchrun`` (WORLD_SIZE > 1) with no process group yet: start one (nccl when this
    run uses CUDA, else gloo), run the block, then a barrier (every rank done, rank 0's files
    written, before any rank tears the group down: gloo aborts a rank whose peer closes the
    connection under it) and destroy it. Otherwise a no-op."""
    rank, world, local = dist_info()
    own = world > 1 and dist.is_available() and not dist.is_initialized()
    if own:
        cuda = torch.cuda.is_available() and not str(device or "").startswith("cpu")
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
        if own:
            dist.barrier()
    finally:
        if own:
            dist.destroy_process_group()


def derived_seed(*ints: int) -> int:
    """A 63-bit seed that is a pure function of the integers given (one random stream per
    (seed, purpose, step, ...), so a resumed run draws exactly what an uninterrupted one draws)."""
    import numpy as np
    return int(np.random.SeedSequence([int(i) for i in ints]).generate_state(1, np.uint64)[0] >> 1)
