"""The sweep of the AT-for-DMs study (`dmat toy at-dm-sweep`): does AT's effect survive the choice of
its budget floor, the amount of noise in the training data, and where the sampler stops?

One study (:func:`~dmat_core.studies.at_dm_study.run_study`, preset inlier-ring8: 90% of the training
points noisy) per setting of

    the budget floor r_min, in units of the data's std:   0, 0.03, 0.06, 0.125, 0.25
    the std s of the inlier noise:                        0, 0.1, 0.2
    the sampler's last level sigma_min:                   2e-2, 2e-3, 2e-4

each in its own folder `ROOT/s<s>/smin<sigma_min>/floor<r_min>` (results.json, table.md, figures),
with the same seeds everywhere (paired: the same data, latents and held-out points for every arm,
baseline and floor) and one cache `ROOT/cache` (:mod:`~dmat_core.studies.at_dm_cache`): standard
training and the baselines built on it are trained once per (s, seed) and measured once per
sigma_min, whatever the floor; no model is trained again for another sigma_min. Every folder is
checked before the first is run (a folder of other settings is refused, unless --overwrite).

Then `ROOT/sweep.json`, `ROOT/sweep.md` (per setting: the held-out log-likelihood and SW2 / floor of
every arm and baseline, mean ± standard error over seeds, and whether an AT arm beats standard
training and every baseline beyond two paired standard errors;
:func:`~dmat_core.studies.at_dm_summary.at_verdict`), `ROOT/sweep.png` (held-out log-likelihood
against the floor, one panel per noise std s, one line per AT arm, standard training and the
baselines as horizontal lines, the truth dashed) and `ROOT/sweep_sw2.png` (the same for SW2 / floor,
one panel per (s, sigma_min)).
The held-out likelihood is the model's (its PF-ODE density at 0.002), so it does not change with
the sampler's sigma_min; what the sampler draws does (SW2 / floor, the spread, the off-mode mass).

The default arms are random (the simplest explanation of an AT effect: noise, not an attack), the
paper's adversarial arm and fgsm-at-loss, beside standard training and the three baselines. The
invariance ablation and adversarial-true-noise run in every preset but not here (add them with
--variants): each AT arm costs the sweep 150 trainings, each step 3-4x a standard one.
The full sweep is 45 studies of 10 seeds:

    dmat toy at-dm-sweep --out results/at_dm/sweep --seeds 10 --workers 2
    dmat toy at-dm-sweep --out /tmp/sweep --quick           # its quick size: seconds to minutes
    dmat toy at-dm-sweep --out results/at_dm/sweep --collect   # sweep.json from the folders, nothing run
"""
from __future__ import annotations

# Size: about 390 lines on purpose: the sweep's grid, its runner, and the tables, findings and figures
# that read the one sweep.json it writes, which change together.
import argparse
import json
import os
from pathlib import Path
from typing import List, Literal

import numpy as np
from pydantic import Field, model_validator

from ..common.checkpoint import atomic_write_text
from ..common.outputs import check_out_dir, check_results_folder, start_work
from ..common.settings import Settings, int_at_least, read_json_file
from .at_dm_setup import ARMS, BASELINES, DEFAULT_ARMS, migrate_results
from .at_dm_study import run_study
from .at_dm_summary import AT_ARMS, LABELS, PROPER, arm_verdict, at_verdict, paired, paired_cell, run_values, target

FULL = dict(floors=[0.0, 0.03, 0.06, 0.125, 0.25], noise_stds=[0.0, 0.1, 0.2], sigma_mins=[2e-2, 2e-3, 2e-4],
            seeds=10, variants=[a for a in DEFAULT_ARMS if a not in ("invariance", "adversarial-true-noise")])
# quick: two floors, two sampler ends, tiny models; every part of the sweep runs, in about a minute
QUICK = dict(floors=[0.0, 0.125], noise_stds=[0.2], sigma_mins=[2e-2, 2e-3], seeds=2,
             variants=["standard", "adversarial", "tweedie-shrinkage", "early-stopping", "ideal-standard"])
