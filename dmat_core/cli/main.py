"""The `dmat` command line (also `python -m dmat_core`).

Each experiment module owns its sub-command through an `add_parser(subparsers)` function;
this file only assembles them and turns a bad argument into one clear line (exit code 2).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .. import __version__
from ..common.settings import one_line_errors

EPILOG = """examples:
  dmat demo                                    samplers on exact denoisers, exact metrics
  dmat toy sample --dist ring8 --sampler heun --steps 18 --n 20000 --out x.npz --json
  dmat toy likelihood --dist ring8 --denoiser exact --n 2000 --seed 0 --json
  dmat digits-study --out results/digits      both papers on scikit-learn's digits, on a CPU
"""


def _toy_sample(a: argparse.Namespace) -> int:
    """`dmat toy sample`: samples from the exact denoiser of a preset, metrics as JSON."""
    from ..common.checkpoint import atomic_savez
    from ..studies.demo import sample_exact
    from ..toys.metrics import sample_metrics
    from ..toys.mixtures import make_distribution

    dist = make_distribution(a.dist)
    if a.denoiser != "exact":
        raise ValueError(f"unknown denoiser {a.denoiser!r}; choose 'exact'")
    from ..diffusion.samplers import SAMPLERS
    steps = SAMPLERS[a.sampler] if a.steps is None else a.steps
    kw = {"S_churn": a.churn} if a.churn else {}
    x, nfe, sec = sample_exact(dist, a.sampler, steps, a.n, a.seed, **kw)
    if a.out:
        atomic_savez(a.out, x=x.numpy().astype(np.float32))
    if a.json:
        m = sample_metrics(dist, x, seed=a.seed)
        m.update(dist=a.dist, sampler=a.sampler, steps=steps, nfe=nfe, seconds=sec, out=a.out)
        print(json.dumps(m))
    elif not a.out:
        print("nothing to do: give --out FILE.npz and/or --json", file=sys.stderr)
        return 2
    return 0


def _toy_likelihood(a: argparse.Namespace) -> int:
    """`dmat toy likelihood`: the PF-ODE log-likelihood a denoiser gives held-out true points."""
    import math

    import torch

    from ..diffusion.likelihood import log_likelihood
    from ..toys.mixtures import make_distribution

    if a.n <= 0:
        raise ValueError(f"n must be a positive integer, got {a.n}")
    dist = make_distribution(a.dist)
    if a.denoiser == "exact":
        D = dist.denoiser
    else:
        from ..toys.nets import load_toy_denoiser
        D = load_toy_denoiser(a.denoiser)
        if D.dim != dist.dim:
            raise ValueError(f"{a.denoiser}: a toy denoiser for d = {D.dim}, but {a.dist} has d = {dist.dim}")
    g = torch.Generator().manual_seed(a.seed)
    x = dist.sample(a.n, g)                                   # held-out points; then the probes
    r = log_likelihood(D, x, sigma_min=a.sigma_min, sigma_max=a.sigma_max, method=a.method,
                       n_probe=a.n_probe, generator=g)
    ll, exact = r["log_likelihood"], dist.log_prob(x, a.sigma_min)

    def sem(v):
        return float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else None

    m = {"mean_log_likelihood": float(ll.mean()), "exact_mean_log_prob": float(exact.mean()),
         "n": a.n, "dist": a.dist, "denoiser": a.denoiser, "sem": sem(ll),
         "mean_difference": float((ll - exact).mean()), "difference_sem": sem(ll - exact),
         "mean_probe_stderr": None if r["stderr"] is None else float(r["stderr"].mean()),
         "method": r["method"], "n_probe": r["n_probe"], "integrator": r["integrator"],
         "rtol": r["rtol"], "atol": r["atol"], "sigma_min": a.sigma_min, "sigma_max": a.sigma_max,
         "nfe": r["nfe"], "seconds": r["seconds"], "seed": a.seed}
    if a.json:
        print(json.dumps(m))
    else:
        print(f"{a.dist}, denoiser {a.denoiser}, n = {a.n}: mean log-likelihood "
              f"{m['mean_log_likelihood']:.4f}, exact mean log p at sigma_min {m['exact_mean_log_prob']:.4f}, "
              f"difference {m['mean_difference']:+.4f} ± {m['difference_sem'] or 0:.4f} "
              f"({r['method']}, NFE {r['nfe']}, {r['seconds']:.1f} s)")
    return 0


def _add_toy(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    from ..diffusion.samplers import SAMPLERS
    from ..toys.mixtures import PRESETS

    toy = sub.add_parser("toy", help="known-density toys: sampling and studies",
                         description="Experiments on distributions whose density is known exactly.")
    tsub = toy.add_subparsers(dest="toy_command", metavar="COMMAND", required=True)
    p = tsub.add_parser("sample", help="sample a preset with a sampler and the exact denoiser",
                        description="Sample a known distribution through a sampler driven by its "
                        "exact denoiser; write the samples (`x`, float32 (n, d)) and/or print "
                        "the exact metrics as one JSON object.")
    p.add_argument("--dist", required=True, choices=sorted(PRESETS), help="distribution preset")
    p.add_argument("--denoiser", default="exact", help="denoiser (default: exact)")
    p.add_argument("--sampler", default="heun", choices=sorted(SAMPLERS), help="(default: heun)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: heun 18, euler 40, ddim 50, ddpm 1000)")
    p.add_argument("--churn", type=float, default=0.0, help="EDM S_churn for heun (default: 0)")
    p.add_argument("--n", type=int, default=20_000, help="number of samples (default: 20000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", default=None, help="write the samples to this .npz")
    p.add_argument("--json", action="store_true", help="print the exact metrics as JSON on stdout")
    p.set_defaults(func=_toy_sample)
    p = one_line_errors(tsub.add_parser(
        "likelihood", help="PF-ODE log-likelihood of held-out true points under a denoiser",
        description="The log-likelihood a denoiser (the exact one of the preset, or a toy denoiser "
        "file written by save_toy_denoiser) assigns to n held-out true points through the "
        "probability-flow ODE from sigma_min up to sigma_max (dmat_core/diffusion/likelihood.py), "
        "beside the preset's exact mean log-density at sigma_min. Writes no file."))
    p.add_argument("--dist", required=True, choices=sorted(PRESETS), help="distribution preset")
    p.add_argument("--denoiser", default="exact", help="'exact' or a toy denoiser file (default: exact)")
    p.add_argument("--n", type=int, default=2000, help="held-out points (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the points and probes (default: 0)")
    p.add_argument("--sigma-min", type=float, default=0.002, help="the density is at this sigma (default: 0.002)")
    p.add_argument("--sigma-max", type=float, default=80.0, help="the prior's sigma (default: 80)")
    p.add_argument("--method", default="auto", choices=["auto", "exact", "hutchinson"],
                   help="divergence: autograd trace, Hutchinson, or auto = exact for d <= 8 (default)")
    p.add_argument("--n-probe", type=int, default=16, help="Hutchinson probes per point (default: 16)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_toy_likelihood)
    return tsub


def build_parser() -> argparse.ArgumentParser:
    from ..studies import demo

    parser = argparse.ArgumentParser(
        prog="dmat", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="dmat: diffusion models and adversarial training, measured exactly.")
    parser.add_argument("--version", action="version", version=f"dmat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.add_parser(sub)
    tsub = _add_toy(sub)
    for hook in _extension_hooks():
        hook(sub, tsub)
    return parser


def _extension_hooks():
    """Sub-commands of the later layers (studies, trainers, generation), each registered by the
    module that implements it. Imported here, not at the top, so `dmat --help` stays quick."""
    from ..studies import at_classifier_study, at_dm_study, digits_study, gen_data_study
    from . import generate as generate_cli
    from . import train_at as train_at_cli
    from . import train_dm as train_dm_cli
    return [lambda sub, tsub: at_dm_study.add_parser(tsub),
            lambda sub, tsub: train_at_cli.add_parser(sub),
            lambda sub, tsub: at_classifier_study.add_parser(tsub),
            lambda sub, tsub: gen_data_study.add_parser(tsub),
            lambda sub, tsub: train_dm_cli.add_parser(sub),
            lambda sub, tsub: generate_cli.add_parser(sub),
            lambda sub, tsub: digits_study.add_parser(sub)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        parser.exit(2, f"dmat: error: {e}\n")
    except KeyboardInterrupt:
        print("dmat: interrupted", file=sys.stderr)
        return 130
