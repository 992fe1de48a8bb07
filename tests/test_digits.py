"""scikit-learn's handwritten digits through the image pipelines: the loader returns the real data,
the Frechet distance in a classifier's features behaves as a distance should, and a U-Net trained
at the digits preset draws digits a classifier recognises."""
import hashlib

import numpy as np
import pytest
import torch

from dmat_core.images.datasets import class_names, dataset_info, load_images
from dmat_core.images.digits import digits_grey_to_uint8, load_digits
from dmat_core.images.quality import classifier_features, feature_frechet, frechet_distance


def test_the_loader_returns_the_real_digits():
    x, y = load_images("digits", train=True)
    xt, yt = load_images("digits", train=False)
    assert x.shape == (1297, 8, 8, 1) and xt.shape == (500, 8, 8, 1)
    assert x.dtype == xt.dtype == np.uint8 and y.dtype == yt.dtype == np.int64
    assert np.bincount(yt).tolist() == [50] * 10                    # 50 test images of every class
    assert np.bincount(y, minlength=10).tolist() == [128, 132, 127, 133, 131, 132, 131, 129, 124, 130]
    # the first training image, a 6: its pixels, known (split seed 0)
    assert int(y[0]) == 6 and int(x[0].sum()) == 4192
    assert hashlib.sha256(x[0].tobytes()).hexdigest()[:16] == "0e4bb266133a19cc"
    # every scan is there once: the grey levels of the two splits are those of scikit-learn's set
    from sklearn.datasets import load_digits as sk
    raw = digits_grey_to_uint8(sk().images)[..., None]
    key = lambda a: sorted(map(bytes, a.reshape(len(a), -1)))      # noqa: E731
    assert key(np.concatenate([x, xt])) == key(raw)
    assert set(map(int, np.unique(x))) <= {int(round(255 * g / 16)) for g in range(17)}
    assert class_names("digits") == [str(k) for k in range(10)]
    info = dataset_info("digits")
    assert (info.shape, info.num_classes, info.flip) == ((8, 8, 1), 10, False)


def test_the_split_is_fixed_by_its_seed():
    a, b = load_digits(True, split_seed=0), load_digits(True, split_seed=0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = load_digits(True, split_seed=1)
    assert not np.array_equal(a[1], c[1])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="grey levels"):
        digits_grey_to_uint8(np.array([0.5]))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_images("mnist")
    with pytest.raises(ValueError, match="n_test_per_class"):
        load_digits(n_test_per_class=500)


def test_frechet_distance_of_gaussians_is_the_closed_form():
    g = np.random.default_rng(0)
    a = g.normal(size=(200_000, 2)) * [1.0, 2.0]
    b = g.normal(size=(200_000, 2)) * [2.0, 1.0] + [1.0, 0.0]
    # |mu_a - mu_b|^2 + tr(Ca + Cb - 2 (Ca Cb)^1/2) with Ca = diag(1, 4), Cb = diag(4, 1): 1 + 10 - 2 * 4
    assert frechet_distance(a, b) == pytest.approx(3.0, abs=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(a, b[:, :1])


@pytest.fixture(scope="module")
def judge():
    """A standard SmallCNN of the real training digits (about 5 s on one core)."""
    from dmat_core.images.data import to_tensor_images
    from dmat_core.robust.classifiers import build_classifier
    torch.manual_seed(0)
    x, y = load_images("digits")
    xt, yt = to_tensor_images(x), torch.as_tensor(y)
    m = build_classifier("small-cnn", width=16, in_channels=1)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    for epoch in range(8):
        for idx in torch.randperm(len(y)).split(64):
            loss = torch.nn.functional.cross_entropy(m(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def test_frechet_is_near_zero_between_real_halves_and_grows_with_noise(judge):
    x = np.concatenate([load_images("digits", train=False)[0], load_images("digits")[0]])
    a, b = x[::2], x[1::2]                                         # two halves of all 1,797 digits
    g = np.random.default_rng(0)

    def noisy(imgs, std):
        return np.clip(imgs + g.normal(0, 255 * std, imgs.shape), 0, 255).round().astype(np.uint8)

    d = [feature_frechet(judge, a, noisy(b, s) if s else b) for s in (0.0, 0.1, 0.2, 0.4)]
    # measured: 0.18 (the finite-sample floor of ~900 vs ~900 images), then 0.52, 1.95, 5.8
    assert d[0] < 0.5 * d[1], d                                   # real vs real: near 0 next to any noise
    assert d[0] < d[1] < d[2] < d[3], d                           # more noise, further away
    assert classifier_features(judge, a[:5]).shape == (5, 64)


def test_a_digits_unet_draws_digits_the_judge_recognises(judge, tmp_path):
    """The digits preset, shortened to 600 steps (~30 s on one core): measured 95% of the 200 samples
    labelled as the class asked for (chance: 10%); the threshold 60% leaves room for the machine."""
    from dmat_core.images.dm_config import make_dm_config
    from dmat_core.images.dm_train import train_dm
    from dmat_core.images.gendata import load_generated
    from dmat_core.images.generate import generate
    from dmat_core.images.quality import class_probabilities
    cfg = make_dm_config("digits", steps=600, checkpoint_every=600, out_dir=str(tmp_path / "dm"), progress=False)
    train_dm(cfg)
    r = generate(str(tmp_path / "dm" / "checkpoint.pt"), tmp_path / "gen", per_class=20, steps=12, seed=0,
                 merge_to=tmp_path / "set.npz", progress=False, device="cpu")
    x, y = load_generated(tmp_path / "set.npz", shape=(8, 8, 1))
    assert r["n"] == 200 and x.shape == (200, 8, 8, 1)
    acc = float((class_probabilities(judge, x).argmax(1) == y).mean())
    assert acc > 0.6, acc