QUICK_STUDY = dict(steps=20, n_eval=300, ll_n=16, tune_n=16, jac_n=8,
                   shrink_sigmas=[0.0, 0.05, 0.2], snapshot_fracs=[0.5])


class ATDMSweepConfig(Settings):
    """The typed settings of a sweep (:mod:`dmat_core.common.settings`)."""

    dist: Literal["ring8", "grid25"]
    floors: List[float] = Field(min_length=1)
    noise_stds: List[float] = Field(min_length=1)
    sigma_mins: List[float] = Field(min_length=1)
    seeds: int = Field(ge=2)                 # paired standard errors need two seeds at least
    variants: List[Literal[tuple(ARMS) + tuple(BASELINES)]] = Field(min_length=1)   # type: ignore[valid-type]
    quick: bool

    @model_validator(mode="after")
    def _ranges(self) -> "ATDMSweepConfig":
        for name, vals, ok, what in (("floors", self.floors, lambda v: v >= 0, ">= 0"),
                                     ("noise_stds", self.noise_stds, lambda v: v >= 0, ">= 0"),
                                     ("sigma_mins", self.sigma_mins, lambda v: 0 < v < 80, "in (0, 80)")):
            if not all(ok(v) and np.isfinite(v) for v in vals) or len(set(vals)) != len(vals):
                raise ValueError(f"{name} must be distinct numbers {what}, got {vals}")
        if "standard" not in self.variants:
            raise ValueError("variants must include standard (every verdict is paired against it)")
        return self


def sweep_config(quick: bool = False, **given) -> ATDMSweepConfig:
    """The sweep's settings: the full or quick defaults, then what is given (None: not given)."""
    d = {"dist": "ring8", **(QUICK if quick else FULL), "quick": quick}
    ATDMSweepConfig._known(given, "")
    d.update({k: v for k, v in given.items() if v is not None})
    return ATDMSweepConfig.from_dict(d)


def settings_grid(sc: ATDMSweepConfig) -> list[dict]:
    """Every setting of the sweep: its folder (relative to ROOT) and the study's arguments."""
    out = []
    for s in sc.noise_stds:
        for sm in sc.sigma_mins:
            for r in sc.floors:
                out.append({"s": s, "sigma_min": sm, "floor": r, "folder": f"s{s:g}/smin{sm:g}/floor{r:g}",
                            "study": {"preset": "inlier-ring8", "seeds": sc.seeds, "quick": sc.quick,
                                      "variants": tuple(sc.variants), "at": {"r_min": r}, "dist": sc.dist,
                                      "s": s, "sampler_sigma_min": sm, **(QUICK_STUDY if sc.quick else {})}})
    return out


def run_sweep(out: str | Path, sc: ATDMSweepConfig, workers: int = 1, cache: str | Path | None = None,
              overwrite: bool = False, reuse: bool = True, progress: bool = True) -> dict:
    """Check every study of the sweep, run them, and write sweep.json, sweep.md and sweep.png."""
    out = Path(out)
    cache = out / "cache" if cache is None else Path(cache)
    mine = {k: v for k, v in sc.to_dict().items() if k in ("dist", "quick")}

    def differences(prev: dict) -> list:
        was = prev["settings"]
        return [f"{k}: {was.get(k)!r} there, {v!r} now" for k, v in mine.items() if was.get(k) != v]

    check_results_folder(out, what="at-dm-sweep", differences=differences, overwrite=overwrite,
                         results="sweep.json")
    check_out_dir(cache, flag="--cache")
    grid = settings_grid(sc)
    for g in grid:                           # every study checked before the first one runs
        run_study(out / g["folder"], **g["study"], workers=workers, progress=False, reuse=reuse,
                  overwrite=overwrite, cache=cache, check_only=True)
    start_work()
    rows = []
    for i, g in enumerate(grid):
        if progress:
            print(f"[{i + 1}/{len(grid)}] {g['folder']}", flush=True)
        r = run_study(out / g["folder"], **g["study"], workers=workers, progress=False, reuse=reuse,
                      overwrite=overwrite, cache=cache)
        rows.append(_row(g, migrate_results(r)))
    return _write(out, sc, rows, progress)


