"""Quality of a generated set against answers known in advance, the paper's filtering against a
brute-force sort, and FID: skipped with its reason offline, right where torch-fidelity can run."""
import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

from dmat_core.cli.main import main
from dmat_core.images.gendata import load_generated, save_generated
from dmat_core.images.quality import (class_balance, class_probabilities, fid_score, filter_generated,
                                      open_generated, quality_report, top_fraction_per_class)
from dmat_core.images.unet import build_image_denoiser, save_image_denoiser
from dmat_core.robust.classifiers import SmallCNN

K = 10


class IndexClassifier(nn.Module):
    """Image i is filled with the value i; the classifier reads i back from the pixels and answers
    label[i] on the subset `right`, label[i] + 1 elsewhere, with probability p for its answer."""

    def __init__(self, labels, right, p):
        super().__init__()
        answer = np.where(right, labels, (labels + 1) % K)
        probs = np.full((len(labels), K), (1 - p) / (K - 1))
        probs[np.arange(len(labels)), answer] = p
        self.register_buffer("logits", torch.tensor(np.log(probs), dtype=torch.float32))
        self.unused = nn.Parameter(torch.zeros(1))            # a device to read from

    def forward(self, x):                                       # x (B, 3, 32, 32) in [0, 1]
        return self.logits[(x[:, 0, 0, 0] * 255).round().long()]


def indexed_images(n):
    return np.repeat(np.arange(n, dtype=np.uint8), 32 * 32 * 3).reshape(n, 32, 32, 3)


def test_quality_report_on_a_known_answer():
    labels = np.arange(40) % K                                  # 4 images per class
    right = np.zeros(40, bool)
    right[[0, 10, 20, 30, 1, 11, 2]] = True                     # class 0: all 4, class 1: 2, class 2: 1
    model = IndexClassifier(labels, right, p=0.7)
    probs = class_probabilities(model, indexed_images(40), batch_size=16)
    r = quality_report(probs, labels)
    assert r["accuracy"] == pytest.approx(7 / 40)
    assert r["per_class_accuracy"][:4] == [1.0, 0.5, 0.25, 0.0]
    assert r["mean_confidence"] == pytest.approx((7 * 0.7 + 33 * 0.3 / 9) / 40, rel=1e-6)
    assert r["per_class_confidence"][1] == pytest.approx((2 * 0.7 + 2 * 0.3 / 9) / 4, rel=1e-6)
    assert r["counts"] == [4] * K and r["balance_max_min"] == 1.0 and r["label_entropy_ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="labels span"):
        quality_report(probs, labels + 1)


def test_class_balance():
    b = class_balance(np.array([0, 0, 1, 2]), 3)                # histogram (1/2, 1/4, 1/4)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert b["counts"] == [2, 1, 1] and b["balance_max_min"] == 2.0
    assert b["label_entropy_ratio"] == pytest.approx(h / math.log(3))
    b = class_balance(np.array([2, 2, 2]), 4)
    assert b["label_entropy_ratio"] == 0.0 and b["balance_max_min"] is None and b["missing_classes"] == [0, 1, 3]


def brute_force_top(scores, labels, fraction):
    classes, counts = np.unique(labels, return_counts=True)
    k = math.floor(fraction * counts.min() + 1e-9)
    keep = []
    for c in classes:
        idx = sorted((i for i in range(len(labels)) if labels[i] == c), key=lambda i: (-scores[i], i))
        keep += idx[:k]
    return sorted(keep), k


def test_top_fraction_matches_a_brute_force_sort():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat([0, 1, 2], [10, 7, 12]))
    scores = rng.integers(0, 5, len(labels)) / 4                # many ties
    for fraction in (0.2, 0.5, 1.0):
        keep, info = top_fraction_per_class(scores, labels, fraction)
        want, k = brute_force_top(scores, labels, fraction)
        assert keep.tolist() == want and info["kept_per_class"] == {0: k, 1: k, 2: k}
        for c in range(3):
            assert info["threshold_per_class"][c] == min(scores[i] for i in want if labels[i] == c)
    for bad in (0.0, 1.5, 0.1):                                 # 0.1 of 7 keeps nothing
        with pytest.raises(ValueError):
            top_fraction_per_class(scores, labels, bad)


def small_cnn(path=None):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SmallCNN(num_classes=K, width=4).eval()
    if path:
        torch.save({"model_state_dict": model.state_dict()}, path)
    return model


