"""Plots for 2D toys: noised densities, the PF-ODE vector field, trajectories, and a sigma
slider (ipywidgets) that redraws any of them; the flow of several denoisers side by side with a
smoothness heat map (||dD/dx||_F on a grid); curves that redraw while a generator trains; and
small markdown tables of metrics. Notebooks 01-05 and 08 use these.

Size: one module of about 310 lines on purpose: many small plotting functions for the diffusion
notebooks, independent of each other.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..diffusion.edm import pf_ode_velocity


def grid(lim: float = 3.0, n: int = 100):
    """A square (n*n, 2) float64 grid over [-lim, lim]^2 and its meshgrid axes."""
    t = torch.linspace(-lim, lim, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(t, t, indexing="xy")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1), gx.numpy(), gy.numpy()


def plot_density(ax, dist, sigma: float, lim: float = 3.0, n: int = 150, levels: int = 20):
    """Filled contours of the exact log p_sigma of a 2D distribution."""
    pts, gx, gy = grid(lim, n)
    lp = dist.log_prob(pts, sigma).reshape(n, n).numpy()
    ax.contourf(gx, gy, np.maximum(lp, lp.max() - 12), levels=levels, cmap="viridis")
    ax.set_aspect("equal")
    ax.set_title(f"log p_sigma, sigma = {sigma:g}", fontsize=9)


def plot_vector_field(ax, D, sigma: float, lim: float = 3.0, n: int = 21, color="k", label=None,
                      normalise: bool = True):
    """Arrows of the PF-ODE direction -dx/dsigma = (D(x, sigma) - x) / sigma, the way the flow
    moves as sigma decreases; normalised to unit length when `normalise` (colour = speed)."""
    pts, gx, gy = grid(lim, n)
    with torch.no_grad():
        v = -pf_ode_velocity(D, pts.float() if _is_module(D) else pts, sigma).double()
    speed = v.norm(dim=1, keepdim=True)
    u = v / speed.clamp_min(1e-12) if normalise else v
    u = u.reshape(n, n, 2).numpy()
    ax.quiver(gx, gy, u[..., 0], u[..., 1], color=color, angles="xy", scale=n * 1.3,
              width=0.004, label=label)
    ax.set_aspect("equal")
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim)
    return speed.reshape(n, n).numpy()


def _is_module(D) -> bool:
    return isinstance(D, torch.nn.Module) or isinstance(getattr(D, "__self__", None), torch.nn.Module)


def plot_trajectories(ax, traj: torch.Tensor, n: int = 64, color="C3", lw: float = 0.8):
    """Paths of the first n points of a (S+1, B, 2) trajectory, end points marked."""
    t = traj[:, :n].double().numpy()
    for j in range(t.shape[1]):
        ax.plot(t[:, j, 0], t[:, j, 1], color=color, lw=lw, alpha=0.6)
    ax.scatter(t[-1, :, 0], t[-1, :, 1], s=8, color=color, zorder=3)


def sigma_slider(draw, sigmas=(0.01, 0.05, 0.1, 0.3, 1.0, 3.0, 10.0), value: float = 0.3,
                 description: str = "sigma"):
    """An ipywidgets slider over noise levels that calls `draw(sigma)` into an Output widget.

    `draw(sigma)` makes and shows a matplotlib figure. Returns (slider, output, box).
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    options = [(f"{s:g}", float(s)) for s in sigmas]
    value = min(sigmas, key=lambda s: abs(math.log(s / value)))
    slider = w.SelectionSlider(options=options, value=float(value), description=description,
                               continuous_update=False, layout=w.Layout(width="420px"))
    out = w.Output()

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            draw(slider.value)
            plt.show()

    slider.observe(redraw, names="value")
    box = w.VBox([slider, out])
    display(box)
    redraw()
    return slider, out, box


# --------------------------------------------------------------------------- flow comparison
def jacobian_grid(D, sigma: float, lim: float = 3.0, n: int = 40, sub: int = 3):
    """||dD(x, sigma)/dx||_F over [-lim, lim]^2 (2D denoisers), computed exactly (one backward pass
    per output coordinate, as :func:`dmat_core.toys.smoothness.jacobian_frobenius`) on an (n*sub)^2 grid and
    max-pooled to n*n cells, so that boundaries thinner than a cell (the exact denoiser's at small
    sigma) still show. Returns the (n, n) numpy array, the cell-centre meshgrid axes, and the RMS
    of ||dD/dx||_F over the fine grid (before pooling)."""
    from ..diffusion.flow import jacobian_sq_norm
    m = n * sub
    pts, _, _ = grid(lim * (1 - 1 / m), m)                          # sub-cell centres
    x = pts.float() if _is_module(D) else pts
    sq = jacobian_sq_norm(D, x, float(sigma), "exact")                 # (m*m,)
    j = sq.sqrt().reshape(m, m)
    j = j.reshape(n, sub, n, sub).amax(dim=(1, 3)) if sub > 1 else j
    _, gx, gy = grid(lim * (1 - 1 / n), n)
    return j.numpy(), gx, gy, float(sq.mean().sqrt())