def collect(out: str | Path, sc: ATDMSweepConfig, progress: bool = True) -> dict:
    """sweep.json, its tables and figures from the study folders as they stand, running nothing: for
    slices of the sweep that ran apart (in another clone, or on another machine), or a clone without
    the folders' samples.npz (which a rerun needs to reuse a folder; the sweep's are not kept in git).
    Every folder of the grid must hold a results.json of its own setting; all are read and checked
    before anything is written."""
    out = Path(out)
    grid = settings_grid(sc)
    rows = []
    for g in grid:
        path = out / g["folder"] / "results.json"
        r = migrate_results(read_json_file(path, "study results"))
        _check_setting(g, r, sc, path)
        rows.append(_row(g, r))
    return _write(out, sc, rows, progress)


def _check_setting(g: dict, r: dict, sc: ATDMSweepConfig, path: Path) -> None:
    """A ValueError naming the folder unless its results are of setting `g` of sweep `sc`."""
    cfg = r.get("config", {})
    want = {"dist": sc.dist, "s": g["s"], "sampler_sigma_min": g["sigma_min"],
            "size": "quick" if sc.quick else "full", "seeds": sc.seeds, "variants": sorted(sc.variants),
            "r_min": [g["floor"]]}
    got = {**{k: cfg.get(k) for k in ("dist", "s", "sampler_sigma_min", "size")},
           "seeds": r.get("meta", {}).get("seeds"), "variants": sorted(r.get("summary", {})),
           "r_min": sorted({a.get("r_min") for a in r.get("at", {}).values()})}   # one floor for every arm
    bad = [f"{k}: {got[k]!r} there, {v!r} in the sweep" for k, v in want.items() if got[k] != v]
    if bad:
        raise ValueError(f"{path} is not this sweep's setting {g['folder']} ({'; '.join(bad)})")


def _write(out: Path, sc: ATDMSweepConfig, rows: list, progress: bool) -> dict:
    result = {"settings": sc.to_dict(), "rows": rows}
    atomic_write_text(out / "sweep.json", json.dumps(result, indent=1, default=float) + "\n")
    render(out)
    if progress:
        print((out / "findings.md").read_text())
        print(f"wrote {out}/sweep.json, sweep.md, findings.md, sweep.png, sweep_sw2.png and {len(rows)} study folders")
    return result


def _row(g: dict, r: dict) -> dict:
    """One setting of the sweep: per proper measure and arm, mean, standard error and n over seeds,
    the right value, and the paired verdict of the best AT arm."""
    row = {k: g[k] for k in ("s", "sigma_min", "floor", "folder")}
    for key, label, right in PROPER:
        stats = {}
        for a in r["summary"]:
            v = np.array(list(run_values(r, a, key).values()))
            if len(v):
                stats[a] = [float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0, len(v)]
        if not stats:
            continue
        v = at_verdict(r, key, right)
        row[key] = {"right": target(r, key, right), "arms": stats,
                    "verdict": None if v is None else {"arm": v[0], "works": v[2], "paired": v[1]}}
        row[key]["vs_standard"] = {a: paired(r, a, "standard", key, right) for a in AT_ARMS if a in stats}
    return row


