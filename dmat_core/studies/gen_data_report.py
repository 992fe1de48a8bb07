"""Statistics, tables and figures of the generated-data study in any dimension
(:mod:`~dmat_core.studies.gen_data_study`).

* :func:`analyse`: per (d, n) the mean robust accuracy of every data source, its paired
  difference from real points only (same seed, same real points; an ordering is called only
  beyond two standard errors), AT-trained minus standard DMs, and the Spearman rank correlation
  of each quality measure with the gain over real only, over every (generator, seed) of the cell,
  with a bootstrap interval over seeds; pooled per d and over all cells (the mean within-cell
  correlation, the same seeds resampled in every cell);
* :func:`markdown_table` (table.md), :func:`plot_study` (figure.png);
* :func:`summary_markdown` / :func:`write_summary`: results/gen_data/summary.md, the README block,
  from the results.json of every preset (`python -m dmat_core.studies.gen_data_report results/gen_data`).
"""
# Size: one module of about 340 lines on purpose: the statistics, the three tables and the figure
# of one experiment read the same analysis dict.
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from ..common.checkpoint import atomic_write_text
from .gen_data_setup import COLOURS, DM_GENERATORS, MLP_GENERATORS, NAMES, PRESETS, QUALITY

SAME_DATA = ("mle", "shrinkage", "dm-standard", "dm-at", "dm-standard-noisy", "dm-at-noisy", "mlp-standard", "mlp-at")
SHORT = {"mle": "MLE", "shrinkage": "LW", "dm-standard": "DM std", "dm-at": "DM AT", "dm-standard-noisy": "DM std noisy",
         "dm-at-noisy": "DM AT noisy", "mlp-standard": "MLP DM std", "mlp-at": "MLP DM AT"}
SAME_TEXT = "the MLE and Ledoit-Wolf Gaussians, the four affine DMs and, where d <= 8, the two MLP DMs"
# the generators a rank correlation runs over: all of them, or those that saw only the real points
SUBSETS = {"all": None, "same-points": SAME_DATA}


