"""AT for diffusion models, measured exactly on known densities (`dmat toy at-dm-study`).

Trains the toy denoiser on a (corrupted) training set of a known distribution with each loss
of :mod:`dmat_core.diffusion.losses` -- standard, AT-random, AT-adversarial, and the invariance
ablation -- over several seeds, and measures every model against the *clean* distribution:
the exact sample metrics (NLL, off-mode mass, manifold residual, sliced W2), the error of the
denoiser against the clean exact one, memorization, the Jacobian of the denoiser per sigma,
trajectory length and curvature, and (optionally) the metrics under an attack on the sampling
trajectory. Writes results.json, table.md (mean +- std over seeds) and figures under --out.

    dmat toy at-dm-study --preset inlier-ring8 --out results/at_dm/inlier-ring8
    dmat toy at-dm-study --dist ring8 --corruption inlier --p 0.9 --seeds 3 --out DIR --quick
"""
# Size: one module of about 320 lines on purpose: one experiment (training every arm over seeds,
# measuring each against the clean density, the CLI); its set-up and its report are modules of their
# own.
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..common.checkpoint import atomic_savez, atomic_write_text
from ..common.outputs import check_results_folder, start_work
from ..common.settings import int_at_least
from ..common.train_utils import torch_threads
from ..diffusion.edm import edm_sigmas
from ..diffusion.flow import trajectory_attack, trajectory_stats
from ..diffusion.losses import ATConfig, cost_table
from ..diffusion.samplers import latent_noise, run
from ..toys.corruption import corrupted_distribution
from ..toys.metrics import sample_metrics, score_error
from ..toys.mixtures import GaussianMixture, make_distribution
from ..toys.nets import data_std
from ..toys.smoothness import jacobian_frobenius, likelihood_gap, memorization_rate
from ..toys.train import fit_toy, make_toy_model, train_toy
from .at_dm_report import markdown_table, plot_study, summarize
from .at_dm_setup import ARMS, DEFAULT_ARMS, PRESETS, ATOptions, project_2d, study_config, training_set

JAC_SIGMAS = [0.01, 0.05, 0.2, 1.0]
NOT_IN_RUNS = {"cost_steps"}          # configuration keys that no trained model depends on
SCORE_SIGMAS = [0.05, 0.2, 1.0]


def measure_denoiser(D, dist, train, cfg: dict, seed: int) -> tuple[dict, dict]:
    """Every measure of one model; returns (metrics, extras with samples and per-sigma rows)."""
    sd = float(getattr(D, "sigma_data", 1.0))
    latents = latent_noise(cfg["n_eval"], dist.dim, torch.Generator().manual_seed(5000 + seed))
    with torch.no_grad():
        traj = run(D, latents, "heun", cfg["sampler_steps"], trajectory=True)   # (S+1, n, d)
    x = traj[-1].double()
    m = sample_metrics(dist, x, seed=seed, mmd=False)
    m.pop("mode_weights", None)
    if not dist.full_rank:     # no density at sigma = 0: NLL under the slightly noised density
        m["nll_smoothed"] = float(-dist.log_prob(x, 0.05).mean())
    m.update(memorization_rate(x, train, dist, seed=seed))
    # the exact held-out likelihood (PF-ODE) and the train/held-out gap, where the exact trace is cheap:
    # in d = 256 one exact denoiser of subspace data alone takes over a minute for 64 points (stiff)
    if cfg.get("ll_n") and dist.dim <= 8:
        m.update(likelihood_gap(D, dist, train, n=cfg["ll_n"], seed=seed, n_probe=cfg["ll_probe"]))
    m.update(trajectory_stats(traj, edm_sigmas(cfg["sampler_steps"]), sigma_max=sd))
    jac = jacobian_frobenius(D, dist, JAC_SIGMAS, n=cfg["jac_n"], seed=seed)
    err = score_error(D, dist, SCORE_SIGMAS, n=1024, seed=seed)
    for r in jac:
        m[f"jac@{r['sigma']:g}"] = r["jac_fro"]
    for r in err:
        m[f"den_err@{r['sigma']:g}"] = r["relative"]
    extras = {"view": project_2d(x[:2000], dist), "jacobian": jac, "score_error": err}
    if cfg.get("attack_budgets"):
        rows = []
        for b in cfg["attack_budgets"]:
            xa = trajectory_attack(D, latents, cfg["sampler_steps"], cfg["attack_step"], b,
                                   cfg["attack_iter"], cfg["attack_restarts"], seed=seed).double()
            ma = sample_metrics(dist, xa, seed=seed, mmd=False, repeats=2)
            ma.pop("mode_weights", None)
            rows.append({"budget": b, **ma})
        extras["attack"] = rows
        for r in rows:
            for k in ("off_mode_mass", "nll_gap", "sw2_ratio", "residual_rms"):
                if k in r:
                    m[f"attack{r['budget']:g}_{k}"] = r[k]
    return m, extras