def sweep_table(result: dict, key: str = "heldout_ll") -> str:
    """Markdown: per setting, one proper measure (`heldout_ll` or `sw2_ratio`) of every arm and
    baseline (mean ± standard error over seeds) and whether the AT arm closest to its right value
    beats standard training and every baseline on it. Empty where no setting measured it."""
    rows = result["rows"]
    if not any(key in r for r in rows):
        return ""
    arms = [a for a in ("standard", *AT_ARMS, *BASELINES) if any(a in r.get(key, {}).get("arms", {}) for r in rows)]
    label = dict((k, lab) for k, lab, _ in PROPER)[key]
    right = {"heldout_ll": "the truth's on the same points (the model's PF-ODE density at 0.002: the same "
                           "for every sampler sigma_min)", "sw2_ratio": "low; 1 = the noise floor"}[key]
    lines = [f"**{label}**, mean ± standard error over {result['settings']['seeds']} seeds (right value: {right}); "
             "last column: does the AT arm closest to it beat standard training and every baseline beyond 2 "
             "paired standard errors?", "",
             "| s | sigma_min | floor | right | " + " | ".join(LABELS.get(a, a) for a in arms) + " | AT works? |",
             "|---" * (5 + len(arms)) + "|"]
    for r in rows:
        m = r.get(key, {})
        cells = [f"{m['arms'][a][0]:.3f} ± {m['arms'][a][1]:.3f}" if a in m.get("arms", {}) else "" for a in arms]
        v = m.get("verdict")
        call = "" if v is None else (f"yes ({v['arm']})" if v["works"] else f"no (best: {v['arm']})")
        lines.append(f"| {r['s']:g} | {r['sigma_min']:g} | {r['floor']:g} | {m.get('right', float('nan')):.3f} | "
                     + " | ".join(cells) + f" | {call} |")
    return "\n".join(lines)


