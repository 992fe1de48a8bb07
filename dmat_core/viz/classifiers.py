"""Plots for robust classifiers (notebooks 05-08): image grids, adversarial examples and their
perturbations, training curves that redraw while :class:`~dmat_core.robust.train.ATTrainer` runs (or
are read back from its ``log.csv`` / ``val.csv``), AutoAttack's per-attack breakdown, robust
accuracy against the budget, and the decision regions of 2D toy classifiers.

Size: one module of about 350 lines on purpose: many small plotting functions that do not depend on
each other, for the classifier notebooks.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from ..images.pixels import image_grid
from .diffusion import LivePlot, grid


# --------------------------------------------------------------------------- images
def _hwc(images) -> np.ndarray:
    """uint8 (N, H, W, C) or float (N, C, H, W) in [0, 1], C = 3 or 1 (grey) -> float (N, H, W, 3) in
    [0, 1], a grey channel repeated three times (what imshow draws)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        out = images.permute(0, 2, 3, 1).float().clamp(0, 1).numpy() if images.shape[1] in (1, 3) \
            else images.float().div(255).numpy()
    else:
        images = np.asarray(images)
        out = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def class_grid(sets: dict, class_names, per_class: int = 6, seed: int = 0):
    """Side by side, one block per set (`sets`: name -> (images, labels)), one row per class and
    `per_class` random images of that class in each block. Returns the figure."""
    import matplotlib.pyplot as plt
    k, rng = len(class_names), np.random.default_rng(seed)
    fig, axes = plt.subplots(1, len(sets), figsize=(1.0 + 0.62 * per_class * len(sets), 0.62 * k + 0.6),
                             squeeze=False)
    for ax, (name, (images, labels)) in zip(axes[0], sets.items()):
        labels = np.asarray(labels)
        H, W = _hwc(np.asarray(images[:1])).shape[1:3]       # 32x32 (CIFAR), 8x8 (digits)
        rows = []
        for c in range(k):
            idx = np.flatnonzero(labels == c)
            pick = rng.choice(idx, min(per_class, len(idx)), replace=False) if len(idx) else []
            row = np.ones((per_class, H, W, 3), np.float32)
            if len(pick):
                row[:len(pick)] = _hwc(np.asarray(images[np.sort(pick)]))
            rows.append(np.concatenate(list(np.pad(row, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1)), 1))
        ax.imshow(np.concatenate(rows, 0))
        ax.set_yticks((H + 2) * np.arange(k) + (H + 2) / 2, class_names, fontsize=8)
        ax.set_xticks([]), ax.set_title(f"{name} ({len(labels):,} images)", fontsize=10)
    fig.tight_layout()
    return fig


def show_image_grid(ax, images, nrow: int | None = None) -> np.ndarray:
    """uint8 (N, H, W, C) images drawn on `ax` as one grid (:func:`~dmat_core.images.pixels.image_grid`,
    `nrow` per row): RGB as it is, one grey channel in grey levels 0-255 (not a colour map).
    Row i's centre is at y = (H + 1) i + (H + 1) / 2, column j's at x = (W + 1) j + (W + 1) / 2, for
    tick labels. Returns the grid."""
    g = image_grid(images, nrow=nrow)
    ax.imshow(g[..., 0] if g.shape[-1] == 1 else g, cmap="gray", vmin=0, vmax=255)
    return g


