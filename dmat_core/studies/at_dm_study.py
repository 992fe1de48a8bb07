"""AT for diffusion models, measured exactly on known densities (`dmat toy at-dm-study`).

Trains the toy denoiser on a (corrupted) training set of a known distribution with each arm --
standard, AT-random, AT-adversarial (the paper's FGSM on the prediction gap), `fgsm-at-loss` (FGSM
on the AT loss itself, Madry-style: this project's reading, not an arm of the paper),
`adversarial-true-noise` (the true noise eps + w as the equivariance target) and the invariance
ablation -- beside three baselines built on standard training alone (Tweedie shrinkage with a
tuned sigma_s, early stopping, the exact denoiser of the corrupted training distribution;
:mod:`~dmat_core.studies.at_dm_baselines`), over several seeds, and measures every model against
the *clean* distribution: the exact sample metrics (NLL, off-mode mass, manifold residual, sliced
W2), the held-out likelihood, the error of the denoiser against the clean exact one,
memorization, the Jacobian of the denoiser per sigma, trajectory length and curvature, and
(optionally) the metrics under an attack on the sampling trajectory. Writes results.json,
table.md (mean +- std over seeds) and figures under --out. With --cache DIR, trained models and
measured runs are kept there and reused by every study that needs them
(:mod:`~dmat_core.studies.at_dm_cache`; `dmat toy at-dm-sweep` uses it).

    dmat toy at-dm-study --preset inlier-ring8 --out results/at_dm/inlier-ring8
    dmat toy at-dm-study --dist ring8 --corruption inlier --p 0.9 --seeds 3 --out DIR --quick
    dmat toy at-dm-study --preset inlier-ring8 --r-min 0.06 --sampler-sigma-min 0.02 --cache DIR2 --out DIR
"""
# Size: one module of about 400 lines on purpose: one experiment (running every arm and baseline over
# seeds, reusing what is done or cached, its command line); its set-up, measures, baselines, cache and
# report are modules of their own.
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
from ..common.outputs import check_out_dir, check_results_folder, start_work
from ..common.settings import int_at_least
from ..common.train_utils import torch_threads
from ..diffusion.losses import ATConfig, cost_table
from ..toys.nets import data_std
from ..toys.train import fit_toy_snapshots, make_toy_model
from . import at_dm_cache as cache_io
from .at_dm_baselines import choose_snapshot, ideal_standard, tune_shrinkage
from .at_dm_measure import (ExactDenoiser, measure_cost, measure_denoiser, model_memo,  # noqa: F401 (notebooks
                             reference_rows)                                            # import them here)
from .at_dm_report import markdown_table, plot_study, summarize
from .at_dm_setup import (ARMS, BASELINES, DEFAULT_ARMS, LEGACY_ARMS, PRESETS, STANDARD_GROUP, ATOptions,
                          arm_name, migrate_results, snapshot_steps, study_config, training_set)

NOT_IN_RUNS = {"cost_steps"}          # configuration keys that no trained model depends on


def train_and_evaluate(job: dict) -> list[dict]:
    """One job of the study: the arms `job["arms"]` of one seed that share a model (one AT arm; or
    standard training and the baselines built on it; or the ideal standard model). Picklable."""
    with torch_threads(job.get("threads", 1)):
        return _train_and_evaluate(job)


def _run(seed: int, arm: str, at: dict, metrics: dict, extras: dict, history: list, **more) -> dict:
    return {"seed": seed, "variant": arm, "at": at, "metrics": metrics, "history": history,
            "jacobian": extras["jacobian"], "score_error": extras["score_error"],
            "attack": extras.get("attack"), "view": extras["view"], **more}


