"""Tables and figures of the AT-for-DMs study (:mod:`dmat_core.studies.at_dm_study`), and the
record of the runs made while tuning it; the cross-setting summary is
:mod:`~dmat_core.studies.at_dm_summary` (``python -m dmat_core.studies.at_dm_report summary DIR``).

Imports the study's settings and data from :mod:`~dmat_core.studies.at_dm_setup`, never the
study itself (the study imports this module).
"""
# Size: about 360 lines on purpose: one study's table, its attack tables, its figures and the tuning
# record all read the one results format, and change together when it does.
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .at_dm_setup import ARMS, BASELINES, migrate_results, project_2d, study_config, training_set
from .at_dm_summary import (KEY_MEASURES, PROPER, attack_damage, findings_markdown, findings_table, summary_table,  # noqa: F401
                            verdict_table)                                        # (re-exported)

# (key, header, format) of the main table, for mixtures of full-rank modes and for subspace data
COLUMNS_MODES = [("heldout_ll", "held-out LL", "+.3f"), ("off_mode_mass", "off-mode mass", ".4f"),
                 ("nll_gap", "NLL - H", "+.3f"), ("sw2_ratio", "SW2/floor", ".2f"), ("spread_ratio", "spread", ".3f"),
                 ("modes_covered", "modes", ".1f"), ("den_err@0.05", "D err @0.05", ".3f"),
                 ("ll_gap", "train - held-out LL", "+.3f"), ("nn_ratio_matched", "NN ratio @spread", ".3f"),
                 ("jac@0.05", "‖J‖_F @0.05", ".3f"), ("length", "path length", ".3f")]
COLUMNS_SUBSPACE = [("heldout_ll", "held-out LL", "+.3f"), ("residual_rms", "residual RMS", ".4f"),
                    ("off_manifold_share", "off-manifold share", ".3f"),
                    ("nll_smoothed", "NLL @σ=0.05", ".2f"), ("sw2_ratio", "SW2/floor", ".2f"),
                    ("den_err@0.05", "D err @0.05", ".3f"), ("mem_rate", "mem. rate", ".3f"),
                    ("jac@0.05", "‖J‖_F @0.05", ".3f"), ("length", "path length", ".3f")]


def summarize(runs: list[dict], variants) -> dict:
    """Mean, std (over seeds, ddof 1) and n of every numeric metric, per variant. A metric that only
    some seeds report (e.g. `heldout_ll_failed` of the Tweedie baseline, only where its tuned
    sigma_s > 0) is summarised over those seeds, with their count as n."""
    out = {}
    for v in variants:
        ms = [r["metrics"] for r in runs if r["variant"] == v]
        keys = list(dict.fromkeys(k for m in ms for k, x in m.items()
                                  if isinstance(x, (int, float)) and not isinstance(x, bool)))
        out[v] = {}
        for k in keys:
            vals = [float(m[k]) for m in ms if k in m]
            t = torch.tensor(vals, dtype=torch.float64)
            std = float(t.std()) if len(vals) > 1 else 0.0
            out[v][k] = {"mean": float(t.mean()), "std": std, "n": len(vals)}
    return out


def _columns(results: dict):
    ref = results["reference"]["true samples"]
    return COLUMNS_MODES if "off_mode_mass" in ref else COLUMNS_SUBSPACE


def _fmt(x, f):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, f)


def _reference_rows(results: dict) -> dict:
    """The reference rows, the true samples' with the truth's held-out log-likelihood (the exact
    log-density of the models' held-out points, averaged over seeds like the models' own)."""
    rows = dict(results["reference"])
    exact = [r["metrics"]["heldout_ll_exact"] for r in results.get("runs", [])
             if "heldout_ll_exact" in r.get("metrics", {}) and r["variant"] == "standard"]
    if exact and "true samples" in rows:
        rows["true samples"] = {**rows["true samples"], "heldout_ll": sum(exact) / len(exact)}
    return rows