def flow_comparison(denoisers: dict, dist, sigma: float, lim: float = 3.0, n_arrows: int = 17,
                    n_paths: int = 48, path_steps: int = 8, n_jac: int = 40,
                    jac_range: tuple = (-1.0, 1.0), seed: int = 0):
    """The diffusion flow of several 2D denoisers at one noise level, side by side.

    Top row, one panel per denoiser (`denoisers`: name -> D(x, sigma)): the PF-ODE direction
    (D - x)/sigma over the exact log p_sigma of `dist`, and Heun paths (EDM Algorithm 2,
    `path_steps` steps) from the same `n_paths` points x = x0 + sigma n, x0 ~ dist, down to
    sigma = 0 (end points marked). Bottom row: log10 ||dD/dx||_F on an n_jac^2 grid
    (:func:`jacobian_grid`), one fixed colour scale `jac_range` for every panel and every sigma
    (the identity scores log10 sqrt(2) = 0.15, a constant map -inf). Returns the figure.
    """
    import matplotlib.pyplot as plt

    from ..diffusion.edm import edm_sigmas
    from ..diffusion.samplers import edm_heun

    sigma = float(sigma)
    g = torch.Generator().manual_seed(seed)
    x0 = dist.sample(n_paths, g)
    start = (x0 + sigma * torch.randn(x0.shape, dtype=x0.dtype, generator=g)) / sigma
    sig = edm_sigmas(path_steps, sigma_min=min(0.002, sigma), sigma_max=sigma)
    k = len(denoisers)
    fig, axes = plt.subplots(2, k + 1, figsize=(3.9 * k + 0.5, 7.6),
                             gridspec_kw={"width_ratios": [1] * k + [0.05], "hspace": 0.18,
                                          "wspace": 0.12, "left": 0.06, "right": 0.93,
                                          "top": 0.9, "bottom": 0.04})
    axes[0, k].axis("off")
    jac = {}
    for j, (name, D) in enumerate(denoisers.items()):
        ax = axes[0, j]
        plot_density(ax, dist, sigma, lim=lim, n=120)
        plot_vector_field(ax, D, sigma, lim=lim, n=n_arrows, color="w")
        lat = start.float() if _is_module(D) else start
        with torch.no_grad():
            traj = torch.stack(list(edm_heun(D, lat, sig)))                  # (S+1, n_paths, 2)
        plot_trajectories(ax, traj, n=n_paths, color="tab:orange", lw=1.0)
        ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim)
        ax.set_title(name, fontsize=11)
        jac[name] = jacobian_grid(D, sigma, lim, n_jac)
    logs = {name: np.log10(np.maximum(v[0], 1e-6)) for name, v in jac.items()}
    vmin, vmax = jac_range
    for j, name in enumerate(denoisers):
        ax = axes[1, j]
        _, gx, gy, rms = jac[name]
        im = ax.pcolormesh(gx, gy, logs[name], vmin=vmin, vmax=vmax, cmap="magma", shading="auto")
        ax.scatter(*dist.means[:, :2].T.numpy(), s=14, c="c", marker="+", linewidths=0.8)
        ax.set_aspect("equal"), ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim)
        ax.set_title(f"grid RMS of ||dD/dx||_F: {rms:.3g}", fontsize=9)
    axes[0, 0].set_ylabel("PF-ODE direction, paths to sigma = 0", fontsize=9)
    axes[1, 0].set_ylabel("log10 ||dD/dx||_F (+: mode centres)", fontsize=9)
    fig.colorbar(im, cax=axes[1, k], label="log10 ||dD/dx||_F", extend="both")
    fig.suptitle(f"sigma = {sigma:g}: the flow of each denoiser over the clean log p_sigma", fontsize=11)
    return fig