# ----------------------------------------------------------------------- statistics
def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho along the last axis (average ranks for ties; inf ranks last; NaN if constant)."""
    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1), np.nan)


def _mse(a: np.ndarray) -> dict:
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.inf
    return {"mean": float(a.mean()), "se": se, "n": int(len(a))}


def call(mean: float, se: float) -> str:
    """'better' / 'worse' beyond two standard errors of a paired difference, else 'no difference shown'."""
    return "no difference shown" if not abs(mean) > 2 * se else ("better" if mean > 0 else "worse")


def _interval(boot: np.ndarray) -> tuple[float, float]:
    ok = boot[np.isfinite(boot)]
    return (math.nan, math.nan) if len(ok) < 10 else tuple(float(v) for v in np.percentile(ok, [2.5, 97.5]))


def _reading(rho: float, lo: float, hi: float, better: int) -> str:
    """Whether a measure predicts the gain: the interval excludes 0 on the side a better generator
    (lower divergence, higher likelihood) would put it."""
    if not (lo > 0 or hi < 0):
        return "no relation shown"
    return "predicts" if (lo > 0) == (better > 0) else "predicts the opposite"


def analyse(rows: list[dict], cfg: dict, worlds: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every statistic of the tables, from the rows of results.json (module docstring). A generator
    missing for some seeds of a cell (the DMs in high d) is compared on the seeds it has; the rank
    correlations use the seeds that have every generator, and for each measure the generators that
    have it (the MLP DMs have no KL(q‖p) or W2). Cells share no random draw (the real points depend
    on d and n), so their bootstrap replicates combine as independent."""
    gens = [g for g in cfg["generators"] if any(r["generator"] == g for r in rows)]
    by = {(r["d"], r["n"], r["generator"], r["seed"]): r for r in rows}
    rng, cells, pooled = np.random.default_rng(seed), [], {(k, m): [] for k in SUBSETS for m in QUALITY}
    for d, n in sorted({(r["d"], r["n"]) for r in rows}):
        have = {g: sorted(s for (d2, n2, g2, s) in by if (d2, n2, g2) == (d, n, g)) for g in gens}
        gs = [g for g in gens if have[g]]
        acc = {g: np.array([by[(d, n, g, s)]["robust_acc_exact"] for s in have[g]]) for g in gs}
        base = dict(zip(have["none"], acc["none"]))
        cell = {"d": d, "n": n, "optimum": worlds[str(d)]["best_linear_robust_acc"],
                "acc": {g: _mse(v) for g, v in acc.items()}, "gain": {}, "rho": {}, "dm": {}, "mlp": {}}
        for g in gs[1:]:
            s = _mse(acc[g] - np.array([base[k] for k in have[g]]))
            cell["gain"][g] = {**s, "call": call(s["mean"], s["se"])}
        complete = sorted(set.intersection(*(set(have[g]) for g in gs)))
        boots = rng.integers(0, len(complete), size=(n_boot, len(complete)))
        for subset, members in SUBSETS.items():
            cell["rho"][subset] = {}
            for m, (_, better) in QUALITY.items():
                sub = [g for g in gs[1:] if (members is None or g in members)
                       and all(by[(d, n, g, s)].get(m) is not None for s in complete)]
                gain = np.array([[by[(d, n, g, s)]["robust_acc_exact"] - base[s] for g in sub] for s in complete])
                q = np.array([[by[(d, n, g, s)][m] for g in sub] for s in complete], dtype=float)
                rho = float(spearman(q.reshape(-1), gain.reshape(-1)))
                boot = spearman(q[boots].reshape(n_boot, -1), gain[boots].reshape(n_boot, -1))
                lo, hi = _interval(boot)
                cell["rho"][subset][m] = {"rho": rho, "lo": lo, "hi": hi, "reading": _reading(rho, lo, hi, better),
                                          "seeds": len(complete), "generators": len(sub)}
                pooled[(subset, m)].append((d, rho, boot))
        for data in ("clean", "noisy"):
            std, at = [g for g, v in DM_GENERATORS.items() if v[0] == data]
            if std in acc and at in acc:
                both = sorted(set(have[std]) & set(have[at]))
                diff = _mse(np.array([by[(d, n, at, s)]["robust_acc_exact"] - by[(d, n, std, s)]["robust_acc_exact"]
                                      for s in both]))
                w2 = _mse(np.array([by[(d, n, at, s)]["w2"] - by[(d, n, std, s)]["w2"] for s in both]))
                cell["dm"][data] = {**diff, "call": call(diff["mean"], diff["se"]),
                                    "w2_diff": {**w2, "call": call(-w2["mean"], w2["se"])},
                                    **{f"{k}_{v}": float(np.mean([by[(d, n, g, s)][k] for s in both]))
                                       for g, v in ((std, "standard"), (at, "at"))
                                       for k in ("w2", "var_ratio", "fit_w2", "kl_pq")}}
        std, at = list(MLP_GENERATORS)
        if std in acc and at in acc:
            both = sorted(set(have[std]) & set(have[at]))
            diff = _mse(np.array([by[(d, n, at, s)]["robust_acc_exact"] - by[(d, n, std, s)]["robust_acc_exact"]
                                  for s in both]))
            kl = _mse(np.array([by[(d, n, at, s)]["kl_pq"] - by[(d, n, std, s)]["kl_pq"] for s in both]))
            cell["mlp"] = {**diff, "call": call(diff["mean"], diff["se"]),
                           "kl_diff": {**kl, "call": call(-kl["mean"], kl["se"])},
                           **{f"{k}_{v}": float(np.mean([by[(d, n, g, s)][k] for s in both]))
                              for g, v in ((std, "standard"), (at, "at")) for k in ("kl_pq", "kl_pq_se", "var_ratio")}}
        cells.append(cell)
    summary = {k: {} for k in SUBSETS}
    for (subset, m), vals in pooled.items():
        out = {}
        for key in ["all"] + sorted({d for d, _, _ in vals}):
            sel = [(r, b) for d, r, b in vals if key == "all" or d == key]
            rho = float(np.nanmean([r for r, _ in sel]))
            lo, hi = _interval(np.nanmean(np.stack([b for _, b in sel]), 0))
            out[str(key)] = {"rho": rho, "lo": lo, "hi": hi, "reading": _reading(rho, lo, hi, QUALITY[m][1])}
        summary[subset][m] = out
    return {"cells": cells, "rho_pooled": summary, "seeds": max(len(v) for v in have.values()) if cells else 0,
            "n_boot": n_boot}


