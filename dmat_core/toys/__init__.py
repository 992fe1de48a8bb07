"""Layer 2 -- the exact half: distributions whose density is known at every noise level.

``mixtures`` (Gaussian mixtures with exact ``log_prob``, ``score`` and ``denoiser`` at every
sigma; presets ring8, grid25, plane3d, subspace, anisotropic), ``corruption`` (noisy inliers and
outliers, and the exact mixture they come from), ``metrics`` (NLL against the entropy, sliced W2
against its floor, MMD, mode coverage, manifold residual, score error), ``smoothness`` (the
denoiser's Jacobian on noised true points, memorization against fresh true samples), ``nets``
and ``train`` (a small sigma-conditioned MLP and its resumable trainer, standard or with AT for
diffusion models), ``gaussians`` (the two-class Gaussian world of Schmidt et al., Gaussian
generators fitted to labelled, more labelled or pseudo-labelled points, their closed-form KL and
W2) and ``affine_dm`` (an affine denoiser for that trainer, and the exact Gaussian law of its Heun
samples). Every error measured here is exact, not estimated against a reference net.
"""
