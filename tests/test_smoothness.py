"""The held-out likelihood gap on exact denoisers whose answer is known: the true model scores
the truth and generalises, a collapsed model loses on held-out points, a model of the training
set itself (memorization) scores its training points far above held-out ones."""
import torch

from dmat_core.toys.mixtures import GaussianMixture, ring8
from dmat_core.toys.smoothness import likelihood_gap


def test_true_collapsed_and_memorizing_models():
    dist = ring8()
    train = dist.sample(64, torch.Generator().manual_seed(1))
    true = likelihood_gap(dist.denoiser, dist, train, n=200, seed=0)
    assert abs(true["heldout_ll"] - true["heldout_ll_exact"]) < 0.02
    assert abs(true["ll_gap"]) < 3 * (true["heldout_ll_se"] ** 2 + true["train_ll_se"] ** 2) ** 0.5 + 0.05

    collapsed = GaussianMixture.isotropic(dist.means, 0.02)
    c = likelihood_gap(collapsed.denoiser, dist, train, n=200, seed=0)
    assert c["heldout_ll"] < true["heldout_ll"] - 1.0          # collapse loses under a proper score

    copies = GaussianMixture.isotropic(train, 0.02)            # the (smoothed) training set itself
    m = likelihood_gap(copies.denoiser, dist, train, n=64, seed=0)
    assert m["ll_gap"] > 2.0 and m["heldout_ll"] < true["heldout_ll"]
