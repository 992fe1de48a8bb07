"""The AT-for-DMs study's defences against a hostile reader: a collapsed model loses every headline
measure; the baselines (Tweedie shrinkage, early stopping, the ideal standard model) are tuned on
validation data and are the standard model where their knob is off; AT is said to work only where
it beats all of them; cached models and runs are reused, and a cache file of another kind is refused."""
import json

import numpy as np
import pytest
import torch

from dmat_core.studies import at_dm_study as study
from dmat_core.studies.at_dm_baselines import choose_snapshot, ideal_standard, tune_shrinkage
from dmat_core.studies.at_dm_measure import ExactDenoiser, measure_denoiser
from dmat_core.studies.at_dm_setup import migrate_results, study_config, training_set
from dmat_core.studies.at_dm_summary import (KEY_MEASURES, at_verdict, claims_table, findings_markdown, findings_table,
                                             headline_rows, run_values, summary_table, target)
from dmat_core.toys.metrics import sample_metrics
from dmat_core.toys.mixtures import ring8
from dmat_core.toys.nets import data_std
from dmat_core.toys.smoothness import memorization_rate

RING8_PRESETS = ("clean-ring8", "inlier-ring8", "outliers-ring8", "memorization", "trajectory-attack")


def _measure(preset: str, **kw):
    """The true model (exact denoiser of ring8) and a collapsed one (exact denoiser of ring8 with
    mode std 0.02 instead of 0.1), measured like the study's models at a small size, and what fresh
    true samples score: a results dict the summary's functions read."""
    cfg = study_config(preset, quick=True, n_eval=1000, ll_n=64, jac_n=16, **kw)
    dist, x, _ = training_set(cfg, 0)
    runs = []
    for name, mixture in (("true", dist), ("collapsed", ring8(std=0.02))):
        m, _ = measure_denoiser(ExactDenoiser(mixture, data_std(x)), dist, x, cfg, seed=0)
        runs.append({"seed": 0, "variant": name, "metrics": m})
    fresh = dist.sample(cfg["n_eval"], torch.Generator().manual_seed(99_000))
    ref = sample_metrics(dist, fresh, seed=0, mmd=False)
    ref.update(memorization_rate(fresh, x, dist, seed=0))
    return {"runs": runs, "reference": {"true samples": ref}}


def test_a_collapsed_model_loses_every_headline_measure():
    """Every measure the summary shows for a ring8 setting, read against its right value as the
    summary reads it (held-out likelihood: below the truth's; SW2 / floor and its value under the
    strongest attack: higher; the spread: further from 1; off-mode mass and NLL - H: further from
    what fresh true samples score; the train - held-out likelihood gap: further from the true
    density's gap; mode switches under the strongest attack: more), puts the collapsed model
    farther from right than the true model."""
    attack = _measure("trajectory-attack", attack_budgets=[0.0, 2.0], attack_restarts=1, attack_iter=5)
    memo = _measure("memorization")
    checked = []
    for preset in RING8_PRESETS:
        r = memo if preset == "memorization" else attack
        for key, label, right in headline_rows(preset):
            t = target(r, key, right)
            true, collapsed = run_values(r, "true", key)[0], run_values(r, "collapsed", key)[0]
            assert np.isfinite(t), (preset, key)
            assert abs(collapsed - t) > abs(true - t), (preset, label, t, true, collapsed)
            checked.append(key)
    assert set(checked) == {k for p, k, _, _ in KEY_MEASURES if p in RING8_PRESETS} | {
        "heldout_ll", "sw2_ratio", "spread_ratio"}
    m = {v["variant"]: v["metrics"] for v in attack["runs"]}
    assert m["collapsed"]["heldout_ll"] < m["true"]["heldout_ll"] - 5          # a proper score: far lower
    assert m["collapsed"]["spread_ratio"] < 0.3 < 0.9 < m["true"]["spread_ratio"]


