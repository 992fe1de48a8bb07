"""The image U-Net as an EDM denoiser: zero-initialised output (D = c_skip x), labels, shapes, the
parameter counts of the sizes, the sampler's one code path, the checkpoint loader, image scaling.

Parameter counts (10 classes, 32x32; asserted exactly below):
    tiny   49,779      small  7,000,899      large  57,644,803
"""
import math

import numpy as np
import pytest
import torch

from dmat_core.common.checkpoint import atomic_save
from dmat_core.diffusion import samplers
from dmat_core.diffusion.edm import CountingDenoiser, edm_sigmas
from dmat_core.images.unet import (UNET_SIZES, build_image_denoiser, denoiser_arch, image_to_model,
                                   load_image_denoiser, model_to_image, save_image_denoiser)

PARAMS = {"tiny": 49_779, "small": 7_000_899, "large": 57_644_803, "digits": 181_795}


def _nonzero_output(D, seed=0):
    """Give the zero-initialised output conv (and attention projections) random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in D.named_parameters():
            if "out_conv" in name or "proj" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return D


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return build_image_denoiser("tiny", **kw)


@pytest.mark.parametrize("size", list(UNET_SIZES))
def test_parameter_counts(size):
    D = build_image_denoiser(size)
    assert sum(p.numel() for p in D.parameters()) == PARAMS[size]
    assert denoiser_arch(D)["size"] == size


def test_zero_output_layer_makes_the_denoiser_c_skip_x():
    D = _tiny()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.01, 0.3, 2.0, 80.0])
    c_skip, _, _ = D.coefficients(sigma.reshape(-1, 1, 1, 1))
    out = D(x, sigma, torch.tensor([0, 3, 7, 9]))
    assert out.shape == x.shape
    assert torch.equal(out, c_skip * x)


def test_labels_condition_the_output():
    D = _nonzero_output(_tiny()).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    a = D(x, 0.5, torch.tensor([0, 1, 2]))
    b = D(x, 0.5, torch.tensor([5, 1, 2]))
    assert torch.equal(a[1:], b[1:])                    # same label, same image: same output
    assert (a[0] - b[0]).abs().max() > 1e-4             # another label: another output
    with pytest.raises(ValueError, match="class-conditional"):
        D(x, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        D(x, 0.5, torch.tensor([0, 1, 10]))
    U = _tiny(num_classes=0)
    assert U(x, 0.5).shape == x.shape
    with pytest.raises(ValueError, match="unconditional"):
        U(x, 0.5, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("res,levels", [(16, [1, 2, 2]), (64, [1, 2]), (8, [1, 2, 2, 2])])
def test_other_resolutions(res, levels):
    D = _nonzero_output(_tiny(img_resolution=res, channel_mult=levels))
    x = torch.randn(2, 3, res, res)
    assert D(x, 1.0, torch.tensor([1, 2])).shape == (2, 3, res, res)
    with pytest.raises(ValueError, match="divisible"):
        build_image_denoiser("tiny", img_resolution=res + 2 ** (len(levels) - 2), channel_mult=levels)


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown U-Net size 'huge'"):
        build_image_denoiser("huge")
    with pytest.raises(ValueError, match="unknown U-Net setting"):
        build_image_denoiser("tiny", width=3)


def test_sampler_runs_the_network_through_the_same_code_path():
    """samplers.run on the U-Net denoiser = EDM Algorithm 2 written out here, and 2N - 1 calls."""
    D = _nonzero_output(_tiny(), seed=3).eval()
    latents = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    counted = CountingDenoiser(D)
    with torch.no_grad():
        ours = samplers.run(counted, latents, "heun", 5, labels=labels)
        t = edm_sigmas(5).tolist()                     # sigma_0 = 80 ... sigma_4 = 0.002, sigma_5 = 0
        x = latents * t[0]
        for i in range(5):
            d = (x - D(x, t[i], labels)) / t[i]
            x_next = x + (t[i + 1] - t[i]) * d
            if i < 4:
                d2 = (x_next - D(x_next, t[i + 1], labels)) / t[i + 1]
                x_next = x + (t[i + 1] - t[i]) * (0.5 * d + 0.5 * d2)
            x = x_next
    assert counted.nfe == samplers.nfe("heun", 5) == 9
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-6)
    assert (ours - latents * 80).abs().max() > 1             # the network did move the samples


def test_checkpoint_round_trip_and_refusals(tmp_path):
    D, E = _nonzero_output(_tiny(), 5), _nonzero_output(_tiny(), 6)
    save_image_denoiser(tmp_path / "dm.pt", D, E, step=7)
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([1, 2])
    for ema, ref in ((True, E), (False, D)):
        L, arch = load_image_denoiser(tmp_path / "dm.pt", ema=ema, arch="tiny")
        assert arch == denoiser_arch(D) and not L.training
        assert not any(p.requires_grad for p in L.parameters())
        with torch.no_grad():
            assert torch.equal(L(x, 0.7, y), ref.eval()(x, 0.7, y))
    with pytest.raises(ValueError, match=r"another architecture: size='tiny' in the file, 'small' expected"):
        load_image_denoiser(tmp_path / "dm.pt", arch="small")
    with pytest.raises(ValueError, match=r"num_classes=10 in the file, 100 expected"):
        load_image_denoiser(tmp_path / "dm.pt", arch={"num_classes": 100, "img_resolution": 32})
    # a file of another kind: a train-at checkpoint, a bare state dict, not a torch file at all
    atomic_save({"format": "dmat-at-train/1", "model": D.state_dict()}, tmp_path / "at.pt")
    atomic_save(D.state_dict(), tmp_path / "sd.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for name in ("at.pt", "sd.pt"):
        with pytest.raises(ValueError, match="not a dmat diffusion-model checkpoint"):
            load_image_denoiser(tmp_path / name)
    with pytest.raises(ValueError, match="not a valid checkpoint"):
        load_image_denoiser(tmp_path / "junk.pt")
    # an architecture description that does not fit the weights
    ck = torch.load(tmp_path / "dm.pt", weights_only=True)
    ck["arch"]["model_channels"] = 16
    atomic_save(ck, tmp_path / "lie.pt")
    with pytest.raises(ValueError, match="weights do not fit the architecture"):
        load_image_denoiser(tmp_path / "lie.pt")


def test_image_scaling_round_trip():
    u = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    x = image_to_model(u)
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert math.isclose(float(image_to_model(np.full((1, 1, 1, 3), 255, np.uint8))[0, 0, 0, 0]), 1.0)
    assert np.array_equal(model_to_image(x), u)
    assert np.array_equal(model_to_image(x + 0.003), u)                 # rounds to the nearest level
    assert model_to_image(torch.full((1, 3, 2, 2), 7.0)).max() == 255   # clamps
    with pytest.raises(ValueError, match="uint8"):
        image_to_model(u.astype(np.float32))
