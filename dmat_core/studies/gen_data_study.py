"""Generated data for adversarial training in any dimension, on the two-class Gaussian world
(`dmat toy gen-data-study`).

The question of Wang et al. (ICML 2023; docs/science.md sections 4 and 8): does data from a
generator raise the robust accuracy of adversarial training, and does a better generator raise
it more? Here every piece has a closed form (:mod:`~dmat_core.studies.gen_data_setup` has the
presets):

* per (d, n, seed): n real points per class of the world `N(y mu, Sigma)`;
* a generator per data source, each a Gaussian per class: fitted (MLE, Ledoit-Wolf), oracles
  with more data, the truth, and affine diffusion models trained with dmat's toy trainer
  (standard or AT for DMs, on the clean points or on a 90%-noisy copy), whose Heun samples
  have an exact Gaussian law (:func:`~dmat_core.toys.affine_dm.heun_gaussian`); the generated
  training points are drawn from that law (the same in distribution as running the sampler);
* its quality against the world, exactly: KL both ways, W2, the direction error of its class
  means, the expected log-likelihood of held-out true points `E_p log q`;
* a linear classifier `sign(w.x + b)` trained with PGD-AT (Madry et al. 2018; the inner
  maximisation in closed form, :mod:`dmat_core.robust.linear`), every batch 70% generated; every
  data source gets the same initial weights, real-point batches and generated-point noise;
* its robust accuracy, exactly, beside the best linear robust accuracy.

Writes results.json (one row per classifier, with w and b, and the world of each d under
`meta`, so every robust accuracy can be recomputed from the file), table.md and figure.png
(:mod:`~dmat_core.studies.gen_data_report`). The trained DMs' laws are kept under
`DIR/cache/` (ignored by git) and finished cells are reused from `DIR/results.json`.

    dmat toy gen-data-study --preset isotropic-linf --seeds 20 --workers 2 --out results/gen_data/isotropic-linf
    dmat toy gen-data-study --preset lowrank-l2 --quick --out /tmp/q
"""
# Size: one module of about 380 lines on purpose: one experiment (the data sources, the trained
# DMs and their cache, the batched classifiers, the CLI); its set-up and its report are modules of
# their own.
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from ..common.checkpoint import atomic_save, atomic_write_text, load_checkpoint
from ..common.outputs import check_results_folder, start_work
from ..common.settings import int_at_least, one_line_errors
from ..common.train_utils import torch_threads
from ..diffusion.edm import edm_sigmas
from ..diffusion.losses import ATConfig
from ..robust.linear import best_linear_robust, robust_accuracy
from ..toys.affine_dm import AffineDenoiser, heun_gaussian
from ..toys.gaussians import (GaussianWorld, fit_classes, fit_gaussian, gaussian_kl, gaussian_w2, make_generator,
                              mean_angle)
from ..toys.nets import data_std
from ..toys.train import fit_toy, lr_at
from .gen_data_report import analyse, markdown_table, plot_study
from .gen_data_mlp import MLP_KEYS, mlp_laws, mlp_quality
from .gen_data_setup import (DM_GENERATORS, GENERATORS, MLP_GENERATORS, PRESETS, cell_generators, cell_key,
                             dm_schedule, eps_of, stable_rng, stable_seed, study_config, world_of)

F64 = torch.float64
DM_KEYS = ("world", "noise_p", "noise_s", "dm_knots", "dm_sigma_max", "dm_batch", "dm_lr", "dm_ema",
           "dm_warmup", "dm_steps", "dm_steps_high_d", "dm_high_d", "sampler_steps", "dm_lam")   # the DM cache's key
DM_FORMAT = "affine-dm-law/1: start at N(sample mean, sd^2 I)"


# ----------------------------------------------------------------------- data
def real_points(world, n: int, seed: int):
    """n points of each class (x (2n, d) float64, y (2n,) in {-1, +1} float64; class -1 first)."""
    d = world.dim
    y = torch.cat([-torch.ones(n, dtype=F64), torch.ones(n, dtype=F64)])
    z = torch.randn(2 * n, d, dtype=F64, generator=stable_rng("real", d, n, seed))
    lam, V = torch.linalg.eigh(world.Sigma)
    return y[:, None] * world.mu + z @ (V * lam.clamp_min(0).sqrt()).T, y