def show_adversarial(model, x, x_adv, y, class_names, n: int = 8, amplify: float | None = None, title: str = ""):
    """Clean images, adversarial images and the perturbation (scaled to fill the colour range),
    with the model's prediction and its softmax probability above each. Prefers points the attack
    flipped. Returns the figure."""
    import matplotlib.pyplot as plt
    x, x_adv = x.detach().cpu(), x_adv.detach().cpu()
    with torch.no_grad():
        dev = next(model.parameters()).device
        was = model.training
        model.eval()
        p_clean = torch.softmax(model(x.to(dev)).float(), 1).cpu()
        p_adv = torch.softmax(model(x_adv.to(dev)).float(), 1).cpu()
        model.train(was)
    y = y.cpu()
    flipped = (p_adv.argmax(1) != y) & (p_clean.argmax(1) == y)
    order = torch.cat([flipped.nonzero().squeeze(1), (~flipped).nonzero().squeeze(1)])[:n]
    delta = (x_adv - x)[order]
    eps = delta.abs().amax().item()
    scale = amplify or (0.5 / max(eps, 1e-12))
    fig, axes = plt.subplots(3, len(order), figsize=(1.45 * len(order), 4.9), squeeze=False)
    for j, i in enumerate(order.tolist()):
        for r, (img, p) in enumerate([(x[i], p_clean[i]), (x_adv[i], p_adv[i])]):
            c = int(p.argmax())
            axes[r, j].imshow(_hwc(img[None])[0])
            head = f"true {class_names[int(y[i])]}\n" if r == 0 else ""
            axes[r, j].set_title(f"{head}pred {class_names[c]} {p[c]:.0%}", fontsize=7,
                                 color="k" if c == int(y[i]) else "tab:red")
        axes[2, j].imshow(_hwc((0.5 + scale * delta[j:j + 1]).clamp(0, 1))[0])
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    for r, t in enumerate(["clean", "adversarial", "perturbation"]):
        axes[r, 0].set_ylabel(t, fontsize=8)
    fig.suptitle(f"{title + chr(10) if title else ''}largest |perturbation| = {eps * 255:.2f}/255 (bottom: grey = 0, "
                 f"each channel x{scale:.0f}); red: wrong prediction", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- training curves
class ATLivePlot(LivePlot):
    """The curves of adversarial training, redrawn while `ATTrainer.run()` yields its steps:
    the loss and its TRADES parts, and the accuracy of the training batch (clean, adversarial)
    beside the EMA model's validation accuracy (clean, PGD-40) on the held-out images. With `beta`
    the KL term is drawn as it enters the TRADES loss, beta x KL, so the parts add up to the loss."""

    LOSS = (("loss", "loss"), ("ce_clean", "CE clean (smoothed labels)"), ("kl", "KL (TRADES)"),
            ("ce_adv", "CE adversarial"))
    ACC = (("acc_clean", "train batch, clean"), ("acc_adv", "train batch, adversarial"),
           ("val_clean_acc", "val (EMA), clean"), ("val_robust_acc", "val (EMA), PGD-40"))

    def __init__(self, title: str = "", smooth: int = 0, draw_every: int = 20, beta: float | None = None):
        super().__init__([f"loss {title}".strip(), f"accuracy {title}".strip()], logy=False, smooth=smooth)
        self.draw_every, self.beta = int(draw_every), beta

    def update(self, state: dict, draw: bool = True) -> None:
        s = state["step"]
        for key, label in self.LOSS:
            if key in state and np.isfinite(state[key]):
                if key == "kl" and self.beta is not None:
                    self.add(0, f"{self.beta:g} x KL (TRADES)", s, self.beta * state[key])
                else:
                    self.add(0, label, s, state[key])
        for key, label in self.ACC:
            if key in state and np.isfinite(state[key]):
                self.add(1, label, s, state[key])
        if draw and (s % self.draw_every == 0 or "val_robust_acc" in state):
            self.draw()

    def _render(self):
        super()._render()
        self.axes[1].set_ylim(0, 1.02)


def read_log(path) -> dict:
    """Columns of a train-at CSV (``log.csv``, ``val.csv``) as float arrays (empty cells: NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]) for k in rows[0]} \
        if rows else {}


def live_training(trainer_or_dir, title: str = "", smooth: int = 0, draw_every: int = 20) -> Path:
    """Load if finished, else train, and draw. Given a :class:`~dmat_core.robust.config.TrainATConfig`:
    the folder of a finished run of the same settings (:func:`~dmat_core.robust.train.finished_result`)
    is drawn from its logs, otherwise an ATTrainer trains (resuming from ``checkpoint.pt``). Given a
    folder: the curves it logged (``log.csv``, ``val.csv``); given an
    :class:`~dmat_core.robust.train.ATTrainer`: run it to the end, redrawing live. Returns the folder."""
    from ..robust.config import TrainATConfig
    if isinstance(trainer_or_dir, TrainATConfig):
        from ..robust.train import ATTrainer, finished_result
        cfg = trainer_or_dir
        if finished_result(cfg) is not None:
            print(f"found a finished run in {cfg.out_dir}: its logged curves (delete the folder to retrain)")
            trainer_or_dir = Path(cfg.out_dir)
        else:
            trainer_or_dir = ATTrainer(cfg)   # resumes from out_dir/checkpoint.pt after an interruption
            print(f"{trainer_or_dir.model_arch} on {trainer_or_dir.device} (amp: {trainer_or_dir.amp_dtype}), "
                  f"{trainer_or_dir.total_steps} steps")
    if isinstance(trainer_or_dir, (str, Path)):
        out = Path(trainer_or_dir)
        cfg = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
        live = ATLivePlot(title, smooth, draw_every, cfg.get("beta") if cfg.get("method") == "trades" else None)
        for name in ("log.csv", "val.csv"):
            log = read_log(out / name) if (out / name).is_file() else {}
            for i in range(len(log.get("step", []))):
                live.update({k: v[i] for k, v in log.items()}, draw=False)
    else:
        cfg, out = trainer_or_dir.cfg, trainer_or_dir.out_dir
        live = ATLivePlot(title, smooth, draw_every, cfg.beta if cfg.method == "trades" else None)
        for state in trainer_or_dir.run():
            live.update(state)
    live.draw()
    return out


def plot_val_curves(ax, runs: dict, key: str = "val_robust_acc", n: int | None = None):
    """Validation accuracy (default PGD-40 robust) against the step for several runs (`runs`:
    label -> run folder with ``val.csv``); with `n` (validation points) a band of +-1.96
    standard errors, sqrt(p (1 - p) / n), around each curve."""
    for i, (label, out) in enumerate(runs.items()):
        log = read_log(Path(out) / "val.csv")
        x, p = log["step"], log[key]
        ax.plot(x, p, "o-", ms=3, color=f"C{i}", label=label)
        if n:
            se = 1.96 * np.sqrt(p * (1 - p) / n)
            ax.fill_between(x, p - se, p + se, color=f"C{i}", alpha=0.15, lw=0)
    ax.set_ylim(0, 1.02), ax.set_xlabel("step"), ax.set_ylabel(key.replace("_", " "))
    ax.legend(fontsize=8, title=f"band: 95% (n = {n})" if n else None, title_fontsize=7)


# --------------------------------------------------------------------------- robustness numbers
def plot_aa_breakdown(ax, results: dict, pgd: dict | None = None):
    """Robust accuracy after each AutoAttack stage (clean, then each attack on the points still
    robust), one line per model (`results`: label -> :func:`~dmat_core.robust.autoattack.autoattack_eval`
    dict); optional `pgd`: label -> PGD accuracy, drawn as a dashed line in the same colour."""
    for i, (label, r) in enumerate(results.items()):
        stages = ["clean"] + list(r["breakdown"])
        vals = [r["clean_accuracy"]] + list(r["breakdown"].values())
        ax.plot(stages, vals, "o-", color=f"C{i}", label=f"{label} (n = {r['n']})")
        if pgd and label in pgd:
            ax.axhline(pgd[label], color=f"C{i}", ls="--", lw=1, label=f"{label}: PGD-20, same points")
    ax.set_ylim(0, 1.02), ax.set_ylabel("accuracy"), ax.legend(fontsize=8)
    ax.set_title("AutoAttack: accuracy after each attack", fontsize=10)


def config_table(configs: dict, keys=("arch", "batch_size", "epochs", "lr", "method", "beta", "label_smoothing",
                                      "eps", "attack_steps", "attack_step_size", "unsup_fraction", "ema_tau", "amp")):
    """A markdown table of training settings side by side (`configs`: name -> TrainATConfig);
    budgets are written in 1/255 units."""
    from .diffusion import MarkdownTable

    def cell(k, v):
        if k in ("eps", "attack_step_size") and isinstance(v, float):
            return f"{v * 255:.3g}/255"
        return f"{v:g}" if isinstance(v, float) else str(v)
    names = list(configs)
    lines = ["| setting | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in keys:
        vals = [cell(k, getattr(c, k)) for c in configs.values()]
        lines.append(f"| `{k}` | " + " | ".join(vals) + " |")
    return MarkdownTable("\n".join(lines))


# --------------------------------------------------------------------------- 2D toy classifiers
CLASS_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown")


def _dtype(model) -> torch.dtype:
    """The dtype a 2D model takes: its parameters' (float64 for a parameter-free exact model)."""
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None else torch.float64


def plot_class_densities(ax, dist, lim: float = 3.0, n: int = 161):
    """The true class densities p(x | c) of a labelled 2D mixture, one colour per class (class 0
    red, class 1 blue, ...); each class's intensity is scaled to its own maximum, so a wide class
    stays visible beside a tight one."""
    from matplotlib.colors import to_rgb
    pts, gx, gy = grid(lim, n)
    K = dist.num_classes
    dens = np.stack([dist.log_prob(pts, 0.0, torch.full((len(pts),), c)).exp().numpy()
                     * float(dist.weights[dist.labels == c].sum()) for c in range(K)])
    dens = 0.75 * dens / dens.max(axis=1, keepdims=True)   # each class scaled to its own maximum
    rgb = np.ones((len(pts), 3))
    for c in range(K):
        rgb -= dens[c][:, None] * (1 - np.array(to_rgb(CLASS_COLOURS[c % len(CLASS_COLOURS)])))
    ax.imshow(rgb.clip(0, 1).reshape(n, n, 3), extent=(-lim, lim, -lim, lim), origin="lower")
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")


def plot_points(ax, x, y, s: float = 4, **kw):
    """Labelled 2D points, coloured by class."""
    x, y = np.asarray(x), np.asarray(y)
    ax.scatter(x[:, 0], x[:, 1], s=s, c=[CLASS_COLOURS[int(c) % len(CLASS_COLOURS)] for c in y], **kw)


def nonrobust_region(model, eps: float, norm: str = "l2", lim: float = 3.0, n: int = 301):
    """Where a 2D classifier is *not* robust to its own prediction: the points with a point of
    another predicted class within eps. Computed from the label map on an n x n grid by a
    distance transform (Euclidean for L2, chessboard for Linf), exact up to the grid step
    2 lim / (n - 1). Returns a bool (n, n) array and the meshgrid axes."""
    from scipy import ndimage
    pts, gx, gy = grid(lim, n)
    with torch.no_grad():
        pred = model(pts.to(_dtype(model))).argmax(1).reshape(n, n).numpy()
    h, band = 2 * lim / (n - 1), np.zeros((n, n), dtype=bool)
    for c in np.unique(pred):
        same = pred == c                       # distance from each pixel of class c to the nearest other pixel
        d = (ndimage.distance_transform_edt(same) if norm == "l2"
             else ndimage.distance_transform_cdt(same, metric="chessboard")) * h
        band |= same & (d <= eps)
    return band, gx, gy


def plot_decision(ax, model, dist=None, eps: float | None = None, norm: str = "l2", lim: float = 3.0,
                  n: int = 161, title: str = ""):
    """A 2D classifier over the true class densities: its decision boundary (black) and, with
    `eps`, the band where it is not robust (grey: a point there can be moved across the
    boundary within the eps-ball)."""
    if dist is not None:
        plot_class_densities(ax, dist, lim)
    pts, gx, gy = grid(lim, n)
    with torch.no_grad():
        z = model(pts.to(_dtype(model))).double()
    if z.shape[1] == 2:   # two classes: the zero level of the logit gap, smooth
        ax.contour(gx, gy, (z[:, 1] - z[:, 0]).reshape(n, n).numpy(), levels=[0.0], colors="k", linewidths=1.2)
    else:
        pred = z.argmax(1).reshape(n, n).numpy()
        for c in range(z.shape[1]):
            ax.contour(gx, gy, (pred == c).astype(float), levels=[0.5], colors="k", linewidths=1.2)
    if eps:
        band, bx, by = nonrobust_region(model, eps, norm, lim)
        ax.contourf(bx, by, band.astype(float), levels=[0.5, 1.5], colors="k", alpha=0.25)
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)