def train_and_evaluate(job: dict) -> dict:
    """One (seed, arm) cell of the study: build the data, train, evaluate. Picklable."""
    with torch_threads(job.get("threads", 1)):
        return _train_and_evaluate(job)


def _train_and_evaluate(job: dict) -> dict:
    cfg, seed, at = job["cfg"], job["seed"], ATConfig(**job["at"])
    dist, x, _ = training_set(cfg, seed)
    sd = data_std(x)
    model = make_toy_model(dist.dim, sd, seed, width=cfg["width"], depth=cfg["depth"])
    t0 = time.perf_counter()
    D, hist = fit_toy(model, x, at, steps=cfg["steps"], batch=cfg["batch"], lr=cfg["lr"],
                      ema=cfg["ema"], P_mean=cfg["P_mean"], P_std=cfg["P_std"], seed=seed,
                      progress=job.get("progress", False), desc=f"{job['arm']} s{seed}")
    train_s = time.perf_counter() - t0
    metrics, extras = measure_denoiser(D, dist, x, cfg, seed)
    metrics.update(train_seconds=train_s, ms_per_step=1000 * train_s / cfg["steps"])
    return {"seed": seed, "variant": job["arm"], "at": at.as_dict(), "metrics": metrics,
            "history": hist, "jacobian": extras["jacobian"], "score_error": extras["score_error"],
            "attack": extras.get("attack"), "view": extras["view"]}


def measure_cost(cfg: dict, arms, at: dict, rounds: int = 5, steps: int | None = None) -> dict:
    """Milliseconds per training step of each arm, interleaved in one process (one thread) so
    that a shared machine's load hits every arm alike; the fastest of `rounds` (the least
    disturbed, as timeit does), each of `steps` steps (default: the size's `cost_steps`)."""
    threads, steps = torch.get_num_threads(), steps or cfg["cost_steps"]
    torch.set_num_threads(1)
    dist = make_distribution(cfg["dist"], **cfg["dist_kw"])
    x = dist.sample(max(cfg["batch"], 64), torch.Generator().manual_seed(0))
    times = {a: [] for a in arms}
    for _ in range(rounds):
        for a in arms:
            model = make_toy_model(dist.dim, data_std(x), 0, width=cfg["width"], depth=cfg["depth"])
            it = train_toy(model, x, ATConfig(**{**at, **ARMS[a]}), steps=steps + 2,
                           batch=cfg["batch"])
            next(it), next(it)                                   # warm-up steps
            t0 = time.perf_counter()
            for _ in it:
                pass
            times[a].append(1000 * (time.perf_counter() - t0) / steps)
    torch.set_num_threads(threads)
    return {a: min(t) for a, t in times.items()}


def reference_rows(cfg: dict, seed: int = 0) -> dict:
    """What fresh true samples, and the training set itself, score under the same metrics."""
    dist, x, mask = training_set(cfg, seed)
    g = torch.Generator().manual_seed(99_000 + seed)
    fresh = dist.sample(cfg["n_eval"], g)
    out = {}
    for name, pts in (("true samples", fresh), ("training set", x[:cfg["n_eval"]])):
        m = sample_metrics(dist, pts, seed=seed, mmd=False)
        m.pop("mode_weights", None)
        if not dist.full_rank:
            m["nll_smoothed"] = float(-dist.log_prob(pts, 0.05).mean())
        if name == "true samples":
            m.update(memorization_rate(pts, x, dist, seed=seed))
        out[name] = m
    out["training set"]["corrupted_share"] = float(mask.double().mean())
    for name, ideal in ideal_models(dist, x, cfg).items():
        m, _ = measure_denoiser(_ExactDenoiser(ideal, data_std(x)), dist, x, cfg, seed)
        out[name] = m
    return out


class _ExactDenoiser:
    """The exact denoiser of a mixture, with the `sigma_data` attribute of a trained model."""

    def __init__(self, mixture: GaussianMixture, sigma_data: float):
        self.mixture, self.sigma_data = mixture, sigma_data

    def __call__(self, x, sigma, labels=None):
        return self.mixture.denoiser(x, sigma, labels)


