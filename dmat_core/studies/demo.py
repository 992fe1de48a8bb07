"""The known-density demo (`make demo`, `dmat demo`): every sampler on the exact denoiser.

With the exact denoiser of a known mixture, what remains between the samples and the truth
is the sampler's own error: discretisation, and nothing else. The demo measures it exactly
(NLL beside the entropy, sliced W2 beside its noise floor, mode weights and spread) for each
sampler at a few step counts, and plots samples and quality against network evaluations.
Notebook 01 runs the same functions.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from ..common.checkpoint import atomic_write_text
from ..common.outputs import check_results_folder, start_work
from ..common.settings import int_at_least
from ..diffusion.edm import CountingDenoiser
from ..diffusion.samplers import latent_noise, run
from ..toys.metrics import sample_metrics
from ..toys.mixtures import make_distribution

# (sampler, steps, extra keyword arguments): the rows of the demo table
DEMO_CONFIGS = [
    ("heun", 18, {}), ("heun", 40, {}), ("euler", 18, {}), ("euler", 100, {}),
    ("ddim", 50, {"spacing": "quad"}), ("ddim", 100, {}), ("ddpm", 1000, {}),
]
QUICK_CONFIGS = [("heun", 18, {}), ("euler", 18, {}), ("ddim", 50, {"spacing": "quad"}),
                 ("ddpm", 250, {})]
COLUMNS = ["sw2_ratio", "nll_gap", "off_mode_mass", "weight_error", "spread_ratio"]


def label(sampler: str, steps: int, kw: dict) -> str:
    extra = ",".join(f"{k}={v}" for k, v in kw.items())
    return f"{sampler}-{steps}" + (f" ({extra})" if extra else "")


def true_row(dist, n: int, seed: int = 0) -> dict:
    """What a perfect sampler scores: fresh true samples through the same metrics."""
    x = dist.sample(n, torch.Generator().manual_seed(99_000 + seed))
    return {"dist": dist.name, "sampler": "true samples", "steps": 0, "nfe": 0, "seconds": 0.0,
            **sample_metrics(dist, x, seed=seed)}


def sample_exact(dist, sampler: str, steps: int, n: int, seed: int = 0, **kw):
    """Samples from the exact denoiser of `dist` (float64), with NFE and seconds."""
    g = torch.Generator().manual_seed(seed)
    D = CountingDenoiser(dist.denoiser)
    latents = latent_noise(n, dist.dim, g, dtype=torch.float64)
    t0 = time.perf_counter()
    x = run(D, latents, sampler, steps, generator=g, **kw)
    return x, D.nfe, time.perf_counter() - t0


def sweep(dist, configs, n: int, seed: int = 0, progress: bool = False,
          samples: dict | None = None) -> list[dict]:
    """One table row per (sampler, steps, kwargs): NFE, seconds and every exact metric.
    Pass a dict as `samples` to keep each run's samples under its label."""
    from tqdm.auto import tqdm
    rows = []
    for sampler, steps, kw in tqdm(configs, desc=dist.name, disable=not progress, leave=False):
        x, nfe, sec = sample_exact(dist, sampler, steps, n, seed, **kw)
        name = label(sampler, steps, kw)
        if samples is not None:
            samples[name] = x.numpy()
        rows.append({"dist": dist.name, "sampler": name, "steps": steps,
                     "nfe": nfe, "seconds": sec, **sample_metrics(dist, x, seed=seed)})
    return rows


def _cell(x: float, fmt: str) -> str:
    """A number for the table; "–" where it is undefined (NaN: the spread of samples when no mode
    holds enough of them)."""
    return "–" if x != x else format(x, fmt)