def markdown_table(results: dict) -> str:
    """The study as markdown: main table (mean ± std over seeds), references, baselines, every AT
    arm against them, attack, cost (a results file of an earlier version is read as this one writes it)."""
    results = migrate_results(results)
    cfg, summ = results["config"], results["summary"]
    refs = _reference_rows(results)          # a column no model and no reference row has is left out
    cols = [c for c in _columns(results) if any(c[0] in m for m in [*summ.values(), *refs.values()])]
    n = max(m["n"] for s in summ.values() for m in s.values() if isinstance(m, dict) and "n" in m)
    corr = cfg["corruption"] + {"inlier": f" p={cfg['p']} s={cfg['s']}",
                                "offplane": f" p={cfg['p']} s={cfg['s']}",
                                "outlier": f" q={cfg['q']} ({cfg['outlier']})"}.get(cfg["corruption"], "")
    at = next((a for a in results["at"].values() if a["variant"] != "standard"), None)
    lines = [f"**{cfg['dist']}{cfg['dist_kw'] or ''}**, training set: {cfg['n_train']} points, "
             f"{corr}; {cfg['steps']} steps, batch {cfg['batch']}; {cfg['n_eval']} samples "
             f"(Heun {cfg['sampler_steps']}); mean ± std over {n} seeds; measured against the "
             "clean distribution.", ""]
    if at:
        lines += [f"AT: lambda={at['lam']}, budget r(sigma)=max({at['r_max']}·u^{at['exponent']}, "
                  f"floor {at['r_min']} ({at['min_units']} units)), FGSM step {at['fgsm_step']}·r "
                  f"on the {at['attack_target']}, detach_clean={at['detach_clean']}, "
                  f"weighting={at['weighting']}.", ""]
    lines += ["| model | " + " | ".join(h for _, h, _ in cols) + " |",
              "|---" * (len(cols) + 1) + "|"]
    for v, s in summ.items():
        cells = [f"{_fmt(s[k]['mean'], f)} ± {_fmt(s[k]['std'], f.lstrip('+'))}"
                 + (f" ({s[k]['n']} of {n} seeds)" if s[k].get("n", n) < n else "") if k in s else "n/a"
                 for k, _, f in cols]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    for name, m in refs.items():
        lines.append(f"| *{name}* | " + " | ".join(_fmt(m.get(k), f) if k in m else "" for k, _, f in cols) + " |")
    ref = results["reference"]["true samples"]
    keys = {k for k, _, _ in cols}
    notes = []
    if "mem_rate" in keys:
        notes.append(f"Memorization radius {ref.get('radius', float('nan')):.4f}; fresh true samples score a "
                     f"rate of {ref.get('mem_rate_fresh', float('nan')):.3f}.")
    if "ll_gap" in keys:
        notes.append("train - held-out LL: the model's log-likelihood of its training points minus that of the "
                     "held-out ones (memorization; the true density's own gap is its right value).")
    if "nn_ratio_matched" in keys:
        notes.append("NN ratio @spread: samples' median distance to the nearest training point over that of "
                     "fresh true samples pulled to the samples' spread (1: no copying).")
    if any(s[k].get("n", n) < n for s in summ.values() for k, _, _ in cols if k in s):
        notes.append("A cell marked (k of N seeds) is over the k seeds that measured it: e.g. the path length (the "
                     "sampler's states at sigma ≤ sigma_data) needs three of them, which a sampler stopped at a "
                     "large sigma_s does not have.")
    one_seed = [k for k in refs if k != "true samples" and "heldout_ll" in refs[k]]
    truth0 = ref.get("heldout_ll", next((r["metrics"]["heldout_ll_exact"] for r in results["runs"] if r["seed"] == 0
                                         and "heldout_ll_exact" in r.get("metrics", {})), None))
    if "heldout_ll" in keys and one_seed and truth0 is not None:
        notes.append("The rows in italics are measured at seed 0 alone, but for the held-out LL of *true samples*, "
                     "which is the truth's mean over the seeds, as the models' rows are; on seed 0's held-out points "
                     f"the truth scores {truth0:.3f}, the value to read the other italic rows against.")
    lines += ["", " ".join(notes + ["D err: E‖D - D*‖² / E‖D* - x‖² against the clean exact denoiser."])]
    if any(r.get("attack") for r in results["runs"]):
        lines += ["", *_attack_tables(cfg, results["runs"], list(summ))]
    base = [b for b in BASELINES if b in summ]
    if base:
        lines += ["", "Baselines, built on standard training alone (same seeds, data, latents and held-out points):"]
        for b in base:
            lines.append(f"- `{b}`: {BASELINES[b]}" + _chosen(results, b))
    verdict = verdict_table(results)
    if verdict:
        lines += ["", "Each AT arm against standard training and every baseline on the proper measures, paired "
                  "by seed: mean ± standard error of the difference of distances to the right value "
                  "(negative: the AT arm closer); *beats all*: every difference below 0 beyond 2 standard "
                  "errors.", "", verdict]
    lines += ["", "Cost per training example: passes of the network (relative: a backward pass counted "
              "as 2 forwards), and ms per step measured interleaved on one thread.",
              "", "| model | forward | backward | relative (counted) | ms/step | relative (measured) |",
              "|---|---|---|---|---|---|"]
    for v, c in results["cost"].items():
        if v in summ:
            lines.append(f"| {v} | {c['forward']} | {c['backward']} | {c['relative']:.2f} | "
                         f"{c['ms_per_step']:.1f} | {c.get('measured_relative', float('nan')):.2f} |")
    return "\n".join(lines)


