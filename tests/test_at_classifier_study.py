"""The generated-data-for-AT study on a known 2D density: end to end in quick mode, its
configuration, its command line and errors, and its data sources."""
import argparse
import json

import pytest
import torch

from dmat_core.cli.main import build_parser
from dmat_core.robust.optimum2d import bayes_classifier
from dmat_core.studies import at_classifier_study as study
from dmat_core.studies.at_classifier_report import markdown_table
from dmat_core.studies.at_classifier_setup import class_mixture, make_dist


def test_quick_study_writes_valid_results_table_and_figure(tmp_path):
    res = study.run_study(tmp_path, seeds=2, quick=True, progress=False,
                          variants=("none", "good-dm", "true"), clf_steps=20, n_gen=200)
    for f in ("results.json", "table.md", "boundaries.png"):
        assert (tmp_path / f).is_file()
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["summary"]) == {"none", "good-dm", "true"} and len(data["runs"]) == 6
    for v, s in data["summary"].items():
        r = s["robust_acc"]
        assert r["n"] == 2 and 0 <= r["mean"] <= 1 and r["std"] >= 0
        assert s["robust_acc"]["mean"] <= s["clean_acc"]["mean"] + 1e-12
        assert s["robust_lower"]["mean"] <= r["mean"] + 1e-12
    for run in data["runs"]:
        m = run["metrics"]
        assert m["pgd_only"] == 0 and m["pgd_acc"] >= m["robust_acc"] - 1e-12   # exact <= PGD
    assert "label_agreement" in data["summary"]["good-dm"] and "nll" in data["summary"]["true"]
    opt = data["reference"]["optimal"]
    assert opt["lower"] <= opt["value"] <= opt["upper"] and data["reference"]["bayes_robust_acc"] <= 1
    assert set(data["paired"]) == {"good-dm", "true"} and len(data["claim"]) == 3
    table = (tmp_path / "table.md").read_text()
    assert "| (a) real only |" in table and "±" in table and "optimal robust accuracy" in table
    assert res["config"]["clf_steps"] == 20 and res["config"]["size"] == "quick"


def test_data_sources():
    cfg = study.study_config(quick=True, dm_steps=12, dm_weak_steps=4, n_gen=50)
    dist = make_dist(cfg)
    assert dist.num_classes == 2 and torch.equal(dist.labels, torch.arange(8) % 2)
    x, y = study.real_points(dist, 5, seed=0)
    assert x.shape == (10, 2) and y.tolist() == [0] * 5 + [1] * 5
    post = bayes_classifier(dist)(x.double()).argmax(1)
    assert (post == y).float().mean() > 0.8                   # drawn from the right class
    x2, _ = study.real_points(dist, 5, seed=0)
    assert torch.equal(x, x2)                                 # a seed fixes the real points
    gen, _ = study.generated_data(x, y, cfg, seed=0)
    assert set(gen) == {"weak-dm", "good-dm"}
    for xg, yg in gen.values():
        assert xg.shape == (100, 2) and torch.isfinite(xg).all() and yg.sum() == 50
    q = study.data_quality(dist, x, y, x, y)
    assert q["nn_dist"] == 0.0 and q["label_agreement"] > 0.8
    cm = class_mixture(dist, 1)
    assert torch.allclose(cm.means, dist.means[1::2]) and cm.weights.sum() == pytest.approx(1.0)


def test_three_class_preset_quick(tmp_path):
    """K = 3: a three-logit classifier, one diffusion model per class, exact robust accuracy on
    three-class points, and the optimum bracketed by the K-class bounds."""
    res = study.run_study(tmp_path, "ring9-3class", seeds=2, quick=True, progress=False,
                          variants=("none", "good-dm"), clf_steps=20, n_gen=100)
    assert res["config"]["classes"] == 3 and len(res["runs"]) == 4
    for run in res["runs"]:
        m = run["metrics"]
        assert m["pgd_only"] == 0 and 0 <= m["robust_lower"] <= m["robust_acc"] <= m["clean_acc"]
    assert res["summary"]["good-dm"]["label_agreement"]["mean"] > 0
    opt = res["reference"]["optimal"]
    assert opt["lower"] <= opt["value"] <= opt["upper"] and opt["refine"] == 2
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("**ring9-3class** (std 0.3, radius 2.25, 3 classes)") and "LP upper bound" in table
    assert (tmp_path / "boundaries.png").stat().st_size > 10_000