def noisy_copy(x, world, cfg: dict, seed: int):
    """The points with N(0, s^2 I) added to a random share p of them (toys/corruption's inliers;
    s = noise_s x the class's RMS std per coordinate)."""
    g = stable_rng("noise", x.shape, seed)
    s = cfg["noise_s"] * math.sqrt(float(world.Sigma.trace()) / world.dim)
    mask = torch.zeros(len(x), dtype=torch.bool)
    mask[torch.randperm(len(x), generator=g)[:round(cfg["noise_p"] * len(x))]] = True
    out = x.clone()
    out[mask] += s * torch.randn(int(mask.sum()), x.shape[1], dtype=F64, generator=g)
    return out


def dm_law(x, cfg: dict, variant: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Train an affine DM on x (n, d) with the loss `variant`; the exact law of its Heun samples."""
    d = x.shape[1]
    steps, lr = dm_schedule(cfg, d)
    me, Se = fit_gaussian(x)
    sd = data_std(x)                     # start: the exact denoiser of N(sample mean, sd^2 I)
    model = AffineDenoiser.from_gaussian(me, sd ** 2 * torch.eye(d, dtype=F64), sd, knots=cfg["dm_knots"],
                                         sigma_max=cfg["dm_sigma_max"]).float()
    D, _ = fit_toy(model, x, ATConfig(variant, lam=cfg["dm_lam"]), steps=steps, batch=cfg["dm_batch"], lr=lr,
                   ema=cfg["dm_ema"], warmup=cfg["dm_warmup"], seed=seed, log_every=steps)
    mean, cov = heun_gaussian(D, edm_sigmas(cfg["sampler_steps"]), dim=d)
    return mean, cov, gaussian_w2(me, Se, mean, cov)


def dm_laws(x, y, world, cfg: dict, gen: str, seed: int, cache: Path | None, fresh: bool = False) -> dict:
    """The per-class laws of DM generator `gen`, kept in `cache` when given (read unless `fresh`)."""
    data, variant = DM_GENERATORS[gen]
    d, n = x.shape[1], int((y > 0).sum())
    path = None if cache is None else cache / f"d{d}-n{n}-s{seed}-{data}-{variant}.pt"
    if path is not None and path.is_file() and not fresh:
        return load_checkpoint(path)
    t0, means, covs, fit = time.perf_counter(), [], [], []
    for i, c in enumerate((-1, 1)):
        xc = x[y == c]
        if data == "noisy":
            xc = noisy_copy(xc, world, cfg, stable_seed(seed, c))
        m, S, w2 = dm_law(xc, cfg, variant, stable_seed("dm", d, n, seed, c))    # same seed for both losses
        means.append(m), covs.append(S), fit.append(w2)
    law = {"means": torch.stack(means), "covs": torch.stack(covs), "fit_w2": sum(fit) / 2,
           "seconds": time.perf_counter() - t0}
    if path is not None:
        atomic_save(law, path)
    return law


def generator_laws(x, y, world, cfg: dict, seed: int, cache: Path | None, fresh: bool = False,
                   mlp_cache: Path | None = None) -> dict:
    """{generator: {'means': (2, d), 'covs': (2, d, d), ...}} for every generator of the cell but
    `none`; the MLP DMs' entries also hold their `samples` (2, n_gen, d)."""
    laws, d, n = {}, world.dim, int((y > 0).sum())
    for gen in cell_generators(cfg, d, seed):
        if gen == "none":
            continue
        if gen in MLP_GENERATORS:
            laws[gen] = mlp_laws(x, y, world, cfg, gen, seed, mlp_cache, fresh)
            continue
        if gen in DM_GENERATORS:
            laws[gen] = dm_laws(x, y, world, cfg, gen, seed, cache, fresh)
            continue
        if gen == "truth":                                # the world itself, bit for bit
            laws[gen] = {"means": torch.stack([-world.mu, world.mu]), "covs": torch.stack([world.Sigma] * 2)}
            continue
        k = cfg["more_k"] if gen == "more-labelled" else cfg["pool_k"]
        mix = (fit_classes(x, y, gen) if gen in ("mle", "shrinkage")
               else make_generator(gen, world, x, y, k=k, generator=stable_rng(gen, d, n, seed)))
        laws[gen] = {"means": mix.means, "covs": mix.covariances()}
    return laws


def quality(world, law: dict) -> dict:
    """KL(p||q), KL(q||p), W2 (means over y), the angle between (m_+ - m_-)/2 and mu, E_p log q
    (= -H(p) - KL(p||q)) and tr(S_q)/tr(Sigma); exactly 0 divergences for the world itself. For an
    MLP DM (a law given by samples) the estimates of :func:`~dmat_core.studies.gen_data_mlp.mlp_quality`."""
    if "samples" in law:
        return mlp_quality(world, law)
    d, Sigma = world.dim, world.Sigma
    entropy = 0.5 * (d * math.log(2 * math.pi * math.e) + float(torch.linalg.slogdet(Sigma)[1]))
    out = {"kl_pq": 0.0, "kl_qp": 0.0, "w2": 0.0}
    same = all(torch.equal(law["means"][i], c * world.mu) and torch.equal(law["covs"][i], Sigma)
               for i, c in enumerate((-1, 1)))
    for i, c in enumerate((-1, 1)):
        if same:
            break
        m, S = law["means"][i], law["covs"][i]
        out["kl_pq"] += gaussian_kl(c * world.mu, Sigma, m, S) / 2
        out["kl_qp"] += gaussian_kl(m, S, c * world.mu, Sigma) / 2
        out["w2"] += gaussian_w2(c * world.mu, Sigma, m, S) / 2
    out["mean_angle_deg"] = 0.0 if same else mean_angle((law["means"][1] - law["means"][0]) / 2, world.mu)
    out["loglik"] = -entropy - out["kl_pq"]
    out["var_ratio"] = float(law["covs"].diagonal(dim1=1, dim2=2).sum(1).mean() / Sigma.trace())
    return out


# ----------------------------------------------------------------------- the classifiers
def pgd_at_losses(W, b, X, Y, eps: float, norm: str):
    """PGD-AT losses (G,) of G linear classifiers W (G, d), b (G,) on their batches X (G, B, d),
    Y (G, B) in {-1, +1}: the logistic loss at the worst point of the threat ball, softplus(eps
    ||w||_* - y f) (the `pgd-at` loss of :func:`~dmat_core.robust.linear.linear_at_loss`, batched)."""
    f = torch.einsum("gbd,gd->gb", X, W) + b[:, None]
    a = eps * (W.abs().sum(1) if norm == "linf" else W.norm(dim=1))
    return F.softplus(a[:, None] - Y * f).mean(1)


def train_classifiers(x, y, laws: list, cfg: dict, eps: float, norm: str, seed: int):
    """PGD-AT of one linear classifier per entry of `laws` (None: real points only), all at once
    (Adam is elementwise, so they train independently): the same start, real-point batches and
    generated-point noise for all; `unsup_fraction` of each batch drawn from a pool of `n_gen`
    points per class of the generator's law (an MLP DM's: its own `n_gen` samples per class).
    Returns W (G, d), b (G,)."""
    G, d, B, steps = len(laws), x.shape[1], cfg["clf_batch"], cfg["clf_steps"]
    g = stable_rng("clf", d, len(x), seed)
    W = (1e-3 / math.sqrt(d) * torch.randn(d, dtype=F64, generator=g)).repeat(G, 1).requires_grad_(True)
    b = torch.zeros(G, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=cfg["clf_lr"])
    ng = cfg["n_gen"]
    z = torch.randn(2, ng, d, dtype=F64, generator=g)
    pool, y_pool = torch.zeros(G, 2 * ng, d, dtype=F64), torch.cat([-torch.ones(ng), torch.ones(ng)]).to(F64)
    for k, law in enumerate(laws):
        if law is not None and "samples" in law:
            pool[k] = law["samples"].reshape(2 * ng, d)
        elif law is not None:
            lam, V = torch.linalg.eigh(law["covs"])
            R = V * lam.clamp_min(0).sqrt()[:, None, :]                     # covs = R R'
            for i in range(2):
                pool[k, i * ng:(i + 1) * ng] = law["means"][i] + z[i] @ R[i].T
    real_only = torch.tensor([law is None for law in laws])
    Bg = round(cfg["unsup_fraction"] * B)
    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(t, steps, cfg["clf_lr"], 0)
        i, j = torch.randint(len(x), (B,), generator=g), torch.randint(len(y_pool), (Bg,), generator=g)
        X = torch.cat([x[i[:B - Bg]].expand(G, -1, -1), pool[:, j]], 1)
        Y = torch.cat([y[i[:B - Bg]], y_pool[j]])
        X = torch.where(real_only[:, None, None], x[i].expand(G, -1, -1), X)
        Y = torch.where(real_only[:, None], y[i], Y)
        loss = pgd_at_losses(W, b, X, Y, eps, norm).sum()                  # the models' gradients are apart
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return W.detach(), b.detach()


def _short(v: float) -> float:
    return float(f"{v:.8g}")


def run_cell(job: dict) -> dict:
    """One (d, n, seed): every generator, its quality, its classifier, exactly. Picklable."""
    with torch_threads(1):
        cfg, d, n, seed = job["cfg"], job["d"], job["n"], job["seed"]
        cache = None if job["cache"] is None else Path(job["cache"])
        mlp_cache = None if job.get("mlp_cache") is None else Path(job["mlp_cache"])
        world, eps, norm = GaussianWorld(job["mu"], job["Sigma"]), eps_of(cfg, d), cfg["norm"]
        x, y = real_points(world, n, seed)
        t0 = time.perf_counter()
        laws = generator_laws(x, y, world, cfg, seed, cache, job.get("fresh", False), mlp_cache)
        t1 = time.perf_counter()
        gens = cell_generators(cfg, d, seed)
        W, b = train_classifiers(x, y, [laws.get(gen) for gen in gens], cfg, eps, norm, seed)
        rows = []
        for k, gen in enumerate(gens):
            w, bk = [_short(v) for v in W[k].tolist()], _short(float(b[k]))
            row = {"d": d, "n": n, "generator": gen, "seed": seed, "w": w, "b": bk, "eps": eps, "norm": norm,
                   "robust_acc_exact": robust_accuracy(w, bk, world.mu, world.Sigma, eps, norm),
                   "clean_acc_exact": robust_accuracy(w, bk, world.mu, world.Sigma, 0.0, norm)}
            if gen != "none":
                row.update(quality(world, laws[gen]))
            if gen in DM_GENERATORS or gen in MLP_GENERATORS:    # what training its two DMs took, when it ran
                row["train_seconds"] = round(float(laws[gen]["seconds"]), 2)
            if gen in DM_GENERATORS:
                row["fit_w2"] = float(laws[gen]["fit_w2"])
            if gen in MLP_GENERATORS:
                row["ll_nfe"] = int(laws[gen]["nfe"])
            rows.append(row)
        return {"d": d, "n": n, "seed": seed, "rows": rows, "generator_seconds": t1 - t0,
                "classifier_seconds": time.perf_counter() - t1}


# ----------------------------------------------------------------------- files
def world_meta(cfg: dict, world) -> dict:
    """mu, Sigma, eps, norm of a world, the best linear robust classifier and the Bayes accuracy."""
    eps = eps_of(cfg, world.dim)
    opt = best_linear_robust(world.mu, world.Sigma, eps, cfg["norm"])
    return {"mu": world.mu.tolist(), "Sigma": world.Sigma.tolist(), "eps": eps, "norm": cfg["norm"],
            "best_linear_robust_acc": opt.robust_accuracy, "best_linear_upper": opt.upper,
            "best_linear_w": opt.w.tolist(), "bayes_clean_acc": world.bayes_accuracy()}


def dumps(results: dict) -> str:
    """JSON with one row per line; an infinite value (a KL with a singular covariance) is written
    as 1e999, a JSON number that reads back as infinity."""
    enc = lambda v: re.sub(r"(?<![\w\"])(-?)Infinity", r"\g<1>1e999", json.dumps(v))   # noqa: E731
    parts = [f' "{k}": {enc(v)}' for k, v in results.items() if k not in ("rows", "meta")]
    meta = ",\n".join(f'  "{k}": {enc(v)}' for k, v in results["meta"].items())
    parts.insert(0, ' "meta": {\n' + meta + "\n }")
    parts.append(' "rows": [\n' + ",\n".join(enc(r) for r in results["rows"]) + "\n ]")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _previous_cells(out: Path, cfg: dict) -> tuple[dict, dict]:
    """({(d, n, seed): {generator: row}}, meta) of a previous run in `out` with the same cell settings."""
    try:
        prev = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}, {}
    if prev.get("config") is None or cell_key(prev["config"]) != cell_key(cfg):
        return {}, {}
    cells = {}
    for r in prev.get("rows", []):
        cells.setdefault((r["d"], r["n"], r["seed"]), {})[r["generator"]] = r
    return cells, prev.get("meta", {})


