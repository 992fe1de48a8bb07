"""`dmat train-at` and `dmat eval`: adversarial training and robustness evaluation from the shell.

    dmat train-at --preset cpu-quick --data-dir data/tiny --out runs/quick
    dmat train-at --preset paper-wrn28-10 --generated data/1m.npz --out runs/wrn
    torchrun --standalone --nproc_per_node 8 -m dmat_core train-at --preset paper-wrn28-10 --generated ...
    dmat eval --checkpoint runs/quick/best.pt --data-dir data/tiny --n 100 --attacks clean,pgd --out eval.json
    dmat eval --checkpoint cifar10_linf_wrn28-10.pt --arch wrn-28-10 --n 1000 --out eval.json

Settings: the paper's defaults < ``--preset`` < ``--config FILE.json`` < flags < ``--set key=value``,
strictly typed (``--set augment=false``; ``--set augment=False`` is refused, not read as true).
A killed run resumes where its last checkpoint left it when started again with the same
``--out`` and settings; a finished one is not trained again (its ``result.json`` is printed);
a folder holding a run of other settings is refused unless ``--overwrite``. Results are JSON
(stdout, ``result.json``, ``--out`` of eval, which refuses an existing file unless ``--overwrite``).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from ..common.outputs import check_out_file, start_work
from ..common.settings import check_device, int_at_least, parse_eps
from ..robust.config import PRESET_NOTES, PRESETS, TrainATConfig, make_config
from ..robust.evaluate import ATTACKS
from .settings import add_run_args, config_from_args, json_object_flag, print_result, training_parser

# ----------------------------------------------------------------------------- train-at

def _train_main(a: argparse.Namespace) -> int:
    from ..robust.train import check_run, train_at

    cfg = config_from_args(
        a, make_config, TrainATConfig, out_dir=a.out, data_dir=a.data_dir, generated=a.generated, arch=a.arch,
        method=a.method, epochs=a.epochs, steps=a.steps, batch_size=a.batch_size, lr=a.lr, beta=a.beta,
        eps=a.eps, unsup_fraction=a.unsup_fraction, checkpoint_every=a.checkpoint_every,
        val_every=a.val_every, n_val=a.n_val)
    check_run(cfg, overwrite=a.overwrite)             # reads only: the output folder, the inputs
    start_work()
    print_result(train_at(cfg, reuse=True, fresh=a.overwrite))
    return 0


def _add_train(sub) -> None:
    p = training_parser(sub, "train-at", "adversarial training (TRADES / PGD-AT) with generated data",
                        __doc__, PRESETS, PRESET_NOTES, "TrainATConfig", "arch_kw='{\"width\": 8}'")
    p.add_argument("--out", help="output folder (checkpoints, logs, result.json); resumes if it has a checkpoint")
    p.add_argument("--data-dir", help="CIFAR folder or archive (default $DMAT_DATA, else ./data)")
    p.add_argument("--generated", help="generated images, .npz with 'image' uint8 (N,32,32,3) and 'label'")
    p.add_argument("--unsup-fraction", type=float, help="fraction of each batch from the generated set (0.7)")
    p.add_argument("--arch", help="wrn-28-10, wrn-70-16, preact-resnet18, small-cnn")
    p.add_argument("--method", choices=["trades", "pgd"], help="TRADES (default) or PGD-AT (Madry)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--steps", type=int, help="total optimiser steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, help="global batch size (all processes)")
    p.add_argument("--lr", type=float, help="peak learning rate (0.2 at batch 512)")
    p.add_argument("--beta", type=float, help="TRADES beta (5)")
    p.add_argument("--eps", help="attack budget, e.g. 8/255")
    p.add_argument("--n-val", type=int, help="held-out training images for model selection (1024)")
    p.add_argument("--val-every", type=int, help="steps between validations (default one epoch)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default one epoch)")
    add_run_args(p, ["auto", "bf16", "fp16", "off"], "auto: bf16 on GPUs that have it, fp16 on older ones, off on CPU")
    p.set_defaults(func=_train_main)


# ----------------------------------------------------------------------------- eval

def _eval_main(a: argparse.Namespace) -> int:
    from ..common.checkpoint import atomic_write_text
    from ..common.settings import resolve_device
    from ..images.data import split_validation, to_tensor_images
    from ..images.datasets import dataset_info, load_images
    from ..robust.evaluate import evaluate, load_trained_classifier

    attacks = [s.strip() for s in a.attacks.split(",") if s.strip()]
    bad = [s for s in attacks if s not in ATTACKS]
    if bad or not attacks:
        raise ValueError(f"--attacks: unknown {bad or attacks}; choose from {','.join(ATTACKS)}")
    eps = parse_eps(a.eps)
    norm = a.norm.lower()
    if norm not in ("linf", "l2"):
        raise ValueError(f"--norm must be linf or l2, got {a.norm!r}")
    if not (math.isfinite(eps) and 0 < eps <= (1.0 if norm == "linf" else 64.0)):
        raise ValueError(f"--eps={a.eps} is out of range for {norm} on images in [0, 1] (e.g. 8/255)")
    check_device(a.device)
    arch_kw = json_object_flag(a.arch_kw, "--arch-kw")
    if not Path(a.checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {a.checkpoint}: no such file")
    check_out_file(a.out, overwrite=a.overwrite, size=1 << 16)
    device = resolve_device(a.device)
    model, info = load_trained_classifier(a.checkpoint, a.arch, arch_kw=arch_kw, weights=a.weights,
                                          num_classes=dataset_info(a.dataset).num_classes if a.dataset else None)
    model = model.to(device)
    a.dataset = a.dataset or info.get("dataset") or "cifar10"    # default: the dataset the run trained on
    images, labels = load_images(a.dataset, train=a.split == "val", data_dir=a.data_dir)
    if a.split == "val":
        _, (images, labels) = split_validation(images, labels, a.n_val)
    x, y = to_tensor_images(images[:a.n]), torch.as_tensor(labels[:a.n])
    start_work()
    t0 = time.perf_counter()
    result = evaluate(model, x, y, attacks=attacks, eps=eps, norm=norm, pgd_steps=a.pgd_steps,
                      pgd_restarts=a.pgd_restarts, pgd_loss=a.pgd_loss, aa_version=a.aa_version,
                      aa_n_iter=a.aa_n_iter, aa_n_queries=a.aa_n_queries, batch_size=a.batch_size,
                      seed=a.seed)
    result.update(checkpoint=str(a.checkpoint), model=info, dataset=a.dataset, split=a.split,
                  device=str(device), seconds=time.perf_counter() - t0)
    text = json.dumps(result, indent=2)
    atomic_write_text(a.out, text + "\n")
    print(text)
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="clean / PGD / AutoAttack accuracy of a trained classifier (JSON)",
                       description="Evaluate a checkpoint of `dmat train-at` (checkpoint.pt, best.pt, "
                       "final.pt) or a published DM-Improves-AT checkpoint on the first --n test "
                       "images; writes one JSON object to --out.")
    p.add_argument("--checkpoint", required=True, help="the .pt file")
    p.add_argument("--arch", help="architecture (required for published files), e.g. wrn-28-10")
    p.add_argument("--arch-kw", help="JSON keyword arguments of the architecture, e.g. '{\"width\": 16}'")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA (default) or raw weights")
    p.add_argument("--data-dir", help="CIFAR folder or archive (default $DMAT_DATA, else ./data)")
    p.add_argument("--dataset", choices=["cifar10", "cifar100", "digits"],
                   help="default: the dataset the checkpoint was trained on (its config), else cifar10")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test set, or the held-out first --n-val training images")
    p.add_argument("--n-val", type=int_at_least(1), default=1024, help="size of the held-out split (1024)")
    p.add_argument("--n", type=int_at_least(1), default=1000, help="number of images (default 1000)")
    p.add_argument("--attacks", default="clean,pgd,autoattack", help="comma list of clean,pgd,autoattack")
    p.add_argument("--eps", default="8/255", help="budget (default 8/255)")
    p.add_argument("--norm", default="linf", help="linf (default) or l2")
    p.add_argument("--pgd-steps", type=int_at_least(1), default=20)
    p.add_argument("--pgd-restarts", type=int_at_least(1), default=1)
    p.add_argument("--pgd-loss", choices=["ce", "cw"], default="ce")
    p.add_argument("--aa-version", default="standard", choices=["standard", "plus", "rand"])
    p.add_argument("--aa-n-iter", type=int_at_least(1), help="shorten APGD/FAB (quick checks only: not comparable)")
    p.add_argument("--aa-n-queries", type=int_at_least(1), help="shorten Square (quick checks only)")
    p.add_argument("--batch-size", type=int_at_least(1), default=256)
    p.add_argument("--device", help="auto (default: cuda if available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--out", required=True, help="JSON file to write (an existing file is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_eval_main)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `train-at` and `eval` on the top-level sub-commands of `dmat`."""
    _add_train(sub)
    _add_eval(sub)