def _synthetic(tmp_path, at_ll, shrink_ll, n=5):
    """A clean-ring8 results file: standard, one AT arm and the three baselines, held-out
    log-likelihoods per seed (the truth's: 0)."""
    runs = []
    for seed in range(n):
        e = 0.01 * (seed - n // 2)
        for arm, ll in (("standard", -1.0), ("adversarial", at_ll), ("tweedie-shrinkage", shrink_ll),
                        ("early-stopping", -0.9), ("ideal-standard", -1.1)):
            runs.append({"seed": seed, "variant": arm, "metrics": {
                "heldout_ll": ll + e * (1 + (arm == "adversarial")), "heldout_ll_exact": 0.0,
                "sw2_ratio": 1.2, "spread_ratio": 1.0, "off_mode_mass": 0.02}})
    results = {"meta": {"seeds": n}, "summary": {r["variant"]: {} for r in runs}, "runs": runs,
               "reference": {"true samples": {"off_mode_mass": 0.011}}}
    (tmp_path / "clean-ring8").mkdir(exist_ok=True)
    (tmp_path / "clean-ring8" / "results.json").write_text(json.dumps(results))
    return results


def test_at_works_only_where_it_beats_every_baseline(tmp_path):
    r = _synthetic(tmp_path, at_ll=-0.5, shrink_ll=-0.4)        # beats standard, not shrinkage
    best, diffs, works = at_verdict(r, "heldout_ll", "exact")
    assert best == "adversarial" and not works
    assert diffs["standard"][0] == pytest.approx(-0.5) and diffs["tweedie-shrinkage"][0] == pytest.approx(0.1)
    table = summary_table(tmp_path)
    row = next(line for line in table.splitlines() if "held-out log-likelihood" in line)
    assert "(closer, 5 seeds)" in row and "| no: adversarial vs tweedie-shrinkage +0.100" in row
    assert "**not shown** in: clean-ring8 (held-out log-likelihood (PF-ODE))" in table
    assert "(a) tweedie-shrinkage" in table.splitlines()[0] and "(c) ideal-standard" in table.splitlines()[0]

    r = _synthetic(tmp_path, at_ll=-0.3, shrink_ll=-0.4)        # beats them all
    assert at_verdict(r, "heldout_ll", "exact")[2]
    table = summary_table(tmp_path)
    assert "**AT works** (" in table and "in: clean-ring8 (held-out log-likelihood (PF-ODE))" in table
    row = next(line for line in table.splitlines() if "held-out log-likelihood" in line)
    assert "| yes: adversarial beats all (tweedie-shrinkage by -0.100" in row
    rows = findings_table(tmp_path).splitlines()
    assert len(rows) == 3 and rows[2].startswith("| clean-ring8 (5 seeds) | held-out log-likelihood (PF-ODE) (0.000) "
                                                 "| adversarial | -0.300 ± 0.014 | -0.700 ± 0.007 (closer) ")
    assert "| (a) tweedie-shrinkage: -0.100 ± 0.007 (closer) | **yes** |" in rows[2]

    _synthetic(tmp_path, at_ll=-0.39, shrink_ll=-0.4)                 # within noise of the shrinkage baseline
    row = findings_table(tmp_path).splitlines()[2]
    assert "(a) tweedie-shrinkage: -0.010 ± 0.007 (no difference shown) | no |" in row


def test_the_claims_table_reads_mode_switches_per_budget_beside_the_proper_score(tmp_path):
    """A trajectory-attack file where the AT arm switches fewer modes than standard training at
    budget 2 but is farther on the held-out likelihood: its switch row says it beats all, and the
    same row ends with the proper score's loss; the damage row is against the same model at budget 0."""
    runs = []
    for seed in range(5):
        e = 0.002 * (seed - 2)
        for arm, switch, ll, d in (("standard", 0.7, -0.3, 0.2), ("invariance", 0.55, -1.0, 1.2),
                                   ("tweedie-shrinkage", 0.7, -0.3, 0.2), ("early-stopping", 0.71, -0.3, 0.2),
                                   ("ideal-standard", 0.72, -0.31, 0.2)):
            runs.append({"seed": seed, "variant": arm, "metrics": {
                "heldout_ll": ll + e * (1 + (arm == "invariance")), "heldout_ll_exact": -0.31, "sw2_ratio": 1.0,
                "attack0_sw2_ratio": 1.0, "attack0_mode_switch": 0.0, "attack2_sw2_ratio": 1.0 + d + e,
                "attack2_mode_switch": switch + e, "attack0.5_sw2_ratio": 1.0, "attack0.5_mode_switch": switch / 10}})
    (tmp_path / "trajectory-attack").mkdir()
    (tmp_path / "trajectory-attack" / "results.json").write_text(json.dumps(
        {"meta": {"seeds": 5}, "summary": {r["variant"]: {} for r in runs}, "runs": runs, "reference": {}}))
    rows = claims_table(tmp_path).splitlines()
    assert [r.split(" | ")[1] for r in rows[2:]] == ["mode switches, budget 0.5 (0)", "mode switches, budget 2 (0)",
                                                      "SW2 / floor damage, budget 2 (0)"]
    assert rows[3].startswith("| trajectory-attack (5 seeds) | mode switches, budget 2 (0) | invariance | 0.550 ")
    assert "| -0.150 ± 0.000 (closer) |" in rows[3] and rows[3].endswith("| **yes** | +0.680 ± 0.004 (farther) |")
    assert "| +1.000 ± 0.000 (farther) |" in rows[4] and "| no |" in rows[4]
    text = findings_markdown(tmp_path)
    assert text.startswith(findings_table(tmp_path)) and text.rstrip().endswith(rows[-1])
    (tmp_path / "trajectory-attack" / "results.json").unlink()
    assert claims_table(tmp_path) == "" and findings_markdown(tmp_path) == findings_table(tmp_path) + "\n"


def test_results_of_before_the_rename_read_as_the_new_arm():
    old = {"summary": {"adversarial-residual": {"x": 1}}, "at": {"adversarial-residual": {"variant": "adversarial"}},
           "runs": [{"seed": 0, "variant": "adversarial-residual", "metrics": {}}]}
    new = migrate_results(old)
    assert list(new["summary"]) == ["fgsm-at-loss"] and new["runs"][0]["variant"] == "fgsm-at-loss"
    assert new["at"]["fgsm-at-loss"]["target"] == "prediction"        # the field added since, at its default
    assert old["runs"][0]["variant"] == "adversarial-residual"          # the input is not changed


def test_shrinkage_is_tuned_on_validation_data_and_early_stopping_chooses_the_better_model():
    """With the exact denoiser of the clean distribution any shrinkage lowers the validation
    likelihood (a proper score), so sigma_s = 0 is chosen; with the exact denoiser of the 90%-noisy
    training distribution (modes too wide), shrinking helps and sigma_s > 0 is chosen. Early
    stopping picks the clean model over the noisy one."""
    cfg = study_config("inlier-ring8", quick=True, tune_n=48, shrink_sigmas=[0.0, 0.1, 0.2])
    dist, x, _ = training_set(cfg, 0)
    clean, noisy = ExactDenoiser(dist, data_std(x)), ExactDenoiser(ideal_standard(dist, cfg), data_std(x))
    s_clean, rows = tune_shrinkage(clean, dist, cfg, seed=0)
    assert s_clean == 0.0 and [r["sigma_s"] for r in rows] == [0.0, 0.1, 0.2]
    assert rows[0]["select_by"] == "validation log-likelihood" and rows[0]["score"] > rows[2]["score"]
    s_noisy, rows = tune_shrinkage(noisy, dist, cfg, seed=0)
    assert s_noisy > 0 and max(r["score"] for r in rows) > rows[0]["score"]
    step, rows = choose_snapshot({10: noisy, 20: clean}, dist, cfg, seed=0)
    assert step == 20 and len(rows) == 2


TINY = dict(quick=True, progress=False, steps=10, n_eval=200, ll_n=16, tune_n=16, jac_n=8, n_train=400,
            snapshot_fracs=[0.5])


def test_baselines_off_are_the_standard_model_and_cached_work_is_reused(tmp_path, monkeypatch):
    """At sigma_s = 0 the shrinkage baseline is the standard model: the same samples and the same
    numbers, bit for bit. A second study with another budget floor takes standard training and every
    baseline from the cache (no model trained, numbers identical); one with another sampler sigma_min
    trains nothing and computes no likelihood and no tuned knob again (they are the model's), with the
    numbers of a study run without any cache; a cached value of other settings is refused."""
    cache = tmp_path / "cache"
    arms = ("standard", "adversarial", "tweedie-shrinkage", "early-stopping", "ideal-standard")
    first = study.run_study(tmp_path / "a", "inlier-ring8", seeds=1, variants=arms, shrink_sigmas=[0.0],
                            cache=cache, **TINY)
    by = {(r["seed"], r["variant"]): r for r in first["runs"]}
    views = np.load(tmp_path / "a" / "samples.npz")
    for s in range(1):
        std, shr = by[(s, "standard")]["metrics"], by[(s, "tweedie-shrinkage")]["metrics"]
        same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)   # NaN too
        assert shr.pop("shrink_sigma") == 0.0 and same(shr, std)
        assert np.array_equal(views[f"standard_seed{s}"], views[f"tweedie-shrinkage_seed{s}"])
        assert by[(s, "early-stopping")]["baseline"]["step"] in (5, 10)
        assert "heldout_ll" in by[(s, "ideal-standard")]["metrics"]
    assert first["meta"]["computed"] == 5 and first["meta"]["from_cache"] == 0
    assert len(list((cache / "models").glob("*.pt"))) == 3          # standard (+ its snapshot), adversarial
    trained = []
    real_fit = study.fit_toy_snapshots
    monkeypatch.setattr(study, "fit_toy_snapshots", lambda *a, **k: trained.append(1) or real_fit(*a, **k))
    second = study.run_study(tmp_path / "b", "inlier-ring8", seeds=1, variants=arms, shrink_sigmas=[0.0],
                             cache=cache, at={"r_min": 0.06}, **TINY)
    assert second["meta"]["from_cache"] == 4 and second["meta"]["computed"] == 1 and len(trained) == 1
    for a in arms[2:] + ("standard",):
        assert json.dumps(second["summary"][a]) == json.dumps(first["summary"][a])
    assert second["at"]["standard"]["r_min"] == 0.06                   # each folder's own options
    trained.clear()
    from dmat_core.studies import at_dm_measure
    counted = {"likelihood_gap": [], "tune_shrinkage": [], "choose_snapshot": []}
    for mod, name in ((at_dm_measure, "likelihood_gap"), (study, "tune_shrinkage"), (study, "choose_snapshot")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _n=name, **k: counted[_n].append(1) or _r(*a, **k))
    third = study.run_study(tmp_path / "c", "inlier-ring8", seeds=1, variants=arms, shrink_sigmas=[0.0],
                            cache=cache, sampler_sigma_min=0.02, **TINY)
    assert not trained and third["meta"]["computed"] == 5
    assert not any(counted.values())          # likelihoods and tuned knobs: the model's, read from the cache
    assert third["summary"]["standard"]["sw2_ratio"] != first["summary"]["standard"]["sw2_ratio"]
    assert third["summary"]["standard"]["heldout_ll"] == first["summary"]["standard"]["heldout_ll"]
    fresh = study.run_study(tmp_path / "d", "inlier-ring8", seeds=1, variants=arms, shrink_sigmas=[0.0],
                            sampler_sigma_min=0.02, **TINY)        # no cache: everything computed again
    assert len(counted["likelihood_gap"]) == 5 + 2 and len(counted["tune_shrinkage"]) == 1   # + 2 reference rows
    timing = ("train_seconds", "ms_per_step")                  # trained again here: only the clock differs
    strip = lambda r: json.dumps({a: {k: v for k, v in m.items() if k not in timing} for a, m in r["summary"].items()},
                                 sort_keys=True)           # NaN too
    assert strip(fresh) == strip(third)
    value = next(p for p in (cache / "values").glob("*.json")              # the standard model's tuned knob
                 if json.loads(p.read_text())["settings"].get("measure") == "tune_shrinkage")
    value.write_text(value.read_text().replace('"seed": 0', '"seed": 7').replace('"seed": 1', '"seed": 7'))
    with pytest.raises(ValueError, match="other settings than its name says"):
        study.run_study(tmp_path / "e", "inlier-ring8", seeds=1, variants=arms, shrink_sigmas=[0.0],
                        cache=cache, sampler_sigma_min=0.005, **TINY)


