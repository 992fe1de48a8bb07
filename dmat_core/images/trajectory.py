"""Attacks on the sampling trajectory of image diffusion models (Briglia et al., attacks on the
trajectory; docs/science.md section 3), per image.

    r = trajectory_attack_report(D, latents, labels, steps=18, attack_step=12, budget=0.5)
    r["deviation"]            # (B,) ||D(x_k + delta, sigma_k, y) - D(x_k, sigma_k, y)||_2
    r["final_distance"]       # (B,) ||attacked - clean||_2 of the final samples
    r["clean_images"], r["attacked_images"]   # uint8 (B, 32, 32, 3), for a grid side by side

:func:`dmat_core.diffusion.flow.trajectory_attack` (shared with the toys) runs Heun to step k, perturbs x_k
inside the noise-unit box (||delta||_inf <= budget sigma_k) to maximise the denoiser's deviation,
and finishes the sampling from there. The clean run here continues from the same x_k by the same
restarted Heun steps, so the two differ only by delta: budget 0 gives the clean samples bit for bit.
"""
from __future__ import annotations

import math

import torch

from ..diffusion.edm import edm_sigmas
from ..diffusion.flow import deviation, trajectory_attack
from ..diffusion.samplers import edm_heun

__all__ = ["trajectory_attack_report"]


def trajectory_attack_report(D, latents: torch.Tensor, labels=None, steps: int = 18,
                             attack_step: int = 12, budget: float = 0.5, n_iter: int = 10,
                             restarts: int = 1, seed: int = 0, keep_best: bool = True,
                             **sigma_kw) -> dict:
    """The trajectory attack on a batch, with the unattacked run beside it.

    D: a denoiser D(x, sigma, labels) (e.g. `build_image_denoiser`), latents (B, ...) standard
    normal, labels (B,) int64 or None. `keep_best` (default here) keeps each image's best PGD
    iterate, so the deviation is never below the random start's. Returns tensors per sample:
    `clean`, `attacked` (final samples), `x_k`, `x_k_adv`, `deviation` (L2 over all non-batch
    dims), `deviation_rms` (per dimension), `delta_linf` (||delta||_inf / sigma_k, <= budget),
    `final_distance`, `final_rms`; `sigma_k`; `summary` (means as floats); and for 4-D samples
    `clean_images` / `attacked_images` (uint8 NHWC of [-1, 1] images).
    """
    attacked, st = trajectory_attack(D, latents, steps, attack_step, budget, n_iter, restarts, seed,
                                     labels=labels, keep_best=keep_best, return_state=True, **sigma_kw)
    x_k, x_adv, s_k = st["x_k"], st["x_k_adv"], st["sigma_k"]
    clean = None
    with torch.no_grad():
        for clean in edm_heun(D, x_k / s_k, edm_sigmas(steps, **sigma_kw)[attack_step:], labels):
            pass
    d = math.prod(x_k.shape[1:])
    dev = deviation(D, x_k, x_adv, s_k, labels)                                   # (B,)
    dist = (attacked - clean).flatten(1).double().norm(dim=1)                     # (B,)
    r = {"clean": clean, "attacked": attacked, "x_k": x_k, "x_k_adv": x_adv, "sigma_k": s_k,
         "deviation": dev, "deviation_rms": dev / math.sqrt(d),
         "delta_linf": (x_adv - x_k).flatten(1).abs().amax(1).double() / s_k,
         "final_distance": dist, "final_rms": dist / math.sqrt(d)}
    r["summary"] = {k: float(r[k].mean()) for k in ("deviation_rms", "final_rms", "delta_linf")}
    r["summary"].update(sigma_k=s_k, budget=float(budget), attack_step=attack_step, steps=steps)
    if clean.ndim == 4:
        from .pixels import model_to_image
        r["clean_images"], r["attacked_images"] = model_to_image(clean), model_to_image(attacked)
    return r