def _train(job: dict, dist, x, arm: str, snapshots: bool):
    """The model of `arm` for this job's seed: from the cache, else trained (and cached). Returns
    (denoiser, history, seconds of training, {step: denoiser} of the snapshots asked for)."""
    cfg, seed, cache, at = job["cfg"], job["seed"], job.get("cache"), job["at"][arm]
    settings = cache_io.model_settings(cfg, seed, at)
    steps = [k for k in snapshot_steps(cfg) if k < cfg["steps"]] if snapshots else []
    make = lambda: make_toy_model(dist.dim, data_std(x), seed, width=cfg["width"], depth=cfg["depth"])
    if cache is not None:
        got = cache_io.load_model(cache, settings)
        snaps = {k: cache_io.load_model(cache, settings, k) for k in steps}
        if got is not None and all(v is not None for v in snaps.values()):
            D, hist = got        # the training time, from the last logged step (every 50 steps)
            secs = hist[-1]["seconds"] * cfg["steps"] / hist[-1]["step"] if hist else float("nan")
            return D, hist, secs, {k: v[0] for k, v in snaps.items()}
    t0 = time.perf_counter()
    D, hist, states = fit_toy_snapshots(make(), x, ATConfig(**at), steps, steps=cfg["steps"], batch=cfg["batch"],
                                        lr=cfg["lr"], ema=cfg["ema"], P_mean=cfg["P_mean"], P_std=cfg["P_std"],
                                        seed=seed, progress=job.get("progress", False), desc=f"{arm} s{seed}")
    secs = time.perf_counter() - t0
    snaps = {}
    for k, state in states.items():
        snaps[k] = make()
        snaps[k].load_state_dict(state)
        snaps[k].eval()
    if cache is not None:
        for k, model in snaps.items():
            cache_io.save_model(cache, settings, model, [], step=k)
        cache_io.save_model(cache, settings, D, hist)
    return D, hist, secs, snaps


def _train_and_evaluate(job: dict) -> list[dict]:
    cfg, seed, cache = job["cfg"], job["seed"], job.get("cache")
    dist, x, _ = training_set(cfg, seed)
    settings = {a: cache_io.run_settings(cfg, seed, a, job["at"][a], a in BASELINES) for a in job["arms"]}
    runs = {}
    for a in job["arms"]:
        hit = cache_io.load_run(cache, settings[a]) if cache is not None else None
        if hit is not None:
            runs[a] = {**hit, "at": job["at"][a], "_from_cache": True}
    todo = [a for a in job["arms"] if a not in runs]
    if todo == ["ideal-standard"]:
        D = ExactDenoiser(ideal_standard(dist, cfg), data_std(x))
        ideal = {"model": "exact denoiser of the training distribution",      # as in reference_rows
                 **{k: cfg[k] for k in cache_io.TRAIN_KEYS}, "seed": seed}
        m, ex = measure_denoiser(D, dist, x, cfg, seed, memo=model_memo(cache, cfg, dist, ideal))
        m.update(train_seconds=0.0, ms_per_step=0.0)
        runs["ideal-standard"] = _run(seed, "ideal-standard", job["at"]["ideal-standard"], m, ex, [],
                                      baseline={"model": BASELINES["ideal-standard"]})
        if cache is not None:
            cache_io.save_run(cache, settings["ideal-standard"], runs["ideal-standard"])
    elif todo:
        D, hist, secs, snaps = _train(job, dist, x, todo[0], "early-stopping" in todo)
        D.eval()
        timing = dict(train_seconds=secs, ms_per_step=1000 * secs / cfg["steps"])
        ms = cache_io.model_settings(cfg, seed, job["at"][todo[0]])
        memo = model_memo(cache, cfg, dist, ms)
        tune = {k: cfg[k] for k in ("tune_n", "ll_probe")}
        for a in todo:
            if a == "tweedie-shrinkage":
                pick = lambda: list(tune_shrinkage(D, dist, cfg, seed))     # noqa: E731
                sigma_s, rows = pick() if memo is None else memo(
                    "tune_shrinkage", {**tune, "shrink_sigmas": sorted(cfg["shrink_sigmas"])}, pick)
                m, ex = measure_denoiser(D, dist, x, cfg, seed, shrink_sigma=sigma_s, memo=memo)
                m.update(shrink_sigma=sigma_s, **timing)
                runs[a] = _run(seed, a, job["at"][a], m, ex, hist, baseline={"sigma_s": sigma_s, "tuning": rows})
            elif a == "early-stopping":
                models = {**snaps, cfg["steps"]: D}
                pick = lambda: list(choose_snapshot(models, dist, cfg, seed))  # noqa: E731
                step, rows = pick() if memo is None else memo(
                    "choose_snapshot", {**tune, "steps_compared": sorted(models)}, pick)
                at_step = ms if step == cfg["steps"] else {**ms, "snapshot_step": step}
                m, ex = measure_denoiser(models[step], dist, x, cfg, seed, memo=model_memo(cache, cfg, dist, at_step))
                m.update(stop_step=step, **timing)
                runs[a] = _run(seed, a, job["at"][a], m, ex, [h for h in hist if h["step"] <= step],
                               baseline={"step": step, "selection": rows})
            else:
                m, ex = measure_denoiser(D, dist, x, cfg, seed, memo=memo)
                m.update(**timing)
                runs[a] = _run(seed, a, job["at"][a], m, ex, hist)
            if cache is not None:
                cache_io.save_run(cache, settings[a], runs[a])
    return [runs[a] for a in job["arms"]]


