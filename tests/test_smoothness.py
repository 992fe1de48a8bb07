"""The held-out likelihood gap on exact denoisers whose answer is known: the true model scores
the truth and generalises, a collapsed model loses on held-out points, a model of the training
set itself (memorization) scores its training points far above held-out ones; the nearest-neighbour
ratio at matched spread tells copying from narrowing."""
import pytest
import torch

from dmat_core.toys.mixtures import GaussianMixture, make_distribution, ring8
from dmat_core.toys.smoothness import likelihood_gap, memorization_rate


def test_true_collapsed_and_memorizing_models():
    dist = ring8()
    train = dist.sample(64, torch.Generator().manual_seed(1))
    true = likelihood_gap(dist.denoiser, dist, train, n=200, seed=0)
    assert abs(true["heldout_ll"] - true["heldout_ll_exact"]) < 0.02
    assert abs(true["ll_gap"]) < 3 * (true["heldout_ll_se"] ** 2 + true["train_ll_se"] ** 2) ** 0.5 + 0.05
    # the gap's right value is the true density's own gap on the same points: the true model meets it
    exact_gap = float(dist.log_prob(train, 0.002).mean() - dist.log_prob(
        dist.sample(200, torch.Generator().manual_seed(40_000)), 0.002).mean())
    assert true["ll_gap_exact"] == exact_gap and abs(true["ll_gap"] - exact_gap) < 0.03

    collapsed = GaussianMixture.isotropic(dist.means, 0.02)
    c = likelihood_gap(collapsed.denoiser, dist, train, n=200, seed=0)
    assert c["heldout_ll"] < true["heldout_ll"] - 1.0          # collapse loses under a proper score

    copies = GaussianMixture.isotropic(train, 0.02)            # the (smoothed) training set itself
    m = likelihood_gap(copies.denoiser, dist, train, n=64, seed=0)
    assert m["ll_gap"] > 2.0 and m["heldout_ll"] < true["heldout_ll"]


def test_nn_ratio_at_matched_spread_tells_copying_from_narrowing():
    """Narrowing the modes without copying lowers the raw nearest-neighbour ratio but not the one at
    matched spread; copying the training points lowers both."""
    dist = ring8()
    train = dist.sample(32, torch.Generator().manual_seed(0))
    fresh, comp = dist.sample(4000, torch.Generator().manual_seed(2), return_components=True)
    narrow = dist.means[comp] + 0.3 * (fresh - dist.means[comp])          # spread 0.3, no copies
    m = memorization_rate(narrow, train, dist, spread=0.3)
    assert m["nn_ratio"] < 0.8 and 0.9 < m["nn_ratio_matched"] < 1.1
    assert m["mem_rate_matched_fresh"] >= m["mem_rate_fresh"]
    copies = train[torch.randint(32, (4000,), generator=torch.Generator().manual_seed(1))] + 1e-4
    c = memorization_rate(copies, train, dist, spread=1.0)
    assert c["nn_ratio_matched"] < 0.01 and c["nn_ratio_matched"] == c["nn_ratio"]   # spread 1: the raw ratio
    for bad in (0.0, float("nan")):
        with pytest.raises(ValueError, match="matched spread"):
            memorization_rate(narrow, train, dist, spread=bad)
    plane = make_distribution("plane3d")
    with pytest.raises(ValueError, match="full-rank"):
        memorization_rate(plane.sample(50), plane.sample(20), plane, spread=0.5)
