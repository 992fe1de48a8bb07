"""Metrics on cases whose answer is known: identical sets, a known shift, a dropped mode."""
import math

import pytest
import torch

from dmat_core.toys.metrics import (manifold_residual, mmd_rbf, mode_stats, mode_switches, nll, sample_metrics, score_error,
                                    sliced_w2, sw2_noise_floor)
from dmat_core.toys.mixtures import make_distribution


@pytest.fixture(scope="module")
def ring():
    return make_distribution("ring8")


@pytest.fixture(scope="module")
def xs(ring):
    return ring.sample(8000, torch.Generator().manual_seed(0))


def test_identical_sets(xs):
    assert sliced_w2(xs, xs) == 0.0
    assert abs(mmd_rbf(xs, xs.clone())) < 1e-3


def test_known_shift(xs):
    """Shifting by c: every projection moves by theta.c, so SW2 = |c| sqrt(E cos^2) = |c|/sqrt(2)
    in 2D (up to the finite set of directions)."""
    c = torch.tensor([0.6, -0.8], dtype=torch.float64)
    sw = sliced_w2(xs, xs + c, n_proj=4096)
    assert abs(sw - 1 / math.sqrt(2)) < 0.01
    assert mmd_rbf(xs, xs + c) > 0.05


def test_true_samples_score_as_truth(ring, xs):
    H, err = ring.entropy()
    assert abs(nll(ring, xs) - H) < 0.05
    m = mode_stats(ring, xs)
    assert m["modes_covered"] == 8 and m["weight_error"] < 0.015
    assert abs(m["off_mode_mass"] - math.exp(-4.5)) < 0.004   # P(chi2_2 > 9)
    assert abs(m["spread_ratio"] - 1) < 0.02
    full = sample_metrics(ring, xs, mmd=False)
    assert 0.6 < full["sw2_ratio"] < 1.5


def test_dropped_mode(ring):
    x, k = ring.sample(8000, torch.Generator().manual_seed(1), return_components=True)
    m = mode_stats(ring, x[k != 3])
    assert m["modes_covered"] == 7
    assert m["mode_weights"][3] == 0.0
    assert abs(m["weight_error"] - 0.125) < 0.02
    assert sample_metrics(ring, x[k != 3], mmd=False)["sw2_ratio"] > 3


def test_mass_between_modes_counts_as_off_mode(ring, xs):
    x = xs.clone()
    x[:800] = x[:800] * 0.5          # 10% pulled to radius 1: far from every mode
    m = mode_stats(ring, x)
    assert abs(m["off_mode_mass"] - (0.1 + 0.9 * math.exp(-4.5))) < 0.006
    assert nll(ring, x) > nll(ring, xs) + 4     # ~50 nats for 10% of the points


def test_noise_floor_is_cached_and_seeded(ring):
    """For a mixture the floor is dominated by the multinomial noise of the mode weights, so
    it falls only like n^(-1/4) (transporting mass ~n^(-1/2) over a fixed distance)."""
    f1 = sw2_noise_floor(ring, 1000, repeats=8)
    assert sw2_noise_floor(ring, 1000, repeats=8) == f1
    f16, _ = sw2_noise_floor(ring, 16000, repeats=8)
    assert 1.2 < f1[0] / f16 < 3.0                       # 16^(1/4) = 2, 16^(1/2) = 4


def test_manifold_residual_known_offset():
    dist = make_distribution("plane3d")
    x = dist.sample(500, torch.Generator().manual_seed(0))
    assert manifold_residual(dist, x)["residual_rms"] < 1e-12
    normal = torch.linalg.svd(dist.U[0].T).Vh[-1]         # unit normal of the plane
    r = manifold_residual(dist, x + 0.3 * normal)
    assert abs(r["residual_rms"] - 0.3) < 1e-9 and r["off_manifold_share"] == 1.0
    with pytest.raises(ValueError, match="full-rank"):
        manifold_residual(make_distribution("ring8"), x[:, :2])


def test_score_error_exact_and_scaled(ring):
    rows = score_error(ring.denoiser, ring, [0.1, 1.0], n=512, dtype=torch.float64)
    assert all(r["score_mse"] < 1e-20 for r in rows)
    half = lambda x, s, labels=None: 0.5 * ring.denoiser(x, s)          # a known wrong denoiser
    rows = score_error(half, ring, [1.0], n=512, dtype=torch.float64)
    assert rows[0]["score_mse"] > 0.1


def test_bad_input(ring):
    with pytest.raises(ValueError, match="non-finite"):
        nll(ring, torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        nll(ring, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="dimension mismatch"):
        sliced_w2(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="sigma > 0"):
        score_error(ring.denoiser, ring, [0.0])


def test_mode_switches_count_samples_that_change_mode(ring, xs):
    x = xs[:800]
    assert mode_switches(ring, x, x + 0.01) == 0.0                    # moved, in the same mode
    angle = 2 * math.pi / 8                                           # every sample rotated one mode on
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=x.dtype)
    assert mode_switches(ring, x, x @ rot.T) == 1.0
    half = torch.cat([x[:400] @ rot.T, x[400:]])
    assert mode_switches(ring, x, half) == 0.5
    with pytest.raises(ValueError, match="pairs rows"):
        mode_switches(ring, x, x[:10])
    with pytest.raises(ValueError, match="full-rank"):
        plane = make_distribution("plane3d")
        mode_switches(plane, plane.sample(5), plane.sample(5))