def _load_previous(out: Path) -> tuple[dict, dict]:
    """Runs and 2D views of a previous study in `out` (empty if none or unreadable), arms renamed
    since under their new names (:func:`~dmat_core.studies.at_dm_setup.migrate_results`)."""
    try:
        prev = migrate_results(json.loads((out / "results.json").read_text()))
        with np.load(out / "samples.npz") as z:
            views = {k: z[k] for k in z.files}
        for old, new in LEGACY_ARMS.items():
            views.update({k.replace(old, new, 1): views.pop(k) for k in list(views) if k.startswith(old + "_")})
        return prev, views
    except (OSError, ValueError, KeyError):
        return {}, {}


def _jobs(cfg: dict, seeds: int, variants, at_cfg: dict, done: dict, cache, progress: bool) -> list[dict]:
    """The jobs of what is not done yet: per seed, standard training with the baselines built on it
    in one job (one model), the ideal standard model in one, and one per AT arm."""
    jobs = []
    for s in range(seeds):
        todo = [a for a in variants if (s, a) not in done]
        group = [a for a in STANDARD_GROUP if a in todo]
        for arms in ([group] if group else []) + [[a] for a in todo if a not in STANDARD_GROUP]:
            jobs.append({"cfg": cfg, "seed": s, "arms": arms, "at": {a: at_cfg[a] for a in arms},
                         "threads": 1, "progress": progress, "cache": None if cache is None else str(cache)})
    return jobs


def _check_cache(cache, jobs: list[dict]) -> None:
    """Every cached file the jobs would read is of the right kind and settings (before any work)."""
    models, runs = [], []
    for j in jobs:
        cfg, seed = j["cfg"], j["seed"]
        for a in j["arms"]:
            runs.append(cache_io.run_settings(cfg, seed, a, j["at"][a], a in BASELINES))
            if a != "ideal-standard":
                ms = cache_io.model_settings(cfg, seed, j["at"][a])
                models += [(ms, None)] + [(ms, k) for k in snapshot_steps(cfg)[:-1] if a == "early-stopping"]
    cache_io.check_cache(cache, models, runs)


