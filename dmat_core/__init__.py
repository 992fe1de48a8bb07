"""dmat_core: exact toy distributions, diffusion samplers, attacks and trainers behind the dmat notebooks.

Layers, bottom to top (no module imports one above it):
    toys, diffusion         known densities; sigma schedules, conversions, preconditioning
    samplers, metrics       DDPM / DDIM / EDM samplers over one denoiser interface; exact metrics
    experiments, cli        the demo and studies, the `dmat` command line
"""
__version__ = "0.1.0"