def sweep_findings(root: str | Path, result: dict) -> str:
    """Markdown, from the study folders under `root`: every AT arm at every setting against standard
    training and the hardest baseline, paired by seed (:func:`~dmat_core.studies.at_dm_summary.arm_verdict`).
    First the held-out log-likelihood per (s, floor) (the model's: read at the first sigma_min), then
    SW2 / floor per (s, sigma_min, floor), one column per AT arm: its difference with the hardest
    baseline, and "beats all" where it is also closer than standard training, beyond 2 standard errors."""
    root = Path(root)
    studies = {r["folder"]: migrate_results(json.loads((root / r["folder"] / "results.json").read_text()))
               for r in result["rows"]}
    arms = [a for a in AT_ARMS if a in result["settings"]["variants"]]
    first = result["rows"][0]["sigma_min"]
    out = ["Held-out log-likelihood (higher is better; the truth's on the same points beside it), each AT "
           "arm against standard training and the hardest baseline, paired by seed:", "",
           "| s | floor | truth | AT arm | arm: mean ± s.e. | vs standard | vs the hardest baseline | beats all |",
           "|---" * 8 + "|"]
    for row in result["rows"]:
        if row["sigma_min"] != first or "heldout_ll" not in row:
            continue
        r = studies[row["folder"]]
        for a in arms:
            v = arm_verdict(r, a, "heldout_ll", "exact")
            if v is None:
                continue
            hard = f"{LABELS.get(v['hardest'], v['hardest'])}: {paired_cell(v['vs_hardest'])}" if v["hardest"] else ""
            out.append(f"| {row['s']:g} | {row['floor']:g} | {row['heldout_ll']['right']:.3f} | {a} | "
                       f"{v['mean']:.3f} ± {v['se']:.3f} | {paired_cell(v['vs_standard'])} | {hard} | "
                       f"{'**yes**' if v['beats'] else 'no'} |")
    out += ["", "SW2 / floor of the samples (lower is better; 1 = the noise floor), which does depend on the "
            "sampler's sigma_min: each AT arm's paired difference with the hardest baseline:", "",
            "| s | sigma_min | floor | " + " | ".join(arms) + " |", "|---" * (3 + len(arms)) + "|"]
    for row in result["rows"]:
        r = studies[row["folder"]]
        cells = []
        for a in arms:
            v = arm_verdict(r, a, "sw2_ratio", "low")
            cells.append("" if v is None else (paired_cell(v["vs_hardest"]) + (" **beats all**" if v["beats"] else "")))
        out.append(f"| {row['s']:g} | {row['sigma_min']:g} | {row['floor']:g} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def render(root: str | Path) -> dict:
    """Write sweep.md, findings.md, sweep.png and sweep_sw2.png again from `root`/sweep.json and the
    study folders (the current code's tables and figures; nothing is run)."""
    root = Path(root)
    result = read_json_file(root / "sweep.json", "sweep results")
    table = sweep_table(result, "heldout_ll") + "\n\n" + sweep_table(result, "sw2_ratio")
    found = sweep_findings(root, result)        # reads every study folder before anything is written
    atomic_write_text(root / "sweep.md", table + "\n")
    atomic_write_text(root / "findings.md", found + "\n")
    plot_sweep(result, root / "sweep.png", "heldout_ll")
    plot_sweep(result, root / "sweep_sw2.png", "sw2_ratio")
    return result


def plot_sweep(result: dict, path: Path, key: str = "heldout_ll") -> None:
    """A proper measure (`heldout_ll`, or `sw2_ratio`) against the floor: one panel per (s, sigma_min)
    (per s for the held-out likelihood, which the sampler does not change),
    a line per AT arm (error bars: standard errors over seeds), standard training and the baselines
    as horizontal lines (they do not depend on the floor), the right value dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["rows"]
    if not any(key in r for r in rows):
        return
    if key == "heldout_ll":      # the model's density: the same at every sampler sigma_min, one panel per s
        first = rows[0]["sigma_min"]
        rows = [r for r in rows if r["sigma_min"] == first]
    panels = list(dict.fromkeys((r["s"], r["sigma_min"]) for r in rows))
    s_vals = list(dict.fromkeys(p[0] for p in panels))
    sm_vals = list(dict.fromkeys(p[1] for p in panels))
    fig, ax = plt.subplots(len(s_vals), len(sm_vals), figsize=(4.2 * len(sm_vals), 3.4 * len(s_vals)),
                           squeeze=False, sharey="row")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"standard": ("k", "-"), "tweedie-shrinkage": ("tab:gray", "--"), "early-stopping": ("tab:gray", ":"),
              "ideal-standard": ("tab:gray", "-.")}
    for (s, sm) in panels:
        a = ax[s_vals.index(s), sm_vals.index(sm)]
        sel = sorted((r for r in rows if r["s"] == s and r["sigma_min"] == sm and key in r), key=lambda r: r["floor"])
        if not sel:
            continue
        floors = [r["floor"] for r in sel]
        for i, arm in enumerate(x for x in AT_ARMS if any(x in r[key]["arms"] for r in sel)):
            m = [r[key]["arms"].get(arm, [np.nan, np.nan])[:2] for r in sel]
            a.errorbar(floors, [v[0] for v in m], yerr=[v[1] for v in m], marker="o", capsize=2,
                       color=colors[i % len(colors)], label=arm)
        for arm, (c, ls) in styles.items():
            vals = [r[key]["arms"][arm][0] for r in sel if arm in r[key]["arms"]]
            if vals:
                a.axhline(float(np.mean(vals)), color=c, ls=ls, lw=1.2, label=LABELS.get(arm, arm))
        if key == "heldout_ll":      # the truth's own value; for SW2 / floor, 1: as close as a second true set
            a.axhline(float(np.mean([r[key]["right"] for r in sel])), color="tab:green", ls="--", lw=1, label="truth")
        else:
            a.axhline(1.0, color="tab:green", ls="--", lw=1, label="noise floor (a second true sample set)")
        a.set_title(f"noise s = {s:g}" + (", any sampler sigma_min" if key == "heldout_ll" else
                                          f", sampler sigma_min = {sm:g}"), fontsize=9)
        a.set_xlabel("AT budget floor r_min (x data std)")
        a.set_ylabel(dict((k, lab) for k, lab, _ in PROPER)[key], fontsize=8)
    ax[0, 0].legend(fontsize=6)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    plt.close(fig)


# ----------------------------------------------------------------------- command line
def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `at-dm-sweep` on a subparsers object (hooked under `dmat toy`)."""
    p = sub.add_parser("at-dm-sweep", help="the AT-for-DMs study over budget floor x noise std x sampler "
                       "sigma_min, paired seeds, baselines as horizontal lines",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the sweep's root folder")
    p.add_argument("--quick", action="store_true", help="the quick size (also set by DMAT_QUICK=1)")
    p.add_argument("--seeds", type=int_at_least(2), default=None, help="paired seeds (default: 10; quick 2)")
    p.add_argument("--workers", type=int_at_least(1), default=1, help="jobs run at once (default: 1)")
    p.add_argument("--dist", choices=["ring8", "grid25"], default=None, help="the data (default: ring8)")
    p.add_argument("--floors", type=float, nargs="+", help="budget floors r_min, x data std "
                   "(default: 0 0.03 0.06 0.125 0.25)")
    p.add_argument("--noise-stds", type=float, nargs="+", help="inlier noise std s (default: 0 0.1 0.2)")
    p.add_argument("--sigma-mins", type=float, nargs="+", help="sampler sigma_min (default: 0.02 0.002 0.0002)")
    p.add_argument("--variants", nargs="+", choices=list(ARMS) + list(BASELINES), metavar="ARM",
                   help="arms and baselines (default: standard, random, adversarial, fgsm-at-loss and the three "
                   "baselines)")
    p.add_argument("--cache", default=None, help="the shared cache of models and runs (default: OUT/cache)")
    p.add_argument("--fresh", action="store_true", help="recompute what the study folders hold (the cache "
                   "is still read)")
    p.add_argument("--overwrite", action="store_true", help="replace study folders of other settings")
    p.add_argument("--collect", action="store_true", help="run nothing: write sweep.json, its tables and "
                   "figures from the study folders OUT already holds, one per setting of the grid")
    p.set_defaults(func=_main)


def _main(a: argparse.Namespace) -> int:
    sc = sweep_config(a.quick or os.environ.get("DMAT_QUICK") == "1", seeds=a.seeds, dist=a.dist,
                      floors=a.floors, noise_stds=a.noise_stds, sigma_mins=a.sigma_mins, variants=a.variants)
    if a.collect:             # a missing, unreadable or foreign study folder: one line, nothing written
        run_only = [f for f, on in (("--workers", a.workers != 1), ("--cache", a.cache is not None),
                                    ("--fresh", a.fresh), ("--overwrite", a.overwrite)) if on]
        if run_only:
            raise ValueError(f"--collect runs nothing, so {', '.join(run_only)} would have no effect; drop "
                             f"{'it' if len(run_only) == 1 else 'them'}, or drop --collect to run the sweep")
        collect(a.out, sc)
        return 0
    run_sweep(a.out, sc, a.workers, a.cache, overwrite=a.overwrite, reuse=not a.fresh)
    return 0


__all__ = ["ATDMSweepConfig", "sweep_config", "settings_grid", "run_sweep", "collect", "sweep_table", "sweep_findings",
           "render", "plot_sweep"]


if __name__ == "__main__":
    # python -m dmat_core.studies.at_dm_sweep ROOT: tables and figures again from ROOT/sweep.json
    import sys
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m dmat_core.studies.at_dm_sweep ROOT (a folder with sweep.json)")
    try:
        render(sys.argv[1])
    except (OSError, ValueError, KeyError) as e:     # a missing or unreadable sweep.json or study folder
        raise SystemExit(f"at_dm_sweep: {type(e).__name__}: {e}") from None