def run_study(out: str | Path, preset: str | None = None, seeds: int = 20, quick: bool = False,
              workers: int = 1, progress: bool = True, reuse: bool = True, overwrite: bool = False,
              **overrides) -> dict:
    """Run the study and write results.json, table.md and figure.png under `out`. `overrides`:
    any key of the configuration (dims, ns, eps, generators, clf_steps, ...). Every input is
    checked before anything is written; a folder holding a study whose cells depend on other
    settings is refused unless `overwrite`."""
    cfg = study_config(preset, quick, **overrides)
    if isinstance(seeds, bool) or int(seeds) != seeds or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds}")
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers}")
    check_results_folder(out, what="gen-data-study", overwrite=overwrite, differences=lambda prev: [
        f"{k}: {cell_key(prev['config']).get(k)!r} there, {v!r} now" for k, v in cell_key(cfg).items()
        if cell_key(prev["config"]).get(k) != v])
    start_work()
    out = Path(out)
    dm_hash = hashlib.sha1(json.dumps({"format": DM_FORMAT, **{k: cfg[k] for k in DM_KEYS}},
                                      sort_keys=True).encode()).hexdigest()[:10]
    cache = out / "cache" / f"dm-{dm_hash}"
    mlp_hash = hashlib.sha1(json.dumps({k: cfg[k] for k in MLP_KEYS}, sort_keys=True).encode()).hexdigest()[:10]
    mlp_cache = out / "cache" / f"mlp-{mlp_hash}"
    prev, prev_meta = _previous_cells(out, cfg) if reuse else ({}, {})
    with torch_threads(1):           # built once, here, and sent to the cells: the file's Sigma is theirs
        worlds = {d: world_of(cfg, d) for d in cfg["dims"]}
    cells, jobs = {}, []
    for d in cfg["dims"]:
        for n in cfg["ns"]:
            for s in range(seeds):
                done = prev.get((d, n, s), {})
                gens = cell_generators(cfg, d, s)
                if all(gen in done for gen in gens):
                    cells[(d, n, s)] = [done[gen] for gen in gens]
                else:
                    jobs.append({"cfg": cfg, "d": d, "n": n, "seed": s, "cache": str(cache), "fresh": not reuse,
                                 "mlp_cache": str(mlp_cache),
                                 "mu": worlds[d].mu, "Sigma": worlds[d].Sigma})
    jobs.sort(key=lambda j: -j["d"])                       # the costly dimensions first
    from tqdm.auto import tqdm
    t0 = time.perf_counter()
    if jobs and workers > 1:
        import multiprocessing as mp
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as ex:
            new = list(tqdm(ex.map(run_cell, jobs), total=len(jobs), desc="gen-data-study", disable=not progress))
    else:
        new = [run_cell(j) for j in tqdm(jobs, desc="gen-data-study", disable=not progress)]
    cells.update({(c["d"], c["n"], c["seed"]): c["rows"] for c in new})
    rows = [r for key in sorted(cells) for r in cells[key]]
    worlds = {str(d): world_meta(cfg, w) for d, w in worlds.items()}
    seconds, reused = time.perf_counter() - t0, len(cells) - len(jobs)

    def before(key: str) -> float:                   # what the reused cells cost when they were computed
        if not reused:
            return 0.0
        return prev_meta.get(key, prev_meta.get("seconds", 0.0) if key == "compute_wall_seconds" else 0.0)

    results = {"meta": {"torch": torch.__version__, "seeds": seeds, "workers": workers, "seconds": seconds,
                        "cells_computed": len(jobs), "cells_reused": reused,
                        # the wall time and the CPU seconds of computing every cell in the file, over runs
                        "compute_wall_seconds": before("compute_wall_seconds") + (seconds if jobs else 0.0),
                        "generator_seconds": before("generator_seconds") + sum(c["generator_seconds"] for c in new),
                        "classifier_seconds": before("classifier_seconds") + sum(c["classifier_seconds"] for c in new),
                        "worlds": worlds},
               "config": cfg}
    results["rows"] = rows
    atomic_write_text(out / "results.json", dumps({**results, "analysis": None}))   # the rows first: a report
    results["analysis"] = analyse(rows, cfg, worlds)                                 # error loses no computed cell
    table = markdown_table(results)
    atomic_write_text(out / "results.json", dumps(results))
    atomic_write_text(out / "table.md", table + "\n")
    plot_study(results, out / "figure.png")
    if progress:
        print(table)
        print(f"\nwrote {out}/results.json, table.md, figure.png ({results['meta']['seconds']:.0f} s; "
              f"{len(jobs)} cells computed, {len(cells) - len(jobs)} reused)")
    return results