def test_a_cache_file_of_another_kind_is_refused_before_any_work(tmp_path):
    cfg = study_config("inlier-ring8", **{k: v for k, v in TINY.items() if k not in ("progress",)})
    from dmat_core.diffusion.losses import ATConfig
    from dmat_core.studies import at_dm_cache
    settings = at_dm_cache.model_settings(cfg, 0, ATConfig("standard").as_dict())
    path = at_dm_cache.model_path(tmp_path / "cache", settings)
    path.parent.mkdir(parents=True)
    torch.save({"format": "dmat-at-weights/1", "model_state_dict": {}}, path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="not a toy run"):
        study.run_study(tmp_path / "out", "inlier-ring8", seeds=1, variants=("standard",),
                        cache=tmp_path / "cache", **TINY)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and not (tmp_path / "out").exists()


def test_the_ideal_standard_model_is_left_out_only_where_it_does_not_exist(tmp_path):
    """Uniform outliers have no exact denoiser: by default the study runs without that baseline
    (and the summary does not ask an AT arm to beat it); asked for explicitly, it is refused."""
    assert study.run_study(tmp_path / "o", "outliers-ring8", quick=True, check_only=True) is None
    with pytest.raises(ValueError, match="ideal-standard"):
        study.run_study(tmp_path / "o", "outliers-ring8", quick=True, check_only=True,
                        variants=("standard", "ideal-standard"))
    assert not (tmp_path / "o").exists()
    from dmat_core.studies.at_dm_summary import required_opponents
    assert "ideal-standard" not in required_opponents({"config": {"corruption": "outlier"}})
    assert "ideal-standard" in required_opponents({"config": {"corruption": "inlier", "p": 0.9, "s": 0.2}})