def plot_ball_search(ax, model, x, y, eps: float, norm: str = "l2", x_pgd=None, x_witness=None, n: int = 61):
    """Inside the threat ball of one point: the margin z_y - max_{j != y} z_j on a dense grid
    (negative: misclassified), the point, PGD's answer and the exact search's worst point."""
    from ..robust.exact2d import margin
    t = torch.linspace(-eps, eps, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(t, t, indexing="xy")
    off = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    inside = off.norm(dim=1) <= eps if norm == "l2" else torch.ones(len(off), dtype=torch.bool)
    x = x.double().reshape(1, 2)
    with torch.no_grad():
        m = margin(model((x + off).to(_dtype(model))).double(), torch.full((len(off),), int(y)))
    m = torch.where(inside, m, torch.nan).reshape(n, n).numpy()
    v = np.nanmax(np.abs(m))
    im = ax.pcolormesh(gx + x[0, 0], gy + x[0, 1], m, cmap="RdBu", vmin=-v, vmax=v, shading="auto")
    ax.contour(gx + x[0, 0], gy + x[0, 1], m, levels=[0.0], colors="k", linewidths=1.2)
    ax.plot(*x[0].tolist(), "k+", ms=10, label="x")
    # the ball's edge, with room around it: the worst points lie on the edge and must not be cut off
    cx, cy = x[0].tolist()
    if norm == "l2":
        a = np.linspace(0, 2 * np.pi, 200)
        ax.plot(cx + eps * np.cos(a), cy + eps * np.sin(a), "k--", lw=0.8)
    else:
        ax.plot(cx + eps * np.array([-1, 1, 1, -1, -1]), cy + eps * np.array([-1, -1, 1, 1, -1]), "k--", lw=0.8)
    if x_witness is not None:
        ax.plot(*np.asarray(x_witness).reshape(2), "o", mfc="none", mec="k", ms=11, label="exact search: worst point")
    if x_pgd is not None:
        ax.plot(*np.asarray(x_pgd).reshape(2), "x", color="gold", ms=9, mew=2, label="PGD")
    pad = 1.25 * eps
    ax.set_xlim(cx - pad, cx + pad), ax.set_ylim(cy - pad, cy + pad)
    ax.set_aspect("equal"), ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    return im


def plot_accuracy_vs_eps(ax, eps, curves: dict, optimum=None, xscale: float = 1.0, xlabel: str = "eps"):
    """Accuracy against the budget, one line per model (`curves`: label -> accuracies, or
    label -> (accuracies, plot keywords)); `optimum`: (lower, value, upper) arrays of the best
    robust accuracy any classifier reaches (:func:`~dmat_core.robust.optimum2d.bayes_robust_accuracy`),
    drawn as a black line in its certified band. `xscale` multiplies eps for the axis (255: pixels)."""
    e = np.asarray(eps, dtype=float) * xscale
    if optimum is not None:
        lo, val, up = (np.asarray(a, dtype=float) for a in optimum)
        ax.fill_between(e, lo, up, color="k", alpha=0.12, lw=0, label="optimum, certified band")
        ax.plot(e, val, "k-", lw=2, label="optimal robust accuracy (any classifier)")
    for i, (label, c) in enumerate(curves.items()):
        acc, kw = c if isinstance(c, tuple) else (c, {})
        ax.plot(e, acc, **{"marker": "o", "ms": 4, "color": f"C{i}", **kw}, label=label)
    ax.set_ylim(0, 1.02), ax.set_xlabel(xlabel), ax.set_ylabel("accuracy"), ax.legend(fontsize=7)


def plot_study_points(ax, results: dict, key: str = "robust_acc", names: dict | None = None, title: str = ""):
    """One column per data source of the generated-data study (:mod:`dmat_core.studies.at_classifier_study`):
    every seed as a faint dot, the mean +- std in black; for robust accuracy also the optimum over all
    classifiers (its certified band in grey) and the Bayes classifier's robust accuracy on the test set."""
    colour = {v: f"C{i}" for i, v in enumerate(results["summary"])}   # the same colour in every panel
    variants = [v for v in results["summary"] if key in results["summary"][v]]
    for i, v in enumerate(variants):
        vals = [r["metrics"][key] for r in results["runs"] if r["variant"] == v and key in r["metrics"]]
        ax.scatter(np.full(len(vals), i) + np.linspace(-0.12, 0.12, len(vals)), vals, s=14, color=colour[v], alpha=0.6)
        s = results["summary"][v][key]
        ax.errorbar(i + 0.25, s["mean"], yerr=s["std"], fmt="o", color="k", capsize=3, ms=5)
    ref = results["reference"]
    if key == "robust_acc":
        opt = ref["optimal"]
        ax.axhspan(opt["lower"], opt["upper"], color="k", alpha=0.1, lw=0, label="optimum: certified band")
        ax.axhline(opt["value"], color="k", lw=1.5, label="optimal robust accuracy (population)")
        ax.axhline(ref["bayes_robust_acc"], color="k", ls="--", lw=1,
                   label=f"Bayes classifier (test set, +- {ref['test_stderr']:.3f})")
        ax.legend(fontsize=7, loc="lower right")
    names = names or {}
    ax.set_xticks(range(len(variants)), [names.get(v, v) for v in variants], rotation=20, ha="right", fontsize=8)
    ax.set_title(title or f"{key.replace('_', ' ')}: seeds (dots), mean +- std (black)", fontsize=9)
