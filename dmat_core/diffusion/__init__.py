"""Layer 1 -- diffusion models in EDM's sigma parametrisation, for any data shape.

``edm`` (EDM noise levels, DDPM schedules mapped to sigma, x0/eps/score conversions, the
preconditioning and the noise embedding), ``samplers`` (DDPM ancestral, DDIM, EDM Euler and
Heun over one denoiser ``D(x, sigma, labels=None)``), ``losses`` (the denoising loss and
*adversarial training for diffusion models*: random, adversarial, invariance -- Briglia et al.),
``flow`` (Jacobian norms, trajectory statistics, attacks on the sampling trajectory),
``likelihood`` (the exact log-likelihood of any denoiser through the probability-flow ODE),
``shrinkage`` (the Tweedie-shrinkage sampler: stop the ODE at sigma_s and return D(x, sigma_s);
its exact likelihood through the ODE and the change of variables of that last map).
Toys and images both build on this layer.
"""