def markdown_table(rows: list[dict]) -> str:
    head = ("| data | sampler | NFE | SW2 / floor | NLL - H (nats) | off-mode mass "
            "| mode-weight err | spread ratio | seconds |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['dist']} | {r['sampler']} | {r['nfe']} | {_cell(r['sw2_ratio'], '.2f')} "
                     f"| {_cell(r['nll_gap'], '+.3f')} | {_cell(r['off_mode_mass'], '.4f')} "
                     f"| {_cell(r['weight_error'], '.4f')} | {_cell(r['spread_ratio'], '.3f')} "
                     f"| {r['seconds']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], samples: dict, path: Path) -> None:
    """Samples of a few samplers per distribution, and NLL gap against NFE."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(samples)
    cols = max(len(v) for v in samples.values())
    fig, ax = plt.subplots(len(names), cols + 1, figsize=(3.2 * (cols + 1), 3.2 * len(names)),
                           squeeze=False)
    for i, name in enumerate(names):
        for j, (lab, x) in enumerate(samples[name].items()):
            a = ax[i, j]
            a.scatter(x[:4000, 0], x[:4000, 1], s=1, alpha=0.4)
            a.set_title(f"{name}: {lab}", fontsize=9)
            a.set_aspect("equal")
            a.set_xlim(-3, 3), a.set_ylim(-3, 3)
        a = ax[i, cols]
        for sampler in ("heun", "euler", "ddim", "ddpm"):
            pts = [(r["nfe"], abs(r["nll_gap"])) for r in rows
                   if r["dist"] == name and r["sampler"].startswith(sampler)]
            if pts:
                a.plot(*zip(*sorted(pts)), "o-", label=sampler)
        a.set_xscale("log"), a.set_yscale("log")
        a.set_xlabel("NFE"), a.set_ylabel("|NLL - H| (nats)"), a.legend(fontsize=8)
        a.set_title(f"{name}: error vs cost", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def check_demo_out(out, n: int, quick: bool, seed: int, overwrite: bool = False) -> None:
    """Before any work, reading only: `out` may receive the demo's files (a writable folder, empty of
    results or holding the demo's own results of these settings, or `overwrite`)."""
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n}")
    now = {"n": n, "seed": seed, "quick": quick}
    check_results_folder(out, what="demo", overwrite=overwrite, differences=lambda prev: [
        f"{k}: {prev['meta'][k]!r} there, {v!r} now" for k, v in now.items() if prev["meta"][k] != v])


def run_demo(out: str | Path, n: int = 20_000, quick: bool = False, seed: int = 0,
             progress: bool = True, overwrite: bool = False) -> list[dict]:
    """Run the demo, print its table, write results.json, table.md and demo.png under `out` (a
    folder holding the demo's results of other settings is refused unless `overwrite`)."""
    check_demo_out(out, n, quick, seed, overwrite)
    start_work()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs = QUICK_CONFIGS if quick else DEMO_CONFIGS
    rows, samples = [], {}
    for name in ("ring8", "grid25"):
        dist = make_distribution(name)
        rows.append(true_row(dist, n, seed))
        kept = {}
        rows += sweep(dist, configs, n, seed, progress, samples=kept)
        samples[name] = {k: kept[k] for k in kept if k in ("heun-18", "euler-18", "ddpm-1000", "ddpm-250")}
    table = markdown_table(rows)
    print(table)
    meta = {"n": n, "seed": seed, "quick": quick, "torch": torch.__version__,
            "device": "cpu", "threads": torch.get_num_threads()}
    atomic_write_text(out / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    atomic_write_text(out / "table.md", table + "\n")
    plot(rows, samples, out / "demo.png")
    print(f"\nwrote {out / 'results.json'}, {out / 'table.md'}, {out / 'demo.png'}")
    return rows


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="every sampler on the exact denoiser of ring8 and grid25, "
                       "measured exactly (the README's main command)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/demo", help="output folder (default: results/demo); "
                   "demo results of other settings there are refused unless --overwrite")
    p.add_argument("--n", type=int_at_least(2), default=20_000, help="samples per run (default: 20000)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default: 0)")
    p.add_argument("--quick", action="store_true", help="fewer samplers (also set by DMAT_QUICK=1)")
    p.add_argument("--overwrite", action="store_true", help="replace demo results of other settings in --out")
    p.set_defaults(func=_main)


def _main(a: argparse.Namespace) -> int:
    run_demo(a.out, a.n, a.quick or os.environ.get("DMAT_QUICK") == "1", a.seed, overwrite=a.overwrite)
    return 0
