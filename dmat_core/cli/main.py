"""The `dmat` command line (also `python -m dmat_core`).

Each experiment module owns its sub-command through an `add_parser(subparsers)` function;
this file assembles them and turns every error into one clear line on stderr: exit code 2 for
bad input (a bad argument or setting, a missing or wrong file, an output that may not be
written, found before any work starts), 1 for a failure during the work (a full disk, a loss
that became NaN), never a traceback unless ``dmat --debug ...`` asks for it. The output policy
every sub-command follows is :mod:`dmat_core.common.outputs`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .. import __version__
from ..common import outputs
from ..common.settings import int_at_least, number_in

EPILOG = """examples:
  dmat demo                                    samplers on exact denoisers, exact metrics
  dmat toy sample --dist ring8 --sampler heun --steps 18 --n 20000 --out x.npz --json
  dmat toy likelihood --dist ring8 --denoiser exact --n 2000 --seed 0 --json
  dmat digits-study --out results/digits      both papers on scikit-learn's digits, on a CPU

settings (train-at, train-dm): defaults < --preset < --config FILE.json < flags < --set key=value,
strictly typed: a bool is true/false, a number a number; a wrong value is refused in one line
naming the key, the value and what is allowed.
outputs (every command): checked before any work starts; an existing output of another run or
kind is refused unless --overwrite; files appear only complete. Exit code 2: bad input, nothing
written; 1: a failure during the work; --debug shows the traceback.
"""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser (and every sub-command's, which inherit its class) whose errors are one
    line and exit code 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _toy_sample(a: argparse.Namespace) -> int:
    """`dmat toy sample`: samples from the exact denoiser of a preset, metrics as JSON."""
    from ..common.checkpoint import atomic_savez
    from ..studies.demo import sample_exact
    from ..toys.metrics import sample_metrics
    from ..toys.mixtures import make_distribution

    if not a.out and not a.json:
        raise ValueError("nothing to do: give --out FILE.npz and/or --json")
    if a.denoiser != "exact":
        raise ValueError(f"unknown denoiser {a.denoiser!r}; choose 'exact'")
    if a.churn and a.sampler != "heun":
        raise ValueError(f"--churn is an option of the heun sampler (EDM S_churn), not of {a.sampler}")
    dist = make_distribution(a.dist)
    from ..diffusion.samplers import SAMPLERS
    steps = SAMPLERS[a.sampler] if a.steps is None else a.steps
    if a.out:
        outputs.check_out_file(a.out, overwrite=a.overwrite, size=a.n * dist.dim * 4 + 4096)
    outputs.start_work()
    kw = {"S_churn": a.churn} if a.churn else {}
    x, nfe, sec = sample_exact(dist, a.sampler, steps, a.n, a.seed, **kw)
    if a.out:
        atomic_savez(a.out, x=x.numpy().astype(np.float32))
    if a.json:
        m = sample_metrics(dist, x, seed=a.seed)
        m.update(dist=a.dist, sampler=a.sampler, steps=steps, nfe=nfe, seconds=sec, out=a.out)
        print(json.dumps(m))
    return 0


def _toy_likelihood(a: argparse.Namespace) -> int:
    """`dmat toy likelihood`: the PF-ODE log-likelihood a denoiser gives held-out true points."""
    import math

    import torch

    from ..diffusion.likelihood import log_likelihood
    from ..toys.mixtures import make_distribution

    if not a.sigma_max > a.sigma_min:
        raise ValueError(f"--sigma-max {a.sigma_max:g} must be larger than --sigma-min {a.sigma_min:g}")
    if a.denoiser != "exact" and not Path(a.denoiser).is_file():
        raise FileNotFoundError(f"--denoiser {a.denoiser}: no such file ('exact', or a toy denoiser file)")
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
    p.add_argument("--steps", type=int_at_least(1), default=None,
                   help="sampler steps (default: heun 18, euler 40, ddim 50, ddpm 1000)")
    p.add_argument("--churn", type=number_in(0.0), default=0.0, help="EDM S_churn >= 0 for heun (default: 0)")
    p.add_argument("--n", type=int_at_least(1), default=20_000, help="number of samples (default: 20000)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default: 0)")
    p.add_argument("--out", default=None, help="write the samples to this .npz (an existing file is "
                   "refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print the exact metrics as JSON on stdout")
    p.set_defaults(func=_toy_sample)
    p = (tsub.add_parser(
        "likelihood", help="PF-ODE log-likelihood of held-out true points under a denoiser",
        description="The log-likelihood a denoiser (the exact one of the preset, or a toy denoiser "
        "file written by save_toy_denoiser) assigns to n held-out true points through the "
        "probability-flow ODE from sigma_min up to sigma_max (dmat_core/diffusion/likelihood.py), "
        "beside the preset's exact mean log-density at sigma_min. Writes no file."))
    p.add_argument("--dist", required=True, choices=sorted(PRESETS), help="distribution preset")
    p.add_argument("--denoiser", default="exact", help="'exact' or a toy denoiser file (default: exact)")
    p.add_argument("--n", type=int_at_least(1), default=2000, help="held-out points (default: 2000)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the points and probes (default: 0)")
    p.add_argument("--sigma-min", type=number_in(0.0, low_open=True), default=0.002,
                   help="the density is at this sigma (default: 0.002)")
    p.add_argument("--sigma-max", type=number_in(0.0, low_open=True), default=80.0, help="the prior's sigma (default: 80)")
    p.add_argument("--method", default="auto", choices=["auto", "exact", "hutchinson"],
                   help="divergence: autograd trace, Hutchinson, or auto = exact for d <= 8 (default)")
    p.add_argument("--n-probe", type=int_at_least(1), default=16, help="Hutchinson probes per point (default: 16)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_toy_likelihood)
    return tsub


def build_parser() -> argparse.ArgumentParser:
    from ..studies import demo

    parser = OneLineParser(
        prog="dmat", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="dmat: diffusion models and adversarial training, measured exactly.")
    parser.add_argument("--version", action="version", version=f"dmat {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.add_parser(sub)
    tsub = _add_toy(sub)
    for hook in _extension_hooks():
        hook(sub, tsub)
    return parser


def _extension_hooks():
    """Sub-commands of the later layers (studies, trainers, generation), each registered by the
    module that implements it. Imported here, not at the top, so `dmat --help` stays quick."""
    from ..studies import at_classifier_study, at_dm_study, at_dm_sweep, digits_study, gen_data_study
    from . import generate as generate_cli
    from . import train_at as train_at_cli
    from . import train_dm as train_dm_cli
    return [lambda sub, tsub: at_dm_study.add_parser(tsub),
            lambda sub, tsub: at_dm_sweep.add_parser(tsub),
            lambda sub, tsub: train_at_cli.add_parser(sub),
            lambda sub, tsub: at_classifier_study.add_parser(tsub),
            lambda sub, tsub: gen_data_study.add_parser(tsub),
            lambda sub, tsub: train_dm_cli.add_parser(sub),
            lambda sub, tsub: generate_cli.add_parser(sub),
            lambda sub, tsub: digits_study.add_parser(sub)]


def error_line(e: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an error that ended a command: 2 for bad input, 1 for a
    failure during the work (see the module docstring)."""
    from ..common.training import NonFiniteLossError
    if isinstance(e, OSError):
        text = outputs.describe_os_error(e)
        bad_input = isinstance(e, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError))
        code = 2 if bad_input or not outputs.work_started() else 1
    elif isinstance(e, NonFiniteLossError):
        code, text = 1, str(e)
    elif isinstance(e, ValueError):                      # settings, files, runs that do not fit
        code, text = 2, str(e)
    elif isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        code, text = 1, f"out of memory ({type(e).__name__}): lower --batch-size, or use a larger machine"
    else:
        code, text = 1, f"{type(e).__name__}: {e} (an unexpected error; run `dmat --debug ...` for the traceback)"
    return code, " ".join(str(text).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    outputs.reset_phase()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dmat: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        code, text = error_line(e)
        parser.exit(code, f"dmat: error: {text}\n")
