"""TRADES training throughput (images/s) of dmat's trainer against a plain TRADES step, in one process.

The trainer (:class:`dmat_core.robust.train.ATTrainer`) runs its real step: batch gathered from the
mixed real/generated sampler and augmented, TRADES-10 inner maximisation (BN frozen, uniform
start), TRADES loss with label smoothing, SGD Nesterov, EMA update, loss checks. The reference
is a TRADES step written like the DM-Improves-AT code (``gowal21uncovering/utils/trades.py`` +
the EMA update of ``watrain.py``) on a ready batch, so the ratio shows what the trainer's extras
cost. Both use the same model, batch, autocast and memory format.

    .venv/bin/python bench/train_at.py                    # CPU: small batches, a few steps
    .venv/bin/python bench/train_at.py --device cuda --batch-wrn 512 --batch-small 512 --steps 10
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dmat_core.common.train_utils import param_groups
from dmat_core.robust.config import make_config
from dmat_core.robust.train import ATTrainer


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reference_trades_step(model, wa_model, opt, x, y, eps=8 / 255, step=2 / 255, steps=10, beta=5.0, ls=0.1):
    """One TRADES step as the reference code writes it (train mode, BN statistics not tracked)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model.train()
    for m in bns:
        m.track_running_stats = False
    x_adv = (x.detach() + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    p_natural = F.softmax(model(x).float(), dim=1).detach()
    for _ in range(steps):
        x_adv.requires_grad_()
        loss_kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), p_natural, reduction="batchmean")
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    for m in bns:
        m.track_running_stats = True
    opt.zero_grad()
    logits_natural, logits_adv = model(x).float(), model(x_adv).float()
    loss = F.cross_entropy(logits_natural, y, label_smoothing=ls) + beta * F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_natural, dim=1), reduction="batchmean")
    loss.backward()
    opt.step()
    with torch.no_grad():  # EMA of the weights, decay 0.995
        for pw, pm in zip(wa_model.parameters(), model.parameters()):
            pw.mul_(0.995).add_(pm, alpha=0.005)
    return loss.item()


def bench(arch: str, arch_kw: dict, batch: int, steps: int, device: str, amp: str) -> dict:
    rng = np.random.default_rng(0)
    n = batch * 8
    real = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
    gen = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
    out = Path(tempfile.mkdtemp(prefix="dmat-bench-train-"))
    cfg = make_config("paper-wrn28-10", generated="(in memory)", arch=arch, arch_kw=arch_kw, batch_size=batch,
                      steps=steps + 1, n_val=0, epoch_size=n, out_dir=str(out), checkpoint_every=10**9,
                      log_every=10**9, progress=False, device=device, amp=amp)
    trainer = ATTrainer(cfg, real=real, generated=gen, fresh=True)
    model, wa = copy.deepcopy(trainer.model), copy.deepcopy(trainer.model)
    opt = torch.optim.SGD(param_groups(model, 5e-4, "bn"), lr=0.1, momentum=0.9, nesterov=True)
    x, y = trainer.batch(0)
    autocast = trainer.autocast()
    trainer.step()  # warm-up of both
    with autocast:
        reference_trades_step(model, wa, opt, x, y)
    t_ours, t_ref = [], []
    for _ in range(steps):  # interleaved, so that machine load hits both alike
        sync(); t0 = time.perf_counter()
        trainer.step()
        sync(); t_ours.append(time.perf_counter() - t0)
        sync(); t0 = time.perf_counter()
        with autocast:
            reference_trades_step(model, wa, opt, x, y)
        sync(); t_ref.append(time.perf_counter() - t0)
    a, b = min(t_ours), min(t_ref)
    return {"arch": trainer.model_arch, "batch": batch, "device": str(trainer.device),
            "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off",
            "channels_last": trainer.channels_last, "steps": steps,
            "dmat_images_per_s": batch / a, "reference_images_per_s": batch / b, "ratio": b / a}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--batch-wrn", type=int, default=4, help="WRN-28-10 batch (default 4 for a CPU)")
    p.add_argument("--batch-small", type=int, default=32, help="PreActResNet-18 batch (default 32)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model (default 3)")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args()
    print(f"device: {a.device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    rows = [bench("preact-resnet18", {"activation": "relu"}, a.batch_small, a.steps, a.device, a.amp),
            bench("wrn-28-10", {"activation": "silu"}, a.batch_wrn, a.steps, a.device, a.amp)]
    for r in rows:
        print(f"{r['arch']}: batch {r['batch']}, {r['device']}, amp {r['amp']}, channels_last "
              f"{r['channels_last']}: dmat {r['dmat_images_per_s']:.2f} img/s, reference "
              f"{r['reference_images_per_s']:.2f} img/s, ratio {r['ratio']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