def test_the_ideal_standard_model_is_no_bar_where_it_is_the_truth():
    """On clean data (or noise of std 0) the exact denoiser of the training distribution is the
    truth's: its held-out likelihood is the ceiling, so an AT arm is not asked to beat it, and a
    memorization run that beats standard training and both tuned baselines is called a win."""
    from dmat_core.studies.at_dm_summary import arm_verdict, required_opponents
    for cfg in ({"corruption": "clean"}, {"corruption": "inlier", "p": 0.9, "s": 0.0},
                {"corruption": "offplane", "p": 0.0, "s": 0.2}):
        assert required_opponents({"config": cfg}) == ("standard", "tweedie-shrinkage", "early-stopping")
    runs = [{"seed": s, "variant": a, "metrics": {"heldout_ll": v + 0.01 * s * (a == "invariance"),
                                                   "heldout_ll_exact": -0.3}}
            for s in range(4) for a, v in (("standard", -3.8), ("invariance", -1.4), ("tweedie-shrinkage", -3.8),
                                           ("early-stopping", -1.7), ("ideal-standard", -0.3))]
    r = {"config": {"corruption": "clean"}, "runs": runs}
    v = arm_verdict(r, "invariance", "heldout_ll", "exact")
    assert v["beats"] and v["hardest"] == "early-stopping" and v["vs_hardest"][0] == pytest.approx(-0.315)
    r["config"]["corruption"] = "inlier"
    r["config"].update(p=0.9, s=0.2)                       # a real corruption: the ideal is a bar again
    assert not arm_verdict(r, "invariance", "heldout_ll", "exact")["beats"]