# ----------------------------------------------------------------------- tables
def _world_line(results: dict) -> str:
    cfg, meta = results["config"], results["meta"]
    w = ("`Sigma = sqrt(d) I`, `mu` of entries +-1" if cfg["world"] == "isotropic" else
         "`Sigma = sqrt(d) (I + 16 U U')`, min(8, d/4) noisy directions, `mu` of entries +-1")
    eps = f"eps = {cfg['eps']}" + (" sqrt(d)" if cfg["eps_scaling"] == "sqrt-d" else "")
    return (f"**{cfg['preset']}**: {w}, threat {cfg['norm']} {eps}. Classifier: linear, PGD-AT with the "
            f"inner max in closed form, {cfg['clf_steps']} Adam steps, batch {cfg['clf_batch']}, "
            f"{cfg['unsup_fraction']:.0%} of each batch generated (a pool of {cfg['n_gen']} per class); "
            f"affine DMs, one per class, started at N(sample mean, sd^2 I): {cfg['dm_knots']} knots, "
            f"{cfg['dm_steps']} Adam steps ({cfg['dm_steps_high_d']} steps"
            + (f" and only the first {cfg['dm_seeds_high_d']} seeds" if cfg["dm_seeds_high_d"] < meta["seeds"] else "")
            + f" for d > {cfg['dm_high_d']}), AT = adversarial, lambda {cfg['dm_lam']}, "
            f"Heun {cfg['sampler_steps']} steps, its exact law; noisy data: {cfg['noise_p']:.0%} of the points + "
            f"N(0, s^2 I), s = {cfg['noise_s']:g} x the class std per coordinate; MLP DMs (d <= {cfg['mlp_max_d']}), "
            f"one per class, {cfg['mlp_width']} wide x {cfg['mlp_depth']} blocks, {cfg['mlp_steps']} Adam steps on "
            f"the clean points, {cfg['n_gen']} Heun samples per class, KL(p‖q) from the exact likelihood of "
            f"{cfg['ll_n']} held-out true points per class. {meta['seeds']} seeds.")


def _f(v: float, f: str = ".3f") -> str:
    return "inf" if v == math.inf else "-inf" if v == -math.inf else "nan" if v != v else f"{v:{f}}"


def _gain_cell(s: dict) -> str:
    txt = f"{s['mean']:+.3f} ± {s['se']:.3f}"
    return f"**{txt}**" if s["call"] == "better" else f"_{txt}_" if s["call"] == "worse" else txt


def _rho_cell(r: dict) -> str:
    txt = f"{r['rho']:+.2f} [{_f(r['lo'], '+.2f')}, {_f(r['hi'], '+.2f')}]"
    return f"**{txt}**" if r["reading"] == "predicts" else f"_{txt}_" if r["reading"] == "predicts the opposite" else txt