def test_filter_keeps_the_classifiers_top_fraction(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(60) % K
    save_generated(tmp_path / "a.npz", images[:25], labels[:25])
    save_generated(tmp_path / "b.npz", images[25:], labels[25:])
    model = small_cnn()
    parts = [load_generated(tmp_path / p) for p in ("a.npz", "b.npz")]
    info = filter_generated(parts, model, tmp_path / "top.npz", fraction=0.5, batch_size=7)
    probs = class_probabilities(model, images)
    want, k = brute_force_top(probs[np.arange(60), labels], labels, 0.5)
    x, y = load_generated(tmp_path / "top.npz")
    assert k == 3 and info["n_kept"] == 30 and np.array_equal(x, images[want]) and np.array_equal(y, labels[want])
    assert np.bincount(y).tolist() == [3] * K


def test_generate_and_filter_from_the_cli(tmp_path, capsys):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_image_denoiser(tmp_path / "dm.pt", build_image_denoiser("tiny", num_classes=K))
    small_cnn(tmp_path / "cls.pt")
    cls = ["--arch", "small-cnn", "--arch-kw", '{"width": 4}']
    assert main(["generate", "--checkpoint", str(tmp_path / "dm.pt"), "--out", str(tmp_path / "g"),
                 "--per-class", "2", "--shard-size", "7", "--steps", "2", "--no-progress",
                 "--filter-classifier", str(tmp_path / "cls.pt"), "--filter-arch", "small-cnn",
                 "--filter-arch-kw", '{"width": 4}', "--keep", "0.5", "--filtered", str(tmp_path / "f1.npz")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 20 and summary["filter"]["n_kept"] == 10
    assert main(["gen-filter", str(tmp_path / "g"), "--classifier", str(tmp_path / "cls.pt"), *cls,
                 "--keep", "0.5", "--out", str(tmp_path / "f2.npz")]) == 0
    assert (tmp_path / "f1.npz").read_bytes() == (tmp_path / "f2.npz").read_bytes()
    with pytest.raises(SystemExit) as e:                        # never over an existing file
        main(["gen-filter", str(tmp_path / "g"), "--classifier", str(tmp_path / "cls.pt"), *cls,
              "--out", str(tmp_path / "f2.npz")])
    assert e.value.code == 2
    capsys.readouterr()
    assert main(["gen-quality", str(tmp_path / "g"), "--classifier", str(tmp_path / "cls.pt"), *cls,
                 "--out", str(tmp_path / "q.json")]) == 0
    q = json.loads((tmp_path / "q.json").read_text())
    probs = class_probabilities(small_cnn(), np.concatenate([x for x, _ in open_generated(tmp_path / "g")]))
    assert q["counts"] == [2] * K and q["accuracy"] == pytest.approx(float((probs.argmax(1) == np.arange(20) % K).mean()))


# ----------------------------------------------------------------------------- FID
def test_fid_skipped_without_the_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)   # import fails as if not installed
    r = fid_score(indexed_images(4), indexed_images(4))
    assert r["fid"] is None and r["fid_skipped"].startswith("FID skipped: torch-fidelity is not installed")


def test_fid_skipped_offline(monkeypatch, tmp_path):
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    r = fid_score(indexed_images(4), indexed_images(4), download=False)
    assert r["fid"] is None and "not cached" in r["fid_skipped"] and r["fid_skipped"].startswith("FID skipped:")
    monkeypatch.setattr(fe, "URL_INCEPTION_V3", "http://127.0.0.1:9/weights-inception.pth")  # refused at once
    r = fid_score(indexed_images(4), indexed_images(4))
    assert r["fid"] is None and "could not be fetched" in r["fid_skipped"]
    assert not [p for p in (tmp_path / "torch").rglob("*") if p.is_file()]    # no partial download left
    with pytest.raises(FileNotFoundError):
        fid_score(indexed_images(4), indexed_images(4), weights=tmp_path / "missing.pth")


@pytest.mark.slow  # Inception-v3 at 299x299 on a CPU: ~20 s on a quiet 2-core machine, 100 s under load
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 8 points: singular covariances
def test_fid_with_random_inception_weights_matches_the_frechet_formula(tmp_path):
    """With random (He-initialised) Inception weights saved as a local weights file, torch-fidelity's
    FID through fid_score equals the Frechet distance of features computed here from the same network."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    scipy_linalg = pytest.importorskip("scipy.linalg")

    class Unloaded(fe.FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):
            return None

    torch.save({}, tmp_path / "empty.pt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp_path / "empty.pt"))
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[:, :16] = 0                                               # top half black
    r = fid_score(a, b, weights=tmp_path / "inception.pth", device="cpu", batch_size=8)
    with torch.no_grad():
        fa, fb = (net(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())[0].double().numpy() for x in (a, b))
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    want = ((fa.mean(0) - fb.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert want > 1 and r["fid"] == pytest.approx(want, rel=1e-4)