def test_the_truth_row_holds_the_exact_held_out_likelihood_and_tables_show_it():
    """The *true samples* row of a study carries the truth's held-out log-likelihood: the exact
    log-density of the very points every model's held-out LL is measured on; the exact denoiser's
    PF-ODE likelihood of those points agrees within 0.02 nats; the table's first column is it."""
    from dmat_core.studies.at_dm_measure import reference_rows
    from dmat_core.studies.at_dm_report import COLUMNS_MODES
    cfg = study_config("clean-ring8", quick=True)
    dist, x, _ = training_set(cfg, 3)
    truth = reference_rows(cfg, 3)["true samples"]["heldout_ll"]
    m, _ = measure_denoiser(ExactDenoiser(dist, data_std(x)), dist, x, cfg, 3)
    assert truth == m["heldout_ll_exact"]
    assert abs(m["heldout_ll"] - truth) < 0.02
    assert COLUMNS_MODES[0][0] == "heldout_ll"


def test_a_sampler_stopped_near_sigma_data_is_measured_without_its_path():
    """The path length is taken over the sampler's states at sigma <= sigma_data; the shrinkage
    baseline stopped at sigma_s = sigma_data has two of them (sigma_s and 0), so its path is left out
    and every other measure is still made (the table's marking: test_at_dm_study)."""
    cfg = {**study_config("plane3d-offplane", quick=True, n_eval=200, jac_n=8), "ll_n": 0}   # no likelihood
    dist, x, _ = training_set(cfg, 0)
    D = ExactDenoiser(dist, data_std(x))
    full, _ = measure_denoiser(D, dist, x, cfg, seed=0)
    stopped, _ = measure_denoiser(D, dist, x, cfg, seed=0, shrink_sigma=D.sigma_data)
    assert "length" in full and "length" not in stopped and "straightness" not in stopped
    assert {"sw2_ratio", "residual_rms", "off_manifold_share"} <= set(stopped)