def markdown_table(results: dict) -> str:
    """table.md: robust accuracy, gains, rank correlations, AT vs standard DMs (see analyse)."""
    an, cells = results["analysis"], results["analysis"]["cells"]
    gens = [g for g in results["config"]["generators"] if any(g in c["acc"] for c in cells)]  # some only in low d
    others = [g for g in gens if g != "none"]
    lines = [_world_line(results), "",
             "Robust accuracy (exact), mean ± standard error over seeds, beside the best linear robust accuracy:", "",
             "| d | n | optimum | " + " | ".join(NAMES[g] for g in gens) + " |",
             "|---|---|---|" + "---|" * len(gens)]
    for c in cells:
        lines.append(f"| {c['d']} | {c['n']} | {c['optimum']:.3f} | "
                     + " | ".join(f"{c['acc'][g]['mean']:.3f} ± {c['acc'][g]['se']:.3f}" if g in c["acc"] else "–"
                                  for g in gens) + " |")
    lines += ["", "Gain over real only, paired by seed (**bold**: better beyond 2 standard errors, _italic_: "
              "worse; otherwise no difference shown):", "",
              "| d | n | " + " | ".join(NAMES[g] for g in others) + " |", "|---|---|" + "---|" * len(others)]
    for c in cells:
        lines.append(f"| {c['d']} | {c['n']} | " + " | ".join(_gain_cell(c["gain"][g]) if g in c["gain"] else "–"
                                                                  for g in others) + " |")
    for subset, what in (("all", "every generator"), ("same-points", "the generators that saw only the real "
                                                              f"points ({SAME_TEXT})")):
        c0 = cells[0]["rho"][subset]["kl_pq"]
        lines += ["", f"Spearman rank correlation of each quality measure with the gain over real only, over "
                  f"{what} x the seeds of a cell ({c0['generators']} x {c0['seeds']} in the first), [95% bootstrap "
                  f"interval over seeds, {an['n_boot']} resamples]. **Bold**: the measure predicts the gain (the "
                  "interval excludes 0 on the side of a better generator: negative for the divergences and the "
                  "angle, positive for the log-likelihood); _italic_: the opposite. E_p log q = -H(p) - KL(p‖q), "
                  "so its column mirrors KL(p‖q). The MLP DMs (d <= 8) enter KL(p‖q), the angle and E_p log q (estimated "
                  "from the exact likelihood of held-out points), not KL(q‖p) or W2. Last rows: the mean of the "
                  "within-cell correlations.", "",
                  "| d | n | " + " | ".join(v[0] for v in QUALITY.values()) + " |", "|---|---|" + "---|" * len(QUALITY)]
        for c in cells:
            lines.append(f"| {c['d']} | {c['n']} | " + " | ".join(_rho_cell(c["rho"][subset][m]) for m in QUALITY)
                         + " |")
        pooled = an["rho_pooled"][subset]
        for key in pooled["kl_pq"]:
            label = "all cells" if key == "all" else f"d = {key}"
            lines.append(f"| {label} | all | " + " | ".join(_rho_cell(pooled[m][key]) for m in QUALITY) + " |")
    if any(c["dm"] for c in cells):
        lines += ["", "AT-trained minus standard DM as the data source (robust accuracy, paired by seed), and "
                  "the two DMs' W2 to the truth, their variance ratio tr(S_q)/tr(Sigma) and their W2 to the "
                  "MLE Gaussian of their own training points (0: training reached the affine optimum):", "",
                  "| d | n | data | AT - standard | call | W2 standard / AT | variance ratio standard / AT "
                  "| W2 to own MLE standard / AT |", "|---|---|---|---|---|---|---|---|"]
        for c in cells:
            for data, s in c["dm"].items():
                lines.append(f"| {c['d']} | {c['n']} | {data} | {s['mean']:+.4f} ± {s['se']:.4f} | {s['call']} | "
                             f"{s['w2_standard']:.2f} / {s['w2_at']:.2f} | {s['var_ratio_standard']:.2f} / "
                             f"{s['var_ratio_at']:.2f} | {s['fit_w2_standard']:.2f} / {s['fit_w2_at']:.2f} |")
    if any(c["mlp"] for c in cells):
        lines += ["", "MLP DMs (d <= 8): AT-trained minus standard as the data source (robust accuracy, paired by "
                  "seed), and their KL(p‖q) to the truth estimated from the exact model likelihood of held-out true "
                  "points (mean over seeds ± the mean per-seed standard error of the estimate; lower is better), "
                  "AT minus standard, and their variance ratio tr(S_q)/tr(Sigma) from the samples:", "",
                  "| d | n | AT - standard | call | KL(p‖q) standard / AT | AT - standard KL(p‖q) | call "
                  "| variance ratio standard / AT |", "|---|---|---|---|---|---|---|---|"]
        for c in cells:
            s = c["mlp"]
            if s:
                k = s["kl_diff"]
                kcall = {"better": "AT lower", "worse": "AT higher"}.get(k["call"], k["call"])
                lines.append(f"| {c['d']} | {c['n']} | {s['mean']:+.4f} ± {s['se']:.4f} | {s['call']} | "
                             f"{s['kl_pq_standard']:.3f} ± {s['kl_pq_se_standard']:.3f} / {s['kl_pq_at']:.3f} ± "
                             f"{s['kl_pq_se_at']:.3f} | {k['mean']:+.3f} ± {k['se']:.3f} | {kcall} | "
                             f"{s['var_ratio_standard']:.2f} / {s['var_ratio_at']:.2f} |")
    lines += ["", _timing(results)]
    return "\n".join(lines)