def _attack_tables(cfg: dict, runs: list[dict], variants) -> list[str]:
    """The trajectory attack, per budget, against the same model and latents unattacked (budget 0,
    measured alike; else the model's own sampler): the damage to SW2 / floor and, for modes, the
    share of samples moved to another mode, mean ± std over seeds of the per-seed values. Raw
    off-mode mass is left out: narrower modes lower it without any robustness."""
    budgets = [b for b in cfg["attack_budgets"] if b > 0]
    out = [f"Trajectory attack at step {cfg['attack_step']} of Heun-{cfg['sampler_steps']} ({cfg['attack_iter']} "
           "PGD steps, box in noise units), against the same model and latents unattacked: mean ± std "
           "over seeds."]

    def value(m: dict, b: float, key: str):
        return attack_damage(m, b) if key == "sw2_ratio" else m.get(f"attack{b:g}_{key}")

    for what, key in (("SW2 / floor, attacked - unattacked", "sw2_ratio"), ("mode switches", "mode_switch")):
        if not any(f"attack{b:g}_{key}" in r["metrics"] for r in runs for b in budgets):
            continue
        out += ["", f"| {what} | " + " | ".join(f"budget {b:g}" for b in budgets) + " |",
                "|---" * (len(budgets) + 1) + "|"]
        for v in variants:
            cells = []
            for b in budgets:
                vals = [x for r in runs if r["variant"] == v and (x := value(r["metrics"], b, key)) is not None]
                t = torch.tensor(vals, dtype=torch.float64)
                sign = "+" if key == "sw2_ratio" else ""           # a difference; a share of samples
                cells.append("n/a" if not vals else f"{float(t.mean()):{sign}.3f} ± "
                             f"{float(t.std()) if len(vals) > 1 else 0.0:.3f}")
            out.append(f"| {v} | " + " | ".join(cells) + " |")
    return out


def _chosen(results: dict, baseline: str) -> str:
    """What a tuned baseline chose, seed by seed."""
    picks = [(r["seed"], r.get("baseline", {})) for r in results["runs"] if r["variant"] == baseline]
    if baseline == "tweedie-shrinkage":
        chosen = ", ".join(f"{b.get('sigma_s', float('nan')):g}" for _, b in picks)
        top = max(results["config"]["shrink_sigmas"])
        edge = sum(b.get("sigma_s") == top for _, b in picks)
        warn = (f"; **the grid's largest value in {edge} of {len(picks)} seeds: the best sigma_s may lie "
                "beyond it (extend --shrink-sigmas)**") if edge and top > 0 else ""
        return f"; sigma_s chosen per seed: {chosen}" + (f" (by {_by(picks)})" if picks else "") + warn
    if baseline == "early-stopping":
        chosen = ", ".join(str(b.get("step", "?")) for _, b in picks)
        return f"; step chosen per seed: {chosen} of {results['config']['steps']}" + (f" (by {_by(picks)})" if picks else "")
    return ""


def _by(picks) -> str:
    rows = picks[0][1].get("tuning") or picks[0][1].get("selection") or [{}]
    return rows[0].get("select_by", "?")


