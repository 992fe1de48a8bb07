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
    """The digits preset, shortened to 200 steps: measured 89% of the 200 samples labelled as the
    class asked for (95% at 600 steps; chance: 10%); the threshold 60% leaves room for the machine."""
    from dmat_core.images.dm_config import make_dm_config
    from dmat_core.images.dm_train import train_dm
    from dmat_core.images.gendata import load_generated
    from dmat_core.images.generate import generate
    from dmat_core.images.quality import class_probabilities
    cfg = make_dm_config("digits", steps=200, checkpoint_every=200, out_dir=str(tmp_path / "dm"), progress=False)
    train_dm(cfg)
    r = generate(str(tmp_path / "dm" / "checkpoint.pt"), tmp_path / "gen", per_class=20, steps=12, seed=0,
                 merge_to=tmp_path / "set.npz", progress=False, device="cpu")
    x, y = load_generated(tmp_path / "set.npz", shape=(8, 8, 1))
    assert r["n"] == 200 and x.shape == (200, 8, 8, 1)
    acc = float((class_probabilities(judge, x).argmax(1) == y).mean())
    assert acc > 0.6, acc


def test_train_at_and_eval_run_on_digits_with_a_generated_set(tmp_path):
    """The CIFAR-10 pipeline unchanged: TRADES on the real digits with 70% of each batch from a
    generated .npz of (N, 8, 8, 1) digits, then `dmat eval`, which reads the dataset from the checkpoint."""
    import json
    import subprocess
    import sys

    from dmat_core.images.gendata import save_generated
    from dmat_core.robust.config import make_config
    from dmat_core.robust.train import train_at
    x, y = load_images("digits")
    save_generated(tmp_path / "gen.npz", x[:300], y[:300], num_classes=10, shape=(8, 8, 1))
    cfg = make_config("digits", generated=str(tmp_path / "gen.npz"), unsup_fraction=0.7, steps=4, val_every=2,
                      checkpoint_every=2, out_dir=str(tmp_path / "at"), progress=False)
    r = train_at(cfg)
    assert r["steps"] == 4 and (tmp_path / "at" / "final.pt").is_file()
    save_generated(tmp_path / "cifar.npz", np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"\(N, 8, 8, 1\)"):       # a CIFAR-shaped set is refused, saying why
        train_at(make_config("digits", generated=str(tmp_path / "cifar.npz"), unsup_fraction=0.7, steps=1,
                             out_dir=str(tmp_path / "bad"), progress=False))
    out = subprocess.run([sys.executable, "-m", "dmat_core", "eval", "--checkpoint", str(tmp_path / "at" / "final.pt"),
                          "--n", "40", "--eps", "0.1", "--attacks", "clean,pgd",
                          "--out", str(tmp_path / "eval.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    e = json.loads((tmp_path / "eval.json").read_text())
    assert e["dataset"] == "digits" and e["n"] == 40 and 0 <= e["pgd"]["accuracy"] <= e["clean"]["accuracy"]


def test_digits_study_report_pairs_seeds_and_calls_orderings_only_beyond_two_standard_errors():
    from dmat_core.studies.digits_report import paired, verdict
    d = paired([0.80, 0.82, 0.81, 0.83, 0.80], [0.78, 0.79, 0.80, 0.80, 0.78])   # +0.022 +- 0.004
    assert d["n"] == 5 and d["mean"] == pytest.approx(0.022) and verdict(d) == "better"
    assert verdict(d, higher_is_better=False) == "worse"
    noisy = paired([0.8, 0.7, 0.9], [0.75, 0.85, 0.8])
    assert verdict(noisy) == "no difference shown"


@pytest.mark.slow
def test_digits_study_quick_runs_end_to_end(tmp_path):
    """`dmat digits-study --quick`: every stage (judge, DMs, generation, AT, evaluation, report)."""
    from dmat_core.studies.digits_study import QUICK, run_study
    sm = run_study(tmp_path, dict(QUICK), workers=1, progress=False)
    assert (tmp_path / "summary.md").is_file() and set(sm["at"]) == {"real", "weak", "good"}
    assert len(sm["at"]["real"]["clean_acc"]) == QUICK["seeds"]


def test_the_committed_digits_results_are_of_the_studys_own_settings():
    """README's digits tables come from results/digits/rows.json: its settings must be the study's
    FULL settings as the typed layer reads them, so rerunning the command reuses them."""
    import json
    from pathlib import Path

    from dmat_core.studies.digits_study import FULL, QUICK, check_settings
    assert check_settings(FULL) == FULL and check_settings(QUICK) == QUICK
    rows = Path(__file__).resolve().parents[1] / "results" / "digits" / "rows.json"
    meta = json.loads(rows.read_text())["meta"]
    assert check_settings(meta["settings"]) == FULL


def test_the_clean_only_baseline_keeps_exactly_the_images_the_noisy_runs_left_clean(tmp_path):
    """Experiment 2's baseline trains on the digits a 90%-noisy run of the same seed did not noise:
    `noisy_mask` must be the trainer's own draw, not another random 10%."""
    from dmat_core.images.dm_config import make_dm_config
    from dmat_core.images.dm_train import DMTrainer, noisy_mask
    x, _ = load_images("digits")
    for seed in (0, 3):
        cfg = make_dm_config("digits", noise_p=0.9, noise_std=0.2, seed=seed, out_dir=str(tmp_path / f"r{seed}"),
                             progress=False, device="cpu")
        mask = noisy_mask(len(x), 0.9, seed)
        assert torch.equal(DMTrainer(cfg).noisy.cpu(), mask)
        assert int((~mask).sum()) == round(0.1 * len(x)) == 130
    assert not torch.equal(noisy_mask(len(x), 0.9, 0), noisy_mask(len(x), 0.9, 1))


def test_the_copy_measure_calls_training_digits_copies_and_held_out_digits_fresh():
    from dmat_core.studies.digits_study import _copies
    x, _ = load_images("digits")
    xt, _ = load_images("digits", train=False)
    train = x[:130]
    own = _copies(train, train)
    assert own["nn_ratio"] == 0 and own["copy_rate"] == 1
    fresh = _copies(xt, train)
    assert fresh["nn_ratio"] == 1 and fresh["copy_rate"] == fresh["copy_rate_heldout"] < 0.05