def ideal_models(dist, x, cfg: dict) -> dict:
    """What a perfect fit of the training data would do, as exact denoisers measured like the
    trained models: the exact denoiser of the distribution the (corrupted) training set is drawn
    from, which plain denoising training converges to with unlimited data; and, for a tiny
    training set, the exact denoiser of the training set itself (the empirical optimum of the
    denoising loss, which can only reproduce training points)."""
    out = {}
    ideal = corrupted_distribution(dist, cfg["corruption"], cfg["p"], cfg["s"])
    if ideal is not None:
        out["exact denoiser of the training distribution"] = ideal
    if len(x) <= 1000:
        out["exact denoiser of the training set"] = GaussianMixture.isotropic(x, 0.0, name="empirical")
    return out


def _load_previous(out: Path) -> tuple[list[dict], dict]:
    """Runs and 2D views of a previous study in `out` (empty if none or unreadable)."""
    try:
        prev = json.loads((out / "results.json").read_text())
        with np.load(out / "samples.npz") as z:
            views = {k: z[k] for k in z.files}
        return prev, views
    except (OSError, ValueError, KeyError):
        return {}, {}


def run_study(out: str | Path, preset: str | None = None, seeds: int = 3, quick: bool = False,
              variants=DEFAULT_ARMS, at: dict | None = None, workers: int = 1,
              progress: bool = True, reuse: bool = True, overwrite: bool = False, **overrides) -> dict:
    """Run a study and write results.json, table.md, samples.npz and figures under `out`.

    `variants`: arms of :data:`ARMS` (the four losses, and `adversarial-residual`). `at` holds
    ATConfig fields shared by every arm (lam, r_max, exponent, r_min, ...); `overrides` any key
    of the configuration (dist, corruption, p, s, q, steps, n_train, ...). `workers` > 1 trains
    that many models at once in separate processes (one thread each; the numbers do not change).
    With `reuse`, a (seed, arm) already in `out`/results.json with the same configuration is
    loaded instead of trained again (every run is deterministic), so adding an arm or a seed
    trains only what is new. A folder holding a study of another configuration (or other AT options
    for an arm in both) is refused before anything is written, unless `overwrite`. Returns the results dict.
    """
    cfg = study_config(preset, quick, **overrides)
    if isinstance(seeds, bool) or int(seeds) != seeds or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds}")
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers}")
    unknown = [v for v in variants if v not in ARMS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {sorted(ARMS)}")
    at = ATOptions.from_dict(at or {}).given()
    at_cfg = {a: ATConfig(**{**at, **ARMS[a]}).as_dict() for a in variants}   # validates

    def differences(prev: dict) -> list:
        was = {k: v for k, v in prev["config"].items() if k not in NOT_IN_RUNS}
        now = {k: v for k, v in cfg.items() if k not in NOT_IN_RUNS}
        diff = [f"{k}: {was.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(was) | set(now))
                if json.dumps(was.get(k), sort_keys=True) != json.dumps(now.get(k), sort_keys=True)]
        return diff + [f"AT options of {a} differ" for a in at_cfg
                       if a in prev.get("at", {}) and prev["at"][a] != at_cfg[a]]

    check_results_folder(out, what="at-dm-study", differences=differences, overwrite=overwrite)
    start_work()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prev, views = _load_previous(out) if reuse else ({}, {})
    key = lambda c: json.dumps({k: v for k, v in (c or {}).items() if k not in NOT_IN_RUNS},
                               sort_keys=True)
    same_cfg = key(prev.get("config")) == key(cfg)
    done = {(r["seed"], r["variant"]): r for r in prev.get("runs", [])
            if same_cfg and r.get("at") == at_cfg.get(r["variant"])
            and f"{r['variant']}_seed{r['seed']}" in views}
    jobs, runs = [], {}
    for s in range(seeds):
        for a in variants:
            if (s, a) in done:
                runs[(s, a)] = {**done[(s, a)], "view": views[f"{a}_seed{s}"]}
            else:
                jobs.append({"cfg": cfg, "seed": s, "arm": a, "at": at_cfg[a], "threads": 1,
                             "progress": progress and workers == 1})
    from tqdm.auto import tqdm
    t0 = time.perf_counter()
    if jobs and workers > 1:
        import multiprocessing as mp
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            new = list(tqdm(ex.map(train_and_evaluate, jobs), total=len(jobs), desc="at-dm-study",
                            disable=not progress))
    else:
        new = [train_and_evaluate(j) for j in tqdm(jobs, desc="at-dm-study", disable=not progress)]
    runs.update({(r["seed"], r["variant"]): r for r in new})
    runs = [runs[(s, a)] for s in range(seeds) for a in variants]
    cost = cost_table()
    cost = {a: dict(cost[at_cfg[a]["variant"]]) for a in variants}
    ms = measure_cost(cfg, variants, at)
    for a in variants:
        cost[a]["ms_per_step"] = ms[a]
        if "standard" in variants:
            cost[a]["measured_relative"] = ms[a] / ms["standard"]
    results = {"meta": {"torch": torch.__version__, "threads_per_model": 1, "workers": workers,
                        "seconds": time.perf_counter() - t0, "seeds": seeds,
                        "trained": len(jobs), "reused": len(runs) - len(jobs)},
               "config": cfg, "at": at_cfg, "cost": cost, "reference": reference_rows(cfg, 0),
               "summary": summarize(runs, variants),
               "runs": [{k: v for k, v in r.items() if k != "view"} for r in runs]}
    table = markdown_table(results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=float))
    atomic_write_text(out / "table.md", table + "\n")
    atomic_savez(out / "samples.npz", **{f"{r['variant']}_seed{r['seed']}": r["view"] for r in runs})
    plot_study(results, runs, cfg, out)
    if progress:
        print(table)
        print(f"\nwrote {out}/results.json, table.md and figures "
              f"({results['meta']['seconds']:.0f} s; {len(jobs)} models trained, "
              f"{len(runs) - len(jobs)} reused)")
    return results