def _save(fig, path: Path):
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def plot_study(results: dict, runs: list[dict], cfg: dict, out: Path) -> None:
    """samples.png (training set, truth and each model of seed 0) and curves.png (Jacobian per
    sigma, training loss, and the attack curve when there is one)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dist, train, mask = training_set(cfg, 0)
    panels = [("training set", project_2d(train[:2000], dist), mask[:2000]),
              ("true samples", project_2d(dist.sample(2000, torch.Generator().manual_seed(7)), dist), None)]
    panels += [(r["variant"], r["view"], None) for r in runs if r["seed"] == 0]
    fig, ax = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.2), squeeze=False)
    lim = None
    labels = ("first coordinate on the manifold", "distance to the manifold")
    for a, (name, x, m) in zip(ax[0], panels):
        px, py = x[:, 0], x[:, 1]
        col = None if m is None else ["tab:red" if b else "tab:blue" for b in m.tolist()]
        a.scatter(px, py, s=1, alpha=0.4, c=col)
        a.set_title(name, fontsize=9)
        if dist.dim == 2:
            a.set_aspect("equal")
            lim = lim or (-3.5, 3.5)
            a.set_xlim(*lim), a.set_ylim(*lim)
        else:   # one scale for every panel: the 99.5% quantile of the distances shown
            top = 1.1 * max(float(np.quantile(v[:, 1], 0.995)) for _, v, _ in panels)
            a.set_ylim(0, top), a.set_xlim(-3.5, 3.5)
            a.set_xlabel(labels[0], fontsize=7), a.set_ylabel(labels[1], fontsize=7)
    fig.suptitle(f"{cfg.get('preset') or cfg['dist']}: samples of seed 0 (red: corrupted training points)",
                 fontsize=9)
    fig.tight_layout()
    _save(fig, out / "samples.png")
    plt.close(fig)

    attack = any(r.get("attack") for r in runs)
    fig, ax = plt.subplots(1, 3 if attack else 2, figsize=(13 if attack else 9, 3.6), squeeze=False)
    variants = list(results["summary"])
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        sig = [row["sigma"] for row in rs[0]["jacobian"]]
        jm = torch.tensor([[row["jac_fro"] for row in r["jacobian"]] for r in rs])
        ax[0, 0].errorbar(sig, jm.mean(0), yerr=jm.std(0) if len(rs) > 1 else None, marker="o",
                          label=v, capsize=2)
        h = rs[0]["history"]            # none for the ideal standard model (not trained)
        if h:
            ax[0, 1].plot([s["step"] for s in h], [s["loss_dsm"] for s in h], label=v, lw=1)
        if attack:
            # the same latents unattacked is the first budget (0): samples moved to another mode, or
            # the damage to SW2 / floor; not the raw off-mode mass, which narrower modes lower
            key = "mode_switch" if "mode_switch" in rs[0]["attack"][-1] else "sw2_ratio"
            b = [row["budget"] for row in rs[0]["attack"]]
            am = torch.tensor([[row[key] - (r["attack"][0][key] if key == "sw2_ratio" else 0.0)
                                for row in r["attack"]] for r in rs])
            ax[0, 2].errorbar(b, am.mean(0), yerr=am.std(0) if len(rs) > 1 else None, marker="o",
                              label=v, capsize=2)
            ax[0, 2].set_xlabel("attack budget (noise units)")
            ax[0, 2].set_ylabel("mode switches" if key == "mode_switch" else "SW2/floor - unattacked")
            ax[0, 2].set_title(f"trajectory attack at step {cfg['attack_step']}", fontsize=9)
    ex = [row["jac_fro_exact"] for row in runs[0]["jacobian"]]
    ax[0, 0].plot(sig, ex, "k--", label="exact (clean)")
    ax[0, 0].set_xscale("log"), ax[0, 0].set_yscale("log")
    ax[0, 0].set_xlabel("sigma"), ax[0, 0].set_ylabel("‖dD/dx‖_F")
    ax[0, 0].set_title("flow smoothness", fontsize=9)
    ax[0, 1].set_yscale("log"), ax[0, 1].set_xlabel("step"), ax[0, 1].set_ylabel("denoising loss")
    ax[0, 1].set_title("training (seed 0)", fontsize=9)
    for a in ax[0]:
        a.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "curves.png")
    plt.close(fig)


# ----------------------------------------------------------------------- tuning record
TUNED_CONFIG = ("steps", "batch", "width", "depth", "n_train")


def compact(results: dict) -> dict:
    """What a tuning record keeps of a study: configuration, AT settings, summary, timing."""
    return {k: results[k] for k in ("meta", "config", "at", "summary") if k in results}


def tuning_table(records: dict) -> str:
    """One markdown row per recorded study (name -> :func:`compact` results): what differs from
    the preset's defaults and from the default ATConfig, and the key measure of each arm."""
    from ..diffusion.losses import ATConfig
    default_at = ATConfig().as_dict()
    records = {name: migrate_results(r) for name, r in records.items()}   # arms renamed since
    arms = [a for a in ARMS if any(a in r["summary"] for r in records.values())]
    lines = ["| run | preset | seeds | changed | measure | " + " | ".join(arms) + " |",
             "|---" * (5 + len(arms)) + "|"]
    for name, r in records.items():
        cfg, preset = r["config"], r["config"].get("preset")
        base = study_config(preset, cfg.get("size") == "quick")
        changed = [f"{k}={cfg[k]}" for k in TUNED_CONFIG if cfg.get(k) != base.get(k)]
        ats = [a for a in r["at"].values() if a["variant"] != "standard"]
        if ats:
            changed += [f"{k}={v}" for k, v in ats[0].items()
                        if k != "variant" and v != default_at[k]]
        key = "off_mode_mass" if "off_mode_mass" in next(iter(r["summary"].values())) else "residual_rms"
        cells = []
        for a in arms:
            s = r["summary"].get(a, {}).get(key)
            cells.append("" if s is None else f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["n"] > 1 else ""))
        lines.append(f"| {name} | {preset} | {r['meta']['seeds']} | {', '.join(changed) or 'defaults'} "
                     f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def record_tuning(run_dirs, out: str | Path) -> str:
    """Copy the compact results of each study folder into `out`/<folder name>.json and write
    `out`/README.md with :func:`tuning_table` over everything recorded there."""
    import json

    from ..common.checkpoint import atomic_write_text
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for d in map(Path, run_dirs):
        r = json.loads((d / "results.json").read_text())
        atomic_write_text(out / f"{d.name}.json", json.dumps(compact(r), indent=1, default=float))
    records = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    table = tuning_table(records)
    atomic_write_text(out / "table.md", table + "\n")
    return table


if __name__ == "__main__":
    import json
    import sys

    from ..common.checkpoint import atomic_write_text
    usage = ("usage: python -m dmat_core.studies.at_dm_report summary results/at_dm   (summary.md, findings.md)\n"
             "       python -m dmat_core.studies.at_dm_report tables results/at_dm    (every study's table.md again)\n"
             "       python -m dmat_core.studies.at_dm_report tuning results/at_dm/tuning RUN_DIR...")
    if len(sys.argv) < 3:
        raise SystemExit(usage)
    cmd, out, *dirs = sys.argv[1:]
    if cmd == "tables":      # each study's table.md from its results.json, by the current code (nothing is run)
        from ..common.settings import read_json_file
        if not Path(out).is_dir():
            raise SystemExit(f"tables: {out} is not a folder of study results\n{usage}")
        studies = [(p, read_json_file(p, "study results")) for p in sorted(Path(out).rglob("results.json"))
                   if "cache" not in p.parts]          # every file read and checked before one table is written
        studies = [(p, r) for p, r in studies if {"summary", "reference", "runs"} <= set(r)]
        for path, r in studies:
            atomic_write_text(path.parent / "table.md", markdown_table(r) + "\n")
        print(f"wrote {len(studies)} table.md files under {out}")
    elif cmd == "summary":
        table = summary_table(out)
        atomic_write_text(Path(out) / "summary.md", table + "\n")
        atomic_write_text(Path(out) / "findings.md", findings_markdown(out))
        print(table)
    elif cmd == "tuning":
        print(record_tuning(dirs, out))
    else:
        raise SystemExit(f"unknown command {cmd!r}\n{usage}")
