"""`dmat train-dm`: train a class-conditional image diffusion model, plain or with AT for DMs.

    dmat train-dm --preset cpu-quick --data-dir data/tiny --out runs/dm-quick
    dmat train-dm --preset colab-small --out runs/dm --noise-p 0.9 --noise-std 0.2 --at-variant adversarial
    torchrun --standalone --nproc_per_node 8 -m dmat_core train-dm --preset paper --out runs/dm-paper

Settings: defaults < ``--preset`` < ``--config FILE.json`` < flags < ``--set key=value``, strictly
typed (``--set flip=false``; ``--set flip=False`` is refused, not read as true). A killed run
resumes where its last checkpoint left it when started again with the same ``--out`` and
settings; a folder holding a run with other settings is refused unless ``--overwrite``. The EMA
denoiser is then ``dmat_core.images.unet.load_image_denoiser(OUT/checkpoint.pt)``.
"""
from __future__ import annotations

import argparse

from ..common.outputs import start_work
from ..images.dm_config import DM_PRESET_NOTES, DM_PRESETS, TrainDMConfig, make_dm_config
from ..images.unet import UNET_SIZES
from .settings import add_run_args, config_from_args, print_result, training_parser


def _main(a: argparse.Namespace) -> int:
    from ..images.dm_train import check_run, train_dm

    cfg = config_from_args(
        a, make_dm_config, TrainDMConfig, out_dir=a.out, data_dir=a.data_dir, dataset=a.dataset, size=a.size,
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, at_variant=a.at_variant, lam=a.lam,
        at_floor=a.at_floor, noise_p=a.noise_p, noise_std=a.noise_std, checkpoint_every=a.checkpoint_every)
    check_run(cfg, overwrite=a.overwrite)             # reads only: the output folder, the inputs
    start_work()
    result = train_dm(cfg, fresh=a.overwrite)
    print_result(result, f"checkpoint: {result['files']['checkpoint.pt']}  (load_image_denoiser reads its EMA weights)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `train-dm` on the top-level sub-commands of `dmat`."""
    p = training_parser(sub, "train-dm", "train an image diffusion model (EDM), optionally with AT for DMs",
                        __doc__, DM_PRESETS, DM_PRESET_NOTES, "TrainDMConfig", "unet='{\"dropout\": 0.2}'")
    p.add_argument("--out", help="output folder (checkpoint, log, samples); resumes if it holds a checkpoint")
    p.add_argument("--data-dir", help="CIFAR folder or archive (default $DMAT_DATA, else ./data)")
    p.add_argument("--dataset", choices=["cifar10", "cifar100", "digits"])
    p.add_argument("--size", choices=list(UNET_SIZES), help="U-Net size")
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--batch-size", "--batch", type=int, dest="batch_size", help="global batch size (all processes)")
    p.add_argument("--lr", type=float, help="Adam learning rate after warm-up")
    p.add_argument("--at-variant", help="standard, random, adversarial or invariance")
    p.add_argument("--lam", type=float, help="weight lambda of the AT term (0.3)")
    p.add_argument("--at-floor", help="smallest AT perturbation in [0, 1] image units (8/255)")
    p.add_argument("--noise-p", type=float, help="fraction of training images noised once (paper: 0.9)")
    p.add_argument("--noise-std", help="std of that noise in [0, 1] image units (paper: 0.1, 0.2)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints and sample grids")
    add_run_args(p, ["auto", "bf16", "off"], "auto: bf16 on GPUs that have it, else off")
    p.set_defaults(func=_main)