def _timing(results: dict) -> str:
    """What the file cost: training its DMs (whenever that ran; their laws are cached) and the last run."""
    m, rows = results["meta"], results["rows"]
    dms = [r for r in rows if "train_seconds" in r]
    mlp = sum(r["train_seconds"] for r in dms if r["generator"] in MLP_GENERATORS)
    return (f"Training the {2 * len(dms)} diffusion models of this file (two per DM generator, seed and cell) took "
            f"{sum(r['train_seconds'] for r in dms) / 60:.0f} worker-minutes ({mlp / 60:.0f} of them the MLP DMs, "
            "with their samples and likelihoods), on a 2-core machine shared with other jobs, partly in earlier "
            f"runs whose trained laws are kept under cache/; the last run took {m['seconds'] / 60:.1f} min of wall "
            f"time with {m['workers']} worker(s), and training the classifiers of every cell took "
            f"{m.get('classifier_seconds', 0) / 60:.1f} worker-minutes.")


# ----------------------------------------------------------------------- figure
def plot_study(results: dict, path: Path) -> None:
    """figure.png: per d, robust accuracy vs n per data source with the optimum as a line (top) and
    the rank correlation of each quality measure with the gain vs n (bottom)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cells = results["analysis"]["cells"]
    dims = sorted({c["d"] for c in cells})
    fig, ax = plt.subplots(2, len(dims), figsize=(3.6 * len(dims) + 3.2, 7.0), squeeze=False)
    for j, d in enumerate(dims):
        cs = [c for c in cells if c["d"] == d]
        ns = [c["n"] for c in cs]
        a = ax[0, j]
        a.axhline(cs[0]["optimum"], color="k", ls="--", lw=1, label="best linear robust")
        for g in cs[0]["acc"]:
            a.errorbar(ns, [c["acc"][g]["mean"] for c in cs], [2 * c["acc"][g]["se"] for c in cs], color=COLOURS[g],
                       marker="o", ms=3, lw=1.2 if g in ("none", "truth") else 0.9, label=NAMES[g],
                       ls="-" if g in ("none", "truth") or g.startswith("dm") else ":")
        a.set_xscale("log", base=2)
        a.set_title(f"d = {d}", fontsize=9)
        a.set_xlabel("real points per class")
        b = ax[1, j]
        for k, m in enumerate(QUALITY):
            for subset, ls, mk in (("all", "-", "s"), ("same-points", "--", "^")):
                r = np.array([[c["rho"][subset][m][key] for key in ("rho", "lo", "hi")] for c in cs])
                x = np.array(ns) * 2 ** (0.05 * (2 * k + (subset != "all") - 5))
                b.errorbar(x, r[:, 0], [r[:, 0] - r[:, 1], r[:, 2] - r[:, 0]], marker=mk, ms=3, lw=0.9, ls=ls,
                           capsize=1.5, color=f"C{k}", label=f"{QUALITY[m][0]}" + (", same points" if ls == "--"
                                                                                  else ""))
        b.axhline(0, color="k", lw=0.6)
        b.set_xscale("log", base=2)
        b.set_ylim(-1, 1)
        b.set_xlabel("real points per class")
    ax[0, 0].set_ylabel("robust accuracy (exact)")
    ax[1, 0].set_ylabel("Spearman rho with the gain\n(solid: every generator;\ndashed: same points only)")
    ax[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.03, 1.0))
    ax[1, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.03, 1.0))
    fig.suptitle(f"{results['config']['preset']}: {results['meta']['seeds']} seeds, mean ± 2 se; "
                 "rank correlations with 95% bootstrap intervals", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------- README summary
def _counts(calls: list) -> str:
    return f"{calls.count('better')} / {calls.count('worse')} / {calls.count('no difference shown')}"


def summary_markdown(named: dict) -> str:
    """The README block from {preset: results dict}: per preset and (d, n) the optimum, real only,
    the truth, the best and worst generator trained on the real points alone, AT minus standard DM;
    how often each data source beats real only; each quality measure's pooled rank correlation."""
    lines = ["| preset | d | n | optimum | real only | true samples | best from the same points (gain) | worst from "
             "the same points (gain) | DM AT − standard: clean | noisy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for preset, res in named.items():
        for c in res["analysis"]["cells"]:
            same = [g for g in SAME_DATA if g in c["gain"]]
            ends = (max(same, key=lambda g: c["acc"][g]["mean"]), min(same, key=lambda g: c["acc"][g]["mean"])
                    ) if same else (None, None)
            bw = ["–" if g is None else f"{SHORT[g]} {c['acc'][g]['mean']:.3f} ({_gain_cell(c['gain'][g])})"
                  for g in ends]
            dm = [_gain_cell(c["dm"][k]) if k in c["dm"] else "–" for k in ("clean", "noisy")]
            tr = f"{c['acc']['truth']['mean']:.3f}" if "truth" in c["acc"] else "–"
            lines.append(f"| {preset} | {c['d']} | {c['n']} | {c['optimum']:.3f} | {c['acc']['none']['mean']:.3f} | "
                         f"{tr} | {bw[0]} | {bw[1]} | {dm[0]} | {dm[1]} |")
    first = next(iter(named.values()))
    fewer = first["config"]["dm_seeds_high_d"] < first["meta"]["seeds"]
    lines += ["", f"Robust accuracy is exact, the mean over {first['meta']['seeds']} seeds"
              + (f" (the DMs in d > {first['config']['dm_high_d']}: the first {first['config']['dm_seeds_high_d']})"
                 if fewer else "")
              + "; gains over real only (in brackets) and AT − standard (affine DMs) are "
              "paired differences ± standard error, **bold** beyond 2 standard errors in favour, _italic_ against, "
              "otherwise no difference shown. \"From the same points\": the MLE and Ledoit-Wolf (LW) Gaussians, "
              "the four affine DMs and, in d = 2, the two MLP DMs, which see only the real points (the oracles and "
              "the truth see more).", "",
              "Cells (d, n) in which a data source beats real only / loses to it / shows no difference:", "",
              "| data source | " + " | ".join(named) + " |", "|---|" + "---|" * len(named)]
    gens = [g for g in first["config"]["generators"] if any(g in c["gain"] for r in named.values()
                                                            for c in r["analysis"]["cells"])]
    for g in gens:
        lines.append(f"| {NAMES[g]} | " + " | ".join(_counts([c["gain"][g]["call"] for c in r["analysis"]["cells"]
                                                               if g in c["gain"]]) for r in named.values()) + " |")
    for data in ("clean", "noisy"):
        acc = [_counts([c["dm"][data]["call"] for c in r["analysis"]["cells"] if data in c["dm"]])
               for r in named.values()]
        w2 = [_counts([c["dm"][data]["w2_diff"]["call"] for c in r["analysis"]["cells"] if data in c["dm"]])
              for r in named.values()]
        lines.append(f"| DM AT vs standard, {data} data: robust accuracy | " + " | ".join(acc) + " |")
        lines.append(f"| DM AT vs standard, {data} data: W2 to the truth (better = lower) | " + " | ".join(w2) + " |")
    lines += ["", "How well each quality measure of the generator predicts the gain over real only: the mean over "
              "the (d, n) cells of the within-cell Spearman rank correlation [95% bootstrap interval over seeds], "
              "over every generator and over those that saw only the real points (**bold**: predicts the gain, "
              "_italic_: the opposite):", "",
              "| measure (better: lower / higher) | " + " | ".join(f"{p}: every generator | {p}: same points only"
                                                                  for p in named) + " |",
              "|---|" + "---|---|" * len(named)]
    for m, (label, better) in QUALITY.items():
        vals = [r["analysis"]["rho_pooled"][k][m]["all"] for r in named.values() for k in SUBSETS]
        lines.append(f"| {label} ({'higher' if better > 0 else 'lower'}) | " + " | ".join(_rho_cell(v) for v in vals)
                     + " |")
    lines += ["", " ".join(f"{p}: {_timing(r)[0].lower()}{_timing(r)[1:]}" for p, r in named.items()),
              "", "Per cell, per d and for every generator: "
              + ", ".join(f"`results/gen_data/{p}/table.md`" for p in named) + "."]
    return "\n".join(lines)


def write_summary(root: str | Path = "results/gen_data") -> str:
    """Write ROOT/summary.md from ROOT/<preset>/results.json of every preset present."""
    root = Path(root)
    named = {p: json.loads((root / p / "results.json").read_text()) for p in PRESETS
             if (root / p / "results.json").is_file()}
    if not named:
        raise FileNotFoundError(f"no results.json of a preset ({', '.join(PRESETS)}) under {root}")
    text = summary_markdown(named)
    atomic_write_text(root / "summary.md", text + "\n")
    return text


if __name__ == "__main__":
    try:
        print(write_summary(sys.argv[1] if len(sys.argv) > 1 else "results/gen_data"))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"gen_data_report: error: {e}")
