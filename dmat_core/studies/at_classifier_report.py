"""Tables, statistics and figures of the generated-data-for-AT study on a known 2D density
(:mod:`dmat_core.studies.at_classifier_study`).

* :func:`summarize` (mean ± std over seeds), :func:`paired_differences` (each data source
  minus real points only, seed by seed) and :func:`claim_check`, the paper's claim (Wang
  et al., ICML 2023: more and better generated data, higher robust accuracy) pair by pair;
* :func:`markdown_table`: table.md;
* :func:`plot_boundaries`: boundaries.png, per data source its training data and decision
  boundary (:func:`_view`, taken where the classifier was trained) over the true class
  densities, beside the Bayes boundary and the cells the optimum keeps robust.

The data sources and the class densities come from
:mod:`~dmat_core.studies.at_classifier_setup`, never from the study (which imports this
module).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..robust.exact2d import margin
from ..robust.optimum2d import bayes_classifier
from .at_classifier_setup import COLOURS, VARIANT_NAMES, VARIANTS, class_mixture, make_dist

# per class: what its density subtracts from white (class 0 red, 1 blue, 2 green, ...)
TINTS = np.array([[0.0, 1, 1], [1, 0.6, 0], [1, 0.35, 1], [0, 0.45, 1], [0.5, 1, 0.2], [0.4, 0.7, 0.9]])
KEEP_RGB = np.array([[1.0, 0.55, 0.55], [0.55, 0.65, 1.0], [0.55, 0.9, 0.55], [1.0, 0.8, 0.5],
                     [0.8, 0.6, 0.9], [0.8, 0.7, 0.6]])


# ----------------------------------------------------------------------- statistics and claim
def summarize(runs: list[dict], variants) -> dict:
    """Mean, std (over seeds, ddof 1) and n of every metric per variant."""
    out = {}
    for v in variants:
        ms = [r["metrics"] for r in runs if r["variant"] == v]
        keys = [k for k in ms[0] if isinstance(ms[0][k], (int, float)) and ms[0][k] is not None]
        out[v] = {}
        for k in keys:
            a = np.array([float(m[k]) for m in ms])
            out[v][k] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                         "n": len(a)}
    return out


def paired_differences(runs: list[dict], variants, key: str = "robust_acc") -> dict:
    """Per seed, each variant's `key` minus that of `none` (same real points): mean, std, wins."""
    by = {(r["seed"], r["variant"]): r["metrics"][key] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    out = {}
    for v in variants:
        if v == "none" or "none" not in variants:
            continue
        d = np.array([by[(s, v)] - by[(s, "none")] for s in seeds])
        out[v] = {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                  "wins": int((d > 0).sum()), "n": len(d)}
    return out


def verdict(mean: float, se: float) -> str:
    """An ordering is called only beyond two standard errors of the paired difference."""
    if not abs(mean) > 2 * se:
        return "no difference shown (within 2 standard errors)"
    return "holds, beyond 2 standard errors" if mean > 0 else "reversed, beyond 2 standard errors"


def claim_check(runs: list[dict], summary: dict, ref: dict) -> list[str]:
    """The expected ordering (a) < (b) < (c) <= (d) <= optimal, pair by pair: the mean of the
    paired (same seed) difference, and whether it exceeds two standard errors."""
    chain = [v for v in VARIANTS if v in summary]
    by = {(r["seed"], r["variant"]): r["metrics"]["robust_acc"] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    lines = []
    for a, b in zip(chain, chain[1:]):
        d = np.array([by[(s, b)] - by[(s, a)] for s in seeds])
        se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.inf
        lines.append(f"{VARIANT_NAMES[a]} < {VARIANT_NAMES[b]}: "
                     f"{summary[a]['robust_acc']['mean']:.4f} vs {summary[b]['robust_acc']['mean']:.4f}"
                     f" (paired difference {d.mean():+.4f} ± {se:.4f}): {verdict(d.mean(), se)}")
    top = chain[-1]
    up = ref["optimal"]["upper"]
    mt = summary[top]["robust_acc"]["mean"]
    lines.append(f"{VARIANT_NAMES[top]} <= optimal: {mt:.4f} vs at most {up:.4f} (certified): "
                 + ("holds" if mt <= up else "fails"))
    return lines


def across_classes(named: dict) -> str:
    """Markdown: for each step of the claimed ordering, the paired difference and its verdict in
    every study given ({name: results dict}, e.g. K = 2 and K = 3), and "no consistent effect"
    unless every study shows it beyond two standard errors with the same sign."""
    chains = [[v for v in VARIANTS if v in r["summary"]] for r in named.values()]
    chain = [v for v in chains[0] if all(v in c for c in chains)]
    lines = ["| step of the claim | " + " | ".join(named) + " | across studies |",
             "|---|" + "---|" * len(named) + "---|"]
    for a, b in zip(chain, chain[1:]):
        cells, signs = [], []
        for r in named.values():
            by = {(x["seed"], x["variant"]): x["metrics"]["robust_acc"] for x in r["runs"]}
            seeds = sorted({x["seed"] for x in r["runs"]})
            d = np.array([by[(s, b)] - by[(s, a)] for s in seeds])
            se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.inf
            cells.append(f"{d.mean():+.4f} ± {se:.4f}: {verdict(d.mean(), se).split(' (')[0].split(',')[0]}")
            signs.append(0 if not abs(d.mean()) > 2 * se else (1 if d.mean() > 0 else -1))
        overall = ("consistent gain" if all(x == 1 for x in signs) else
                   "consistent loss" if all(x == -1 for x in signs) else "no consistent effect")
        lines.append(f"| {VARIANT_NAMES[a]} < {VARIANT_NAMES[b]} | " + " | ".join(cells) + f" | {overall} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------- table
def _pm(s: dict, k: str, f: str = ".4f") -> str:
    if k not in s:
        return "–"
    return f"{s[k]['mean']:{f}} ± {s[k]['std']:{f}}"


def markdown_table(results: dict) -> str:
    """table.md: per data source mean ± std over seeds, the references (the optimum, the
    Bayes classifier), the paired differences and the claim, from a results dict."""
    cfg, summ, ref = results["config"], results["summary"], results["reference"]
    n = next(iter(summ.values()))["robust_acc"]["n"]
    opt = ref["optimal"]
    K = cfg.get("classes", 2)
    what = "" if K == 2 else f", {K} classes"
    lines = [f"**{make_dist(cfg).name}** (std {cfg['std']}, radius {cfg['radius']}{what}), threat "
             f"{cfg['norm']} eps = {cfg['eps']}; {cfg['n_real']} real points per class; "
             f"{cfg['loss'].upper()} (beta {cfg['beta']}) on a ToyMLP {cfg['clf_width']}x"
             f"{cfg['clf_depth']}, {cfg['clf_steps']} steps, batch {cfg['batch']}, "
             f"unsup_fraction {cfg['unsup_fraction']}; {cfg['n_gen']} extra points per class; "
             f"DM per class: {cfg['dm_weak_steps']} (weak) / {cfg['dm_steps']} (good) steps; "
             f"{cfg['n_test']} test points; mean ± std over {n} seeds.", "",
             "| data for AT | clean acc | robust acc (exact) | certified lower | PGD robust acc "
             "| PGD − exact | robust acc on real train points | label agreement of extra data "
             "| mean -log p of extra data (not a divergence: copies score low) | median dist. to nearest real point |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v, s in summ.items():
        lines.append(f"| {VARIANT_NAMES[v]} | {_pm(s, 'clean_acc', '.3f')} | **{_pm(s, 'robust_acc')}** "
                     f"| {_pm(s, 'robust_lower')} | {_pm(s, 'pgd_acc')} | {_pm(s, 'pgd_minus_exact')} "
                     f"| {_pm(s, 'train_robust_acc', '.3f')} | {_pm(s, 'label_agreement', '.3f')} "
                     f"| {_pm(s, 'nll', '.2f')} | {_pm(s, 'nn_dist', '.3f')} |")
    grid = f"grid h = {opt['h']}" if K == 2 else (
        f"{K} classes: LP upper bound, robust classifiers below; grid h = {opt['h']}, "
        f"lower bound also on h/{opt['refine']}; point estimate")
    lines += ["", "| reference | value |", "|---|---|",
              f"| optimal robust accuracy, any classifier ({grid}) | "
              f"**{opt['value']:.4f}**, certified in [{opt['lower']:.4f}, {opt['upper']:.4f}] |",
              f"| Bayes classifier: clean / robust accuracy on the test set | "
              f"{ref['bayes_clean_acc']:.4f} / {ref['bayes_robust_acc']:.4f} "
              f"(± {ref['test_stderr']:.4f} sampling error) |",
              f"| clean optimum (Bayes accuracy, grid) | {opt['bayes_grid']:.4f} |", "",
              f"Every model is measured on the same {cfg['n_test']} test points, so differences "
              "between rows are paired; a row's distance to the optimum (a property of the "
              f"distribution) carries the test set's sampling error, about ± {ref['test_stderr']:.3f}."]
    pairs = results["paired"]
    if pairs:
        lines += ["", "Paired by seed (same real points), robust accuracy minus that of (a):", "",
                  "| data for AT | mean difference | better than (a) in |", "|---|---|---|"]
        for v, d in pairs.items():
            lines.append(f"| {VARIANT_NAMES[v]} | {d['mean']:+.4f} ± {d['std']:.4f} | "
                         f"{d['wins']}/{d['n']} seeds |")
    agree = [r["metrics"] for r in results["runs"]]
    lines += ["", "Claim (more and better generated data, higher robust accuracy):", ""]
    lines += [f"- {line}" for line in results["claim"]]
    lines += ["", f"Exact search vs PGD-{cfg['pgd_steps']} ({cfg['pgd_restarts']} restarts), "
              f"all {len(agree)} models: points PGD breaks that the exact search calls robust: "
              f"{sum(m['pgd_only'] for m in agree)} (must be 0); points only the exact search "
              f"breaks: {sum(m['exact_only'] for m in agree)}; points left undecided by the "
              f"certificate: {sum(m['undecided'] for m in agree)}."]
    return "\n".join(lines)


# ----------------------------------------------------------------------- figure
def _lim(cfg: dict) -> float:
    """Half-width of the figure's window: 3.5 for the default ring, wider for a wider ring."""
    return max(3.5, cfg["radius"] + 5 * cfg["std"])


def _view(f, source, lim: float = 3.5, n: int = 141) -> dict:
    """What the figure needs from one classifier: each class's margin z_c - max_{j != c} z_j on
    a grid ((K, n, n); zero on the decision boundary), some of its data."""
    t = torch.linspace(-lim, lim, n)
    gx, gy = torch.meshgrid(t, t, indexing="xy")
    with torch.no_grad():
        z = f(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1))                    # (n*n, K)
    K = z.shape[1]
    marg = torch.stack([margin(z, torch.full((len(z),), c)) for c in range(K)])  # (K, n*n)
    view = {"margin": marg.reshape(K, n, n).numpy(), "lim": lim}
    if source is not None:
        idx = torch.randperm(len(source[0]), generator=torch.Generator().manual_seed(0))[:1500]
        view["data"] = (source[0][idx].numpy(), source[1][idx].numpy())
    return view


def _save_fig(fig, path: Path):
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def plot_boundaries(results: dict, views: dict, real, ref: dict, cfg: dict, out: Path) -> None:
    """boundaries.png: per variant (seed 0) its training data (top) and its decision boundary
    with the eps-band over the true class densities (bottom); last column: the optimum."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dist = make_dist(cfg)
    K = dist.num_classes
    colour = np.array(COLOURS[:K])
    variants = [v for v in VARIANTS if v in views]
    lim = _lim(cfg)
    t = torch.linspace(-lim, lim, 141, dtype=torch.float64)
    gx, gy = torch.meshgrid(t, t, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    dens = [class_mixture(dist, c).log_prob(pts).exp().reshape(141, 141).numpy() / K for c in range(K)]
    top = max(d.max() for d in dens)
    rgb = 1 - sum(0.55 * d[..., None] / top * TINTS[c] for c, d in enumerate(dens))  # (141, 141, 3)
    fig, ax = plt.subplots(2, len(variants) + 1, figsize=(2.9 * (len(variants) + 1), 6.0),
                           squeeze=False)
    xr, yr = real
    summ = results["summary"]
    for i, v in enumerate(variants):
        a = ax[0, i]
        if "data" in views[v]:
            xd, yd = views[v]["data"]
            a.scatter(xd[:, 0], xd[:, 1], s=1, c=colour[yd], alpha=0.3)
        a.scatter(xr[:, 0], xr[:, 1], s=14, c=colour[yr], edgecolors="k", linewidths=0.6)
        a.set_title(f"{VARIANT_NAMES[v]}: training data", fontsize=8)
        b = ax[1, i]
        b.imshow(rgb, extent=(-lim, lim, -lim, lim), origin="lower")
        for m in views[v]["margin"][:K if K > 2 else 1]:       # two classes: one line
            b.contour(gx.numpy(), gy.numpy(), m, levels=[0.0], colors="k", linewidths=1.2)
        b.scatter(xr[:, 0], xr[:, 1], s=8, c=colour[yr], edgecolors="k", linewidths=0.4)
        s = summ[v]["robust_acc"]
        b.set_title(f"boundary; robust acc {s['mean']:.3f} ± {s['std']:.3f} ({s['n']} seeds)",
                    fontsize=8)
    a = ax[0, -1]
    a.imshow(rgb, extent=(-lim, lim, -lim, lim), origin="lower")
    with torch.no_grad():
        bz = bayes_classifier(dist)(pts)
    for c in range(K if K > 2 else 1):
        m = margin(bz, torch.full((len(bz),), c)).reshape(141, 141).numpy()
        a.contour(gx.numpy(), gy.numpy(), m, levels=[0.0], colors="k", linewidths=1.0)
    a.set_title("true densities, Bayes boundary", fontsize=8)
    keep, (ex, ey) = ref["optimal_keep"], ref["optimal_edges"]
    img = np.ones(keep.shape[1:] + (3,))
    for c in range(K):
        img[keep[c]] = KEEP_RGB[c]
    b = ax[1, -1]
    b.imshow(img, extent=(ex[0], ex[-1], ey[0], ey[-1]), origin="lower")
    opt = ref["optimal"]
    b.set_title(f"optimum {opt['value']:.3f}: cells kept robust (white: given up)", fontsize=8)
    for a in ax.ravel():
        a.set_xlim(-lim, lim), a.set_ylim(-lim, lim), a.set_aspect("equal")
        a.set_xticks([]), a.set_yticks([])
    names = ", ".join(f"{c.removeprefix('tab:')}: class {i}" for i, c in enumerate(colour))
    fig.suptitle(f"{dist.name}, {cfg['norm']} eps = {cfg['eps']}, {cfg['n_real']} real points "
                 f"per class (black rings); {names}; seed 0", fontsize=9)
    fig.tight_layout()
    _save_fig(fig, out / "boundaries.png")
    plt.close(fig)


def rerender(out) -> dict:
    """Re-write ``table.md`` (and the derived ``claim`` of ``results.json``) of a finished study
    from its ``results.json`` alone, without training anything; returns the results dict."""
    import json
    from ..common.checkpoint import atomic_write_text
    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    results["claim"] = claim_check(results["runs"], results["summary"], results["reference"])
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out / "table.md", markdown_table(results) + "\n")
    return results