# ----------------------------------------------------------------------- command line
def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `at-dm-study` on a subparsers object (the lead hooks it under `dmat toy`)."""
    p = sub.add_parser("at-dm-study", help="standard vs AT (random, adversarial) vs invariance "
                       "training of a toy denoiser on corrupted known-density data",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named setting (flags override it)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seeds", type=int_at_least(1), default=3, help="seeds per variant (default: 3)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (also set by DMAT_QUICK=1)")
    p.add_argument("--workers", type=int_at_least(1), default=1, help="models trained at once (default: 1)")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_ARMS), choices=list(ARMS),
                   help="which arms to train (default: all five)")
    p.add_argument("--fresh", action="store_true", help="retrain every model even if --out "
                   "already holds it with the same configuration")
    p.add_argument("--overwrite", action="store_true", help="replace a study of another configuration "
                   "in --out (refused without it)")
    g = p.add_argument_group("data (defaults from the preset, else ring8 clean)")
    g.add_argument("--dist", choices=["ring8", "grid25", "plane3d", "subspace", "anisotropic"])
    g.add_argument("--corruption", choices=["clean", "inlier", "outlier", "offplane"])
    g.add_argument("--p", type=float, help="fraction with inlier / off-plane noise (0.9)")
    g.add_argument("--s", type=float, help="std of that noise, data units (0.2)")
    g.add_argument("--q", type=float, help="fraction of outliers (0.1)")
    g.add_argument("--outlier", choices=["uniform", "cluster"], help="outlier model")
    g.add_argument("--n-train", type=int, help="training-set size (tiny: memorization)")
    g.add_argument("--steps", type=int, help="training steps")
    g.add_argument("--batch", type=int, help="minibatch size")
    g.add_argument("--n-eval", type=int, help="samples per model")
    a = p.add_argument_group("AT (defaults: docs/science.md section 3)")
    a.add_argument("--lam", type=float, help="AT weight lambda (0.3)")
    a.add_argument("--r-max", type=float, help="budget at high noise, noise units (1.0)")
    a.add_argument("--exponent", type=float, help="budget shape exponent (2)")
    a.add_argument("--r-min", type=float, help="budget floor (0.125, see --min-units)")
    a.add_argument("--min-units", choices=["data", "noise"], help="floor in data units x "
                   "sigma_data, or in noise units (data)")
    a.add_argument("--fgsm-step", type=float, help="FGSM step / r(sigma) (1.0)")
    a.add_argument("--attack-target", choices=["gap", "residual"], help="FGSM objective (gap)")
    a.add_argument("--detach-clean", action="store_true", default=None,
                   help="stop the gradient through eps_th(x) in the AT target")
    a.add_argument("--weighting", choices=["edm", "eps"], help="per-sigma loss weight (edm)")
    p.set_defaults(func=_main)


def _main(a: argparse.Namespace) -> int:
    at = {k: getattr(a, k) for k in ("lam", "r_max", "exponent", "r_min", "min_units",
                                     "fgsm_step", "attack_target", "detach_clean", "weighting")
          if getattr(a, k) is not None}
    over = {k: getattr(a, k) for k in ("dist", "corruption", "p", "s", "q", "outlier", "n_train",
                                       "steps", "batch", "n_eval")}
    run_study(a.out, a.preset, a.seeds, a.quick or os.environ.get("DMAT_QUICK") == "1",
              tuple(a.variants), at, a.workers, reuse=not a.fresh, overwrite=a.overwrite, **over)
    return 0


def main(argv=None) -> int:
    """Stand-alone entry point: `python -m dmat_core.studies.at_dm_study --preset ...`."""
    parser = argparse.ArgumentParser(prog="at-dm-study")
    add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["at-dm-study", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