def run_study(out: str | Path, preset: str | None = None, seeds: int = 3, quick: bool = False,
              variants=None, at: dict | None = None, workers: int = 1,
              progress: bool = True, reuse: bool = True, overwrite: bool = False,
              cache: str | Path | None = None, check_only: bool = False, **overrides) -> dict | None:
    """Run a study and write results.json, table.md, samples.npz and figures under `out`.

    `variants`: arms of :data:`ARMS` and baselines of :data:`BASELINES` (a name from before a
    rename is read as the new one); None: all of them that apply (no ideal standard model for
    uniform outliers). `at` holds ATConfig fields shared by every arm (lam, r_max,
    exponent, r_min, target, ...); `overrides` any key of the configuration (dist, corruption, p, s,
    q, steps, n_train, sampler_sigma_min, ...). `workers` > 1 runs that many jobs at once in separate
    processes (one thread each; the numbers do not change). With `reuse`, a (seed, arm) already in
    `out`/results.json with the same configuration is loaded instead of trained again (every run is
    deterministic), so adding an arm or a seed trains only what is new. `cache`: a folder of trained
    models and measured runs shared between studies (:mod:`~dmat_core.studies.at_dm_cache`), read
    and written. A folder holding a study of another configuration (or other AT options for an arm
    in both) is refused before anything is written, unless `overwrite`; so is a cache file of another
    kind. Returns the results dict; with `check_only`, makes every check and returns None, having
    written nothing (a sweep checks all its studies before it runs the first).
    """
    cfg = study_config(preset, quick, **overrides)
    if isinstance(seeds, bool) or int(seeds) != seeds or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds}")
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers}")
    if variants is None:          # every arm and every baseline that applies
        variants = [v for v in DEFAULT_ARMS if not (v == "ideal-standard" and cfg["corruption"] == "outlier")]
    variants = tuple(dict.fromkeys(arm_name(v) for v in variants))
    unknown = [v for v in variants if v not in ARMS and v not in BASELINES]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {sorted(ARMS) + sorted(BASELINES)}")
    if "ideal-standard" in variants and cfg["corruption"] == "outlier":
        raise ValueError("ideal-standard: the training distribution with uniform outliers has no exact "
                         "denoiser here; leave the baseline out for --corruption outlier")
    at = ATOptions.from_dict(at or {}).given()
    at_cfg = {a: ATConfig(**{**at, **ARMS.get(a, {"variant": "standard"})}).as_dict() for a in variants}

    def differences(prev: dict) -> list:
        prev = migrate_results(prev)
        was = {k: v for k, v in prev["config"].items() if k not in NOT_IN_RUNS}
        now = {k: v for k, v in cfg.items() if k not in NOT_IN_RUNS}
        diff = [f"{k}: {was.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(was) | set(now))
                if json.dumps(was.get(k), sort_keys=True) != json.dumps(now.get(k), sort_keys=True)]
        return diff + [f"AT options of {a} differ" for a in at_cfg
                       if a in prev.get("at", {}) and prev["at"][a] != at_cfg[a]]

    check_results_folder(out, what="at-dm-study", differences=differences, overwrite=overwrite)
    if cache is not None:
        check_out_dir(cache, flag="--cache")
    out = Path(out)
    prev, views = _load_previous(out) if reuse else ({}, {})
    key = lambda c: json.dumps({k: v for k, v in (c or {}).items() if k not in NOT_IN_RUNS},
                               sort_keys=True)
    same_cfg = key(prev.get("config")) == key(cfg)
    done = {(r["seed"], r["variant"]): r for r in prev.get("runs", [])
            if same_cfg and r.get("at") == at_cfg.get(r["variant"])
            and f"{r['variant']}_seed{r['seed']}" in views}
    jobs = _jobs(cfg, seeds, variants, at_cfg, done, cache, progress and workers == 1)
    _check_cache(cache, jobs)
    if check_only:
        return None
    start_work()
    out.mkdir(parents=True, exist_ok=True)
    runs = {k: {**r, "view": views[f"{k[1]}_seed{k[0]}"]} for k, r in done.items() if k[0] < seeds and k[1] in variants}
    from tqdm.auto import tqdm
    t0 = time.perf_counter()
    if jobs and workers > 1:
        import multiprocessing as mp
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            new = list(tqdm(ex.map(train_and_evaluate, jobs), total=len(jobs), desc="at-dm-study",
                            disable=not progress))
    else:
        new = [train_and_evaluate(j) for j in tqdm(jobs, desc="at-dm-study", disable=not progress)]
    cached = sum(bool(r.pop("_from_cache", False)) for rs in new for r in rs)
    runs.update({(r["seed"], r["variant"]): r for rs in new for r in rs})
    runs = [runs[(s, a)] for s in range(seeds) for a in variants]
    computed = sum(len(j["arms"]) for j in jobs) - cached
    results = {"meta": {"torch": torch.__version__, "threads_per_model": 1, "workers": workers,
                        "seconds": time.perf_counter() - t0, "seeds": seeds, "computed": computed,
                        "from_cache": cached, "reused": len(runs) - computed - cached},
               "config": cfg, "at": at_cfg, "cost": _cost(cfg, variants, at), "reference": reference_rows(cfg, 0, cache),
               "baselines": {b: BASELINES[b] for b in variants if b in BASELINES},
               "summary": summarize(runs, variants),
               "runs": [_stored(r) for r in runs]}
    table = markdown_table(results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=float))
    atomic_write_text(out / "table.md", table + "\n")
    atomic_savez(out / "samples.npz", **{f"{r['variant']}_seed{r['seed']}": r["view"] for r in runs})
    plot_study(results, runs, cfg, out)
    if progress:
        print(table)
        print(f"\nwrote {out}/results.json, table.md and figures "
              f"({results['meta']['seconds']:.0f} s; {computed} runs computed, {cached} from the cache, "
              f"{results['meta']['reused']} reused from {out})")
    return results


def _stored(run: dict) -> dict:
    """A run as results.json keeps it: without its 2D view (samples.npz holds those), and with the
    training-loss history of seed 0 alone, the one the figure draws (the other seeds' histories
    were 60% of the file; the cache keeps every model's own)."""
    return {k: ([] if k == "history" and run["seed"] else v) for k, v in run.items() if k != "view"}


def _cost(cfg: dict, variants, at: dict) -> dict:
    """Passes per example (counted) and ms per step (measured) of every arm; a baseline costs its
    standard training (the ideal standard model none: it is not trained)."""
    timed = [a for a in variants if a in ARMS]
    if any(b in variants for b in STANDARD_GROUP[1:]) and "standard" not in timed:
        timed.append("standard")
    ms = measure_cost(cfg, timed, at) if timed else {}
    counted = cost_table()
    cost = {}
    for a in variants:
        if a == "ideal-standard":
            cost[a] = {"forward": 0, "backward": 0, "relative": 0.0, "ms_per_step": 0.0, "measured_relative": 0.0}
            continue
        c = dict(counted[ARMS.get(a, {"variant": "standard"})["variant"]])
        c["ms_per_step"] = ms["standard" if a in BASELINES else a]
        if "standard" in ms:
            c["measured_relative"] = c["ms_per_step"] / ms["standard"]
        cost[a] = c
    return cost