# ----------------------------------------------------------------------- command line
def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `gen-data-study` on a subparsers object (hooked under `dmat toy`)."""
    p = sub.add_parser("gen-data-study", help="generated data for AT in any dimension: Gaussian world, "
                       "Gaussian generators and affine DMs, linear classifiers, everything exact",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    one_line_errors(p)                         # one line, like bad values
    p.add_argument("--preset", choices=sorted(PRESETS), help="the world and threat (default isotropic-linf)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seeds", type=int_at_least(1), default=20, help="draws of the real points (default: 20)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (also set by DMAT_QUICK=1)")
    p.add_argument("--workers", type=int_at_least(1), default=1, help="cells run at once (default: 1)")
    p.add_argument("--fresh", action="store_true", help="recompute every cell and DM, even those already in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a study of other cell settings in --out "
                   "(refused without it)")
    p.add_argument("--d", type=int, nargs="+", dest="dims", help="dimensions (default: 2 16 64 256)")
    p.add_argument("--n", type=int, nargs="+", dest="ns", help="real points per class (default: 4 16 64 256)")
    p.add_argument("--eps", type=float, help="threat radius (times sqrt(d) for lowrank-l2)")
    p.add_argument("--generators", nargs="+", help=f"data sources (default: all of {', '.join(GENERATORS)})")
    p.add_argument("--clf-steps", type=int, help="PGD-AT steps of every classifier (300)")
    p.add_argument("--dm-steps", type=int, help="training steps of the affine DMs for d <= 64 (300)")
    p.set_defaults(func=_main)


def _main(a: argparse.Namespace) -> int:
    over = {k: getattr(a, k) for k in ("dims", "ns", "eps", "generators", "clf_steps", "dm_steps")}
    run_study(a.out, a.preset, a.seeds, a.quick or os.environ.get("DMAT_QUICK") == "1", a.workers,
              reuse=not a.fresh, overwrite=a.overwrite, **over)
    return 0
