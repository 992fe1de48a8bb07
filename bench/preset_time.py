"""How long a whole preset run takes on this machine, predicted from timed steps of the real trainer,
against the time the preset's notes promise (the reference: a claim, so the ratio tests it).

The trainers (`ATTrainer`, `DMTrainer`) are built from the preset exactly as `dmat train-at` /
`dmat train-dm` build them, on random uint8 images of CIFAR-10's size (speed does not depend on the
pixels; nothing is downloaded). After two warm-up steps, `--timed-steps` optimiser steps are timed
one by one (median), and the run's periodic extras are timed once each: validation (train-at,
PGD on the held-out images) and the sample grid (train-dm, at every checkpoint). Then

    predicted seconds = total steps x median step + validations x one validation + grids x one grid

with the total step count and intervals taken from the trainer itself (the paper's epoch rule,
the preset's intervals). Checkpoint writes (a few per run) are left out.

    .venv/bin/python bench/preset_time.py --device cuda                 # both colab-small presets
    .venv/bin/python bench/preset_time.py --job train-at --preset colab-small --device cuda --amp fp16   # a T4
    .venv/bin/python bench/preset_time.py --job train-at --preset cpu-quick --device cpu                # a smoke run

A GPU answers the claims in a few minutes; on a CPU the colab-small steps take minutes each.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dmat_core.images.dm_config import make_dm_config  # noqa: E402
from dmat_core.images.dm_train import DMTrainer  # noqa: E402
from dmat_core.robust.config import make_config  # noqa: E402
from dmat_core.robust.train import ATTrainer  # noqa: E402

# What the preset notes (dmat_core.robust.config.PRESET_NOTES,
# dmat_core.images.dm_config.DM_PRESET_NOTES) promise, in seconds.
CLAIMS = {
    ("train-at", "colab-small"): (3600.0, "about an hour on one Colab GPU"),
    ("train-dm", "colab-small"): (1980.0, "about 33 min on an H200 in bf16 (standard variant)"),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def random_images(n: int, num_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, num_classes, n).astype(np.int64)


def predict(job: str, preset: str, device: str, amp: str | None, timed_steps: int,
            n_real: int, n_generated: int, overrides: dict) -> dict:
    out = tempfile.mkdtemp(prefix="dmat-preset-time-")
    try:
        return _predict(job, preset, device, amp, timed_steps, n_real, n_generated, overrides, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # the trainers write config.json there


def _predict(job, preset, device, amp, timed_steps, n_real, n_generated, overrides, out) -> dict:
    common = dict(out_dir=out, progress=False, device=device, **({"amp": amp} if amp else {}), **overrides)
    if job == "train-at":
        # The generated set is held in memory (below); the setting only needs to name one, since a preset
        # that draws from it refuses to start without (an override still wins).
        cfg = make_config(preset, **{"generated": str(Path(out) / "random-images-in-memory.npz"), **common})
        real = random_images(n_real, 10, 0)
        gen = random_images(n_generated, 10, 1) if cfg.unsup_fraction > 0 else None
        tr = ATTrainer(cfg, real=real, generated=gen, fresh=True)
        total = tr.total_steps
        extras = {"validation": (total // tr.val_every if tr.val_every else 0, tr.validate)}
        model = f"{cfg.arch}, {cfg.method} ({cfg.attack_steps} attack steps)"
    else:
        cfg = make_dm_config(preset, **common)
        tr = DMTrainer(cfg, data=random_images(n_real, 10, 0))
        total = cfg.steps
        extras = {"sample grid": (total // cfg.checkpoint_every, tr.sample_grid)}
        model = f"U-Net {cfg.size}, {cfg.at_variant}"
    dev = tr.device
    for _ in range(2):
        tr.step()
    steps = [timed(tr.step, dev) for _ in range(timed_steps)]
    step_s = statistics.median(steps)
    extra_s = {name: (n, timed(fn, dev)) for name, (n, fn) in extras.items()}
    predicted = total * step_s + sum(n * s for n, s in extra_s.values())
    row = {"job": job, "preset": preset, "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "amp": str(tr.amp_dtype).replace("torch.", "") if tr.amp_dtype else "off",
           "channels_last": tr.channels_last, "model": model, "batch": cfg.batch_size,
           "total_steps": total, "step_seconds": step_s, "images_per_s": cfg.batch_size / step_s,
           "extras": {k: {"count": n, "seconds_each": s} for k, (n, s) in extra_s.items()},
           "predicted_seconds": predicted}
    claim = CLAIMS.get((job, preset))
    if claim:
        row.update(claim_seconds=claim[0], claim=claim[1], predicted_over_claim=predicted / claim[0])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", choices=["train-at", "train-dm", "both"], default="both")
    p.add_argument("--preset", default="colab-small")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], help="default: the preset's (auto)")
    p.add_argument("--timed-steps", type=int, default=10)
    p.add_argument("--n-real", type=int, default=50_000, help="real training images (CIFAR-10: 50000)")
    p.add_argument("--n-generated", type=int, default=100_000,
                   help="generated images held in memory; the epoch rule counts the real ones only")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="other settings (JSON values), repeatable")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args()
    if a.timed_steps < 1 or a.n_real < 1 or a.n_generated < 1:
        p.error("--timed-steps, --n-real and --n-generated must be >= 1")
    from dmat_core.cli.settings import parse_set
    try:
        overrides = parse_set(a.set)
    except ValueError as e:
        p.error(str(e))
    jobs = ["train-at", "train-dm"] if a.job == "both" else [a.job]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
    for job in jobs:
        amp = a.amp if not (job == "train-dm" and a.amp == "fp16") else None  # train-dm has no fp16
        try:
            r = predict(job, a.preset, a.device, amp, a.timed_steps, a.n_real, a.n_generated, overrides)
        except ValueError as e:  # an unknown preset or setting, a device that is not there
            p.error(f"{job}: {e}")
        rows.append(r)
        extras = ", ".join(f"{k} {v['count']} x {v['seconds_each']:.2f} s" for k, v in r["extras"].items())
        line = (f"{job} --preset {a.preset} on {r['device_name']} (amp {r['amp']}, channels-last "
                f"{r['channels_last']}): {r['model']}, batch {r['batch']}: {r['step_seconds']:.3f} s/step "
                f"({r['images_per_s']:.0f} img/s) x {r['total_steps']} steps; {extras}; predicted "
                f"{r['predicted_seconds'] / 60:.1f} min ({r['predicted_seconds'] / 3600:.2f} h)")
        if "claim" in r:
            line += f"; the notes say {r['claim']}: predicted / claimed = {r['predicted_over_claim']:.2f}"
        print(line)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
