"""Flow measures against truths that cannot be faked: the Jacobian of a linear denoiser, straight
and bent paths, copies of the training set, and an attack that must match a brute-force search."""
import math

import pytest
import torch

from dmat_core.diffusion.flow import denoiser_deviation_attack, trajectory_attack, trajectory_stats
from dmat_core.diffusion.samplers import latent_noise, run
from dmat_core.toys.mixtures import GaussianMixture, anisotropic, ring8, subspace
from dmat_core.toys.smoothness import jacobian_frobenius, memorization_rate

f64 = torch.float64


def test_jacobian_of_a_linear_denoiser():
    """N(0, v I): D = v/(v + sigma^2) x, so ||J||_F = v/(v + sigma^2) sqrt(d) exactly."""
    v, d = 0.5, 3
    dist = GaussianMixture.isotropic(torch.zeros(1, d), std=math.sqrt(v))
    for method in ("exact", "hutchinson"):
        rows = jacobian_frobenius(dist.denoiser, dist, [0.1, 1.0], n=16, method=method, dtype=f64)
        for r in rows:
            want = v / (v + r["sigma"] ** 2) * math.sqrt(d)
            assert r["jac_fro"] == pytest.approx(want, rel=1e-9)
            assert r["jac_fro_exact"] == pytest.approx(want, rel=1e-9)


def test_hutchinson_agrees_with_exact():
    dist = anisotropic(d=8, cond=10.0)
    ex = jacobian_frobenius(dist.denoiser, dist, [0.3], n=64, method="exact", dtype=f64)[0]
    hu = jacobian_frobenius(dist.denoiser, dist, [0.3], n=64, method="hutchinson", n_probe=64,
                            dtype=f64)[0]
    assert hu["jac_fro"] == pytest.approx(ex["jac_fro"], rel=0.05)
    hi = subspace(d=64, k=4)          # J = U U^T / (1 + s^2): ||J||_F = sqrt(k) / 1.25
    r = jacobian_frobenius(hi.denoiser, hi, [0.5], n=32, dtype=f64)[0]
    assert r["jac_fro"] == pytest.approx(math.sqrt(4) / 1.25, rel=0.05)    # Hutchinson in d = 64


def test_trajectory_stats_of_straight_and_bent_paths():
    t = torch.linspace(0, 1, 11, dtype=f64)
    line = torch.stack([t, 2 * t], 1)[:, None, :]                         # (S+1, 1, 2)
    s = trajectory_stats(line)
    assert s["length"] == pytest.approx(math.sqrt(5)) and s["straightness"] == pytest.approx(1.0)
    assert s["turning"] == pytest.approx(0.0, abs=1e-6)
    corner = torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=f64)[:, None, :]
    s = trajectory_stats(corner)
    assert s["length"] == pytest.approx(3.0) and s["straightness"] == pytest.approx(1 / 3)
    assert s["turning"] == pytest.approx(math.pi / 2)
    sig = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0])
    path = torch.cat([torch.full((2, 1, 2), 9.0, dtype=f64), line[:3]])   # first states dropped
    assert trajectory_stats(path, sig, sigma_max=1.0)["length"] == pytest.approx(0.2 * math.sqrt(5))


def test_memorization_rate():
    dist = ring8()
    train = dist.sample(32, torch.Generator().manual_seed(0))
    copies = train[torch.randint(32, (500,), generator=torch.Generator().manual_seed(1))]
    m = memorization_rate(copies + 1e-4, train, dist)
    assert m["mem_rate"] == 1.0 and m["mem_rate_fresh"] < 0.3 and m["nn_ratio"] < 0.1
    fresh = dist.sample(4000, torch.Generator().manual_seed(2))
    m = memorization_rate(fresh, train, dist)
    assert abs(m["mem_rate"] - m["mem_rate_fresh"]) < 0.04 and 0.8 < m["nn_ratio"] < 1.2
    with pytest.raises(ValueError):
        memorization_rate(fresh, train)


def test_deviation_attack_stays_in_box_and_matches_brute_force():
    """On ring8's exact denoiser, PGD with restarts finds (nearly) the deviation a 201x201 grid
    search finds (one start can stop at a local maximum: opposite corners of the box)."""
    dist = ring8()
    sigma, budget = 0.5, 0.6
    x = torch.tensor([[1.6, 0.9], [0.3, 2.2], [-1.0, -1.0]], dtype=f64)
    xa = denoiser_deviation_attack(dist.denoiser, x, sigma, budget, n_iter=40, restarts=5,
                                   generator=torch.Generator().manual_seed(0))
    assert ((xa - x).abs() <= sigma * budget + 1e-12).all()
    dev = ((dist.denoiser(xa, sigma) - dist.denoiser(x, sigma)) ** 2).sum(1)
    g = torch.linspace(-1, 1, 201, dtype=f64) * sigma * budget
    grid = torch.cartesian_prod(g, g)                                      # (201^2, 2)
    for i in range(3):
        cand = x[i] + grid
        brute = ((dist.denoiser(cand, sigma) - dist.denoiser(x[i:i + 1], sigma)) ** 2).sum(1).max()
        assert dev[i] >= 0.95 * brute


def test_trajectory_attack_budget_zero_is_the_plain_sampler():
    dist = ring8()
    lat = latent_noise(200, 2, torch.Generator().manual_seed(0), dtype=f64)
    plain = run(dist.denoiser, lat, "heun", 18)
    same = trajectory_attack(dist.denoiser, lat, 18, attack_step=12, budget=0.0)
    assert torch.allclose(plain, same, atol=1e-9)
    hit = trajectory_attack(dist.denoiser, lat, 18, attack_step=12, budget=1.0)
    assert (hit - plain).norm(dim=1).mean() > 1e-3
    with pytest.raises(ValueError):
        trajectory_attack(dist.denoiser, lat, 18, attack_step=18)


def test_jacobian_sq_norm_of_a_linear_denoiser_any_shape():
    """D(x) = A x has ||J||_F^2 = ||A||_F^2 at every point: exact to rounding, and Hutchinson
    within its sampling error, for vectors and for image-shaped inputs."""
    from dmat_core.diffusion.flow import jacobian_sq_norm
    g = torch.Generator().manual_seed(0)
    A = torch.randn(12, 12, generator=g, dtype=torch.float64)
    D = lambda x, s: (x.flatten(1) @ A.T).reshape(x.shape)
    truth = float((A ** 2).sum())
    x = torch.randn(5, 12, generator=g, dtype=torch.float64)
    assert torch.allclose(jacobian_sq_norm(D, x, 0.3, "exact"), torch.full((5,), truth, dtype=torch.float64))
    img = torch.randn(64, 3, 2, 2, generator=g, dtype=torch.float64)
    est = jacobian_sq_norm(D, img, 0.3, "hutchinson", n_probe=64, generator=g)
    assert est.shape == (64,) and abs(float(est.mean()) / truth - 1) < 0.05
    with pytest.raises(ValueError, match="method"):
        jacobian_sq_norm(D, x, 0.3, "finite-differences")
