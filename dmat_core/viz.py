"""Plots for 2D toys: noised densities, the PF-ODE vector field, trajectories, and a sigma
slider (ipywidgets) that redraws any of them. Notebooks 01-03 use these."""
from __future__ import annotations

import math

import numpy as np
import torch

from .diffusion import pf_ode_velocity


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