def test_three_class_data_sources():
    cfg = study.study_config("ring9-3class", quick=True, dm_steps=12, dm_weak_steps=4, n_gen=30)
    dist = make_dist(cfg)
    assert dist.num_classes == 3 and torch.equal(dist.labels, torch.arange(9) % 3)
    two = make_dist(study.study_config()).means
    gap3, gap2 = (dist.means[1] - dist.means[0]).norm(), (two[1] - two[0]).norm()
    assert abs(float(gap3 - gap2)) < 0.02                     # neighbours as far apart as on ring8-alt
    x, y = study.real_points(dist, 5, seed=0)
    assert x.shape == (15, 2) and y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert (bayes_classifier(dist)(x.double()).argmax(1) == y).float().mean() > 0.8
    gen, _ = study.generated_data(x, y, cfg, seed=0)
    for xg, yg in gen.values():
        assert xg.shape == (90, 2) and torch.bincount(yg).tolist() == [30, 30, 30]
    f = study.train_classifier(x, y, gen["good-dm"], {**cfg, "clf_steps": 3}, seed=0)
    assert f(x).shape == (15, 3)


def test_committed_two_class_table_is_what_markdown_table_renders():
    """The two-class results in results/at_classifier stay valid: their table renders unchanged."""
    from pathlib import Path
    folder = Path(study.__file__).resolve().parents[2] / "results" / "at_classifier"
    if not (folder / "results.json").is_file():
        pytest.skip("no committed study")
    res = json.loads((folder / "results.json").read_text())
    assert markdown_table(res) + "\n" == (folder / "table.md").read_text()
    older = json.loads((folder / "results.json").read_text())
    older["config"].pop("classes")                           # a file written before K classes existed
    assert markdown_table(older) == markdown_table(res)


def test_presets_and_config():
    for name in study.PRESETS:
        for quick in (False, True):
            cfg = study.study_config(name, quick)
            assert cfg["n_real"] >= 2 and 0 < cfg["dm_weak_steps"] < cfg["dm_steps"]
    assert study.study_config("ring8-alt-linf")["norm"] == "linf"
    assert study.study_config("few-real")["n_real"] == 16
    assert study.study_config(eps=0.1)["eps"] == 0.1
    assert study.study_config("ring9-3class")["classes"] == 3


@pytest.mark.parametrize("bad", [dict(eps=-0.1), dict(norm="l1"), dict(preset="ring9"),
                                 dict(loss="mart"), dict(n_real=1), dict(seeds=0),
                                 dict(variants=("none", "gan")), dict(dm_weak_steps=50),
                                 dict(unsup_fraction=1.0), dict(colour="red"),
                                 dict(classes=3), dict(classes=1, modes=8), dict(dist="grid")])
def test_bad_input_is_a_clear_error(tmp_path, bad):
    kw = {"quick": True, "progress": False, **bad}
    with pytest.raises(ValueError):
        study.run_study(tmp_path, **kw)


def test_command_line(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    study.add_parser(parser.add_subparsers())
    a = parser.parse_args(["at-classifier-study", "--preset", "few-real", "--eps", "0.2",
                           "--norm", "linf", "--seeds", "4", "--out", str(tmp_path), "--quick"])
    assert a.eps == 0.2 and a.seeds == 4 and a.func is study._main
    seen = {}
    monkeypatch.setattr(study, "run_study", lambda *args, **kw: seen.update(args=args, kw=kw))
    assert a.func(a) == 0
    assert seen["args"][1] == "few-real" and seen["kw"]["eps"] == 0.2 and seen["kw"]["norm"] == "linf"
    a = build_parser().parse_args(["toy", "at-classifier-study", "--quick"])   # wired into `dmat`
    assert a.func is study._main and a.out == "results/at_classifier"


@pytest.mark.slow
def test_true_samples_lift_robust_accuracy_to_the_optimum(tmp_path):
    """Full sizes, two seeds: fresh samples of the true density raise the exact robust accuracy
    over real points only, up to the certified optimum (within the test set's sampling error)."""
    res = study.run_study(tmp_path, seeds=2, progress=False, variants=("none", "true"))
    d = res["paired"]["true"]
    assert d["wins"] == 2 and d["mean"] > 0.01
    ref = res["reference"]
    top = res["summary"]["true"]["robust_acc"]["mean"]
    assert top <= ref["optimal"]["upper"] + 3 * ref["test_stderr"]
    assert top >= ref["optimal"]["lower"] - 3 * ref["test_stderr"]