# --------------------------------------------------------------------------- live curves
class LivePlot:
    """Curves that redraw in place while a generator runs (training loops yield every step).

        live = LivePlot(["denoising loss", "relative error"], logy=True, smooth=50)
        for state in train_toy(...):
            live.add(0, "batch loss", state["step"], state["loss"])
            if state["step"] % 100 == 0:
                live.draw()
        live.draw()

    Series with more than `smooth` points are drawn faint with their running mean on top.
    In a notebook the figure is one output that updates; elsewhere draw() does nothing until
    `show()`.
    """

    def __init__(self, panels, logy: bool = True, smooth: int = 0, figsize=None, xlabel="step"):
        from matplotlib.figure import Figure
        self.titles = list(panels)
        self.series = [dict() for _ in self.titles]          # panel -> label -> (xs, ys)
        self.hlines = [[] for _ in self.titles]
        self.logy, self.smooth, self.xlabel = logy, int(smooth), xlabel
        self.fig = Figure(figsize=figsize or (4.6 * len(self.titles), 3.4))
        self.axes = self.fig.subplots(1, len(self.titles), squeeze=False)[0]
        self._handle = None

    def add(self, panel: int, label: str, x: float, y: float) -> None:
        xs, ys = self.series[panel].setdefault(label, ([], []))
        xs.append(float(x)), ys.append(float(y))

    def hline(self, panel: int, y: float, label: str) -> None:
        """A horizontal reference line (e.g. the loss of the exact denoiser)."""
        self.hlines[panel].append((float(y), label))

    def _render(self):
        for ax, title, series, hl in zip(self.axes, self.titles, self.series, self.hlines):
            ax.clear()
            for i, (label, (xs, ys)) in enumerate(series.items()):
                c = f"C{i}"
                if self.smooth and len(ys) > self.smooth:
                    ax.plot(xs, ys, color=c, alpha=0.25, lw=0.6)
                    kernel = np.ones(self.smooth) / self.smooth
                    ax.plot(xs[self.smooth - 1:], np.convolve(ys, kernel, mode="valid"), color=c,
                            lw=1.6, label=f"{label} (mean of {self.smooth})")
                else:
                    ax.plot(xs, ys, color=c, marker="o" if len(xs) < 30 else None, ms=3, label=label)
            for y, label in hl:
                ax.axhline(y, color="k", ls="--", lw=1, label=label)
            if self.logy:
                ax.set_yscale("log")
            ax.set_xlabel(self.xlabel), ax.set_title(title, fontsize=10)
            if series or hl:
                ax.legend(fontsize=7)
        self.fig.tight_layout()

    def draw(self) -> None:
        """Redraw the figure in place (the first call displays it)."""
        self._render()
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        if self._handle is None:
            self._handle = display(self.fig, display_id=True)
        else:
            self._handle.update(self.fig)

    def show(self):
        """The figure (rendered), e.g. to save it outside a notebook."""
        self._render()
        return self.fig


# --------------------------------------------------------------------------- tables and bars
class MarkdownTable(str):
    """A markdown string that a notebook renders as a table (print() shows the markdown)."""

    def _repr_markdown_(self):
        return str(self)


def _mean_std(v):
    if isinstance(v, dict):
        return v.get("mean"), v.get("std")
    return v, None


def metrics_table(rows: dict, columns, caption: str = "") -> MarkdownTable:
    """A markdown table of metrics: `rows` maps a row name to {key: value} (a value may be
    {"mean", "std"} as in the AT-DM study's summary, shown as mean ± std); `columns` is a list of
    (key, header, format) as :data:`dmat_core.studies.at_dm_report.COLUMNS_MODES`. Missing
    values are left empty."""
    lines = ([caption, ""] if caption else []) + [
        "| | " + " | ".join(h for _, h, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, m in rows.items():
        cells = []
        for key, _, fmt in columns:
            mean, std = _mean_std(m.get(key))
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                cells.append("")
            else:
                cells.append(format(mean, fmt) + (f" ± {format(std, fmt.lstrip('+'))}" if std else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return MarkdownTable("\n".join(lines))


_REF_STYLES = ["--", ":", "-.", (0, (6, 2, 1, 2, 1, 2))]   # one line style per reference


def plot_metric_bars(axes, rows: dict, keys, references: dict | None = None, titles=None,
                     symlog=()):
    """One bar chart per metric key: a bar per row (model), error bars where values carry a std
    (study summaries), and dashed lines for `references` (name -> {key: value}, e.g. what true
    samples and the training set score). Keys in `symlog` get a symmetric log axis (for metrics
    such as NLL - H that span orders of magnitude and may be negative). Each panel's y range holds
    every bar, error bar and line with room to spare; the lines share one legend, outside the
    last panel, so that it covers no bar."""
    names = list(rows)
    axes = np.atleast_1d(axes)
    lines = {}                                             # reference name -> a line, for the legend
    for i, (ax, key) in enumerate(zip(axes, keys)):
        vals = [_mean_std(rows[n].get(key, float("nan"))) for n in names]
        mean = [float("nan") if v[0] is None else v[0] for v in vals]
        err = [v[1] or 0.0 for v in vals]
        ax.bar(range(len(names)), mean, yerr=err if any(err) else None, capsize=3,
               color=[f"C{j}" for j in range(len(names))])
        levels = [0.0] + [m + s for m, s in zip(mean, err)] + [m - s for m, s in zip(mean, err)]
        for j, (rname, ref) in enumerate((references or {}).items()):
            if key in ref:
                lines[rname] = ax.axhline(ref[key], color="k", ls=_REF_STYLES[j % len(_REF_STYLES)], lw=1,
                                          label=rname)
                levels.append(ref[key])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(titles[i] if titles else key, fontsize=9)
        levels = [v for v in levels if math.isfinite(v)]
        lo, hi = min(levels), max(levels)
        if key in symlog:
            ax.set_yscale("symlog", linthresh=0.1)
            ax.set_ylim(0.0 if lo >= 0 else (2.5 * lo if lo < -0.1 else lo - 0.1),
                        2.5 * hi if hi > 0.1 else hi + 0.1)
        else:
            pad = 0.08 * ((hi - lo) or 1.0)
            ax.set_ylim(lo - pad if lo < 0 else 0.0, hi + pad)
    if lines:
        axes[-1].legend(list(lines.values()), list(lines), fontsize=7, loc="upper left",
                        bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0, frameon=False)