# ----------------------------------------------------------------------- command line
def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `at-dm-study` on a subparsers object (the lead hooks it under `dmat toy`)."""
    p = sub.add_parser("at-dm-study", help="standard vs AT (random, adversarial, ...) vs invariance "
                       "training of a toy denoiser on corrupted known-density data, beside baselines",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named setting (flags override it)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seeds", type=int_at_least(1), default=3, help="seeds per variant (default: 3)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (also set by DMAT_QUICK=1)")
    p.add_argument("--workers", type=int_at_least(1), default=1, help="jobs run at once (default: 1)")
    p.add_argument("--variants", nargs="+", default=None,
                   choices=list(ARMS) + list(BASELINES) + list(LEGACY_ARMS), metavar="ARM",
                   help=f"arms and baselines to run, of {', '.join(list(ARMS) + list(BASELINES))} "
                   "(default: all that apply)")
    p.add_argument("--fresh", action="store_true", help="retrain every model even if --out "
                   "already holds it with the same configuration")
    p.add_argument("--overwrite", action="store_true", help="replace a study of another configuration "
                   "in --out (refused without it)")
    p.add_argument("--cache", default=None, help="a folder of trained models and measured runs, read "
                   "and written, shared between studies (e.g. the settings of a sweep)")
    add_data_flags(p)
    add_at_flags(p)
    p.set_defaults(func=_main)


def add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and sampling (defaults from the preset, else ring8 clean)")
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
    g.add_argument("--sampler-sigma-min", type=float, help="the sampler grid's last level (0.002)")
    g.add_argument("--shrink-sigmas", type=float, nargs="+", help="baseline (a): the sigma_s it is "
                   "tuned on, 0 among them (0 0.01 0.02 0.05 0.1 0.2 0.3)")
    g.add_argument("--snapshot-fracs", type=float, nargs="+", help="baseline (b): checkpoints at these "
                   "fractions of the run (0.125 0.25 0.5 0.75; and the end)")


def add_at_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("AT (defaults: docs/science.md section 3)")
    a.add_argument("--lam", type=float, help="AT weight lambda (0.3)")
    a.add_argument("--r-max", type=float, help="budget at high noise, noise units (1.0)")
    a.add_argument("--exponent", type=float, help="budget shape exponent (2)")
    a.add_argument("--r-min", type=float, help="budget floor (0.125, see --min-units)")
    a.add_argument("--min-units", choices=["data", "noise"], help="floor in data units x "
                   "sigma_data, or in noise units (data)")
    a.add_argument("--fgsm-step", type=float, help="FGSM step / r(sigma) (1.0)")
    a.add_argument("--attack-target", choices=["gap", "residual"], help="FGSM objective (gap)")
    a.add_argument("--target", choices=["prediction", "true-noise"], help="equivariance target of "
                   "every AT arm: eps_th(x) + w (prediction, the paper) or eps + w")
    a.add_argument("--detach-clean", action="store_true", default=None,
                   help="stop the gradient through eps_th(x) in the AT target")
    a.add_argument("--weighting", choices=["edm", "eps"], help="per-sigma loss weight (edm)")


AT_FLAGS = ("lam", "r_max", "exponent", "r_min", "min_units", "fgsm_step", "attack_target", "target",
            "detach_clean", "weighting")
DATA_FLAGS = ("dist", "corruption", "p", "s", "q", "outlier", "n_train", "steps", "batch", "n_eval",
              "sampler_sigma_min", "shrink_sigmas", "snapshot_fracs")


def _main(a: argparse.Namespace) -> int:
    at = {k: getattr(a, k) for k in AT_FLAGS if getattr(a, k) is not None}
    over = {k: getattr(a, k) for k in DATA_FLAGS}
    run_study(a.out, a.preset, a.seeds, a.quick or os.environ.get("DMAT_QUICK") == "1",
              None if a.variants is None else tuple(a.variants), at, a.workers, reuse=not a.fresh, overwrite=a.overwrite, cache=a.cache, **over)
    return 0


def main(argv=None) -> int:
    """Stand-alone entry point: `python -m dmat_core.studies.at_dm_study --preset ...`."""
    parser = argparse.ArgumentParser(prog="at-dm-study")
    add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["at-dm-study", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
