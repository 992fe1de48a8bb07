"""Layer 5 -- plots for the notebooks: ``diffusion`` (densities, PF-ODE fields, trajectories, the
sigma slider, tables) and ``classifiers`` (image grids, adversarial examples, live training
curves, decision regions of 2D classifiers)."""
