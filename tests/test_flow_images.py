"""The trajectory attack on a class-conditional U-Net: the box holds, the deviation never ends below
the random start's, budget 0 is the clean run bit for bit, and the labels reach every call."""
import pytest
import torch

from dmat_core.diffusion.flow import deviation, trajectory_attack
from dmat_core.diffusion.samplers import latent_noise, run
from dmat_core.images.trajectory import trajectory_attack_report
from dmat_core.images.unet import build_image_denoiser

STEPS, K_STEP, BUDGET = 4, 2, 0.3


@pytest.fixture(scope="module")
def unet():
    """The tiny U-Net with every weight moved off its initialisation (the zero output conv would
    make D = c_skip x: no network to attack)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        D = build_image_denoiser("tiny", num_classes=4)
        with torch.no_grad():
            for p in D.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return D.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def batch():
    return latent_noise(3, (3, 32, 32), torch.Generator().manual_seed(1)), torch.tensor([0, 1, 3])


def test_budget_and_deviation_against_the_random_start(unet, batch):
    lat, y = batch
    r = trajectory_attack_report(unet, lat, y, STEPS, K_STEP, BUDGET, n_iter=4, seed=5)
    assert r["attacked"].shape == lat.shape and r["attacked_images"].shape == (3, 32, 32, 3)
    assert (r["delta_linf"] <= BUDGET * (1 + 1e-5)).all() and (r["delta_linf"] > 0.5 * BUDGET).all()
    # the random start the attack draws first: w0 = budget (2U - 1), U from a CPU generator seeded `seed`
    x_k, s_k = r["x_k"], r["sigma_k"]
    w0 = (2 * torch.rand(x_k.shape, generator=torch.Generator().manual_seed(5)) - 1) * BUDGET
    dev0 = deviation(unet, x_k, x_k + s_k * w0, s_k, y)
    assert (r["deviation"] >= dev0 * (1 - 1e-5)).all()
    assert r["deviation"].mean() > 1.2 * dev0.mean()           # the attack does work
    assert (r["final_distance"] > 0).all()
    # the toys' default (last iterate, not the best) runs on images with labels too
    last = trajectory_attack(unet, lat, STEPS, K_STEP, BUDGET, n_iter=4, seed=5, labels=y)
    assert last.shape == lat.shape and torch.isfinite(last).all()


def test_budget_zero_is_the_clean_run(unet, batch):
    lat, y = batch
    r = trajectory_attack_report(unet, lat, y, STEPS, K_STEP, 0.0)
    assert torch.equal(r["attacked"], r["clean"]) and (r["final_distance"] == 0).all()
    with torch.no_grad():
        plain = run(unet, lat, "heun", STEPS, labels=y)
    assert torch.allclose(r["clean"], plain, atol=1e-5)        # Heun restarted at x_k: rounding only


def test_labels_reach_the_attack(unet, batch):
    lat, y = batch
    a = trajectory_attack_report(unet, lat, y, STEPS, K_STEP, BUDGET, n_iter=2)
    b = trajectory_attack_report(unet, lat, (y + 1) % 4, STEPS, K_STEP, BUDGET, n_iter=2)
    assert not torch.equal(a["x_k"], b["x_k"]) and not torch.equal(a["attacked"], b["attacked"])
    with pytest.raises(ValueError, match="class-conditional"):
        trajectory_attack(unet, lat, STEPS, K_STEP, BUDGET)       # no labels for a conditional model
