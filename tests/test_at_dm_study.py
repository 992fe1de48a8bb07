"""The AT-for-DMs study runner: end to end in quick mode, its presets, its command line and
errors, and (slow) the paper's ordering on inlier noise on a fixed seed."""
import argparse
import json

import pytest
import torch

from dmat_core.studies import at_dm_setup
from dmat_core.studies import at_dm_study as study
from dmat_core.toys.corruption import corrupt, data_extent
from dmat_core.toys.mixtures import plane3d, ring8


def test_quick_study_writes_results_table_and_figures(tmp_path):
    res = study.run_study(tmp_path, "inlier-ring8", seeds=2, quick=True, progress=False,
                          variants=("standard", "adversarial"), steps=40, n_eval=300)
    for f in ("results.json", "table.md", "samples.png", "curves.png"):
        assert (tmp_path / f).is_file()
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["summary"]) == {"standard", "adversarial"} and len(data["runs"]) == 4
    s = data["summary"]["adversarial"]["off_mode_mass"]
    assert s["n"] == 2 and 0 <= s["mean"] <= 1 and s["std"] >= 0
    assert data["at"]["adversarial"]["lam"] == 0.3 and data["cost"]["adversarial"]["forward"] == 3
    assert data["reference"]["training set"]["corrupted_share"] == pytest.approx(0.9)
    table = (tmp_path / "table.md").read_text()
    assert "| standard |" in table and "±" in table and "*true samples*" in table
    assert res["config"]["steps"] == 40
    # the file keeps seed 0's loss history (the figure's), not every seed's
    hist = {(r["seed"], r["variant"]): len(r["history"]) for r in data["runs"]}
    assert all(n > 0 for (seed, _), n in hist.items() if seed == 0)
    assert all(n == 0 for (seed, _), n in hist.items() if seed > 0)
    # a cell over fewer seeds than the study (a run that could not measure it) says so
    from dmat_core.studies.at_dm_report import markdown_table, summarize
    assert "of 2 seeds" not in table
    data["runs"][0]["metrics"].pop("length")
    data["summary"] = summarize(data["runs"], ["standard", "adversarial"])
    part = markdown_table(data)
    row = next(line for line in part.splitlines() if line.startswith(f"| {data['runs'][0]['variant']} |"))
    assert row.endswith(" (1 of 2 seeds) |") and part.count("of 2 seeds") == 1
    assert "A cell marked (k of N seeds)" in part
    # the italic rows are seed 0's: the note gives the truth's held-out LL on seed 0's points to read them by
    refs = data["reference"]
    refs["true samples"]["heldout_ll"] = -9.876
    refs[next(k for k in refs if k != "true samples")]["heldout_ll"] = -1.5
    assert "on seed 0's held-out points the truth scores -9.876" in markdown_table(data)


def test_rerun_reuses_trained_models_and_adds_new_arms(tmp_path):
    kw = dict(seeds=1, quick=True, progress=False, steps=15, n_eval=200)
    first = study.run_study(tmp_path, "clean-ring8", variants=("standard",), **kw)
    # the arm's name before the rename is read as the new one
    again = study.run_study(tmp_path, "clean-ring8", variants=("standard", "adversarial-residual"), **kw)
    assert first["meta"]["computed"] == 1 and again["meta"]["computed"] == 1
    assert again["meta"]["reused"] == 1
    assert again["summary"]["standard"] == first["summary"]["standard"]
    assert again["at"]["fgsm-at-loss"]["attack_target"] == "residual" and "adversarial-residual" not in again["at"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="steps: 15 there, 16 now"):   # another configuration
        study.run_study(tmp_path, "clean-ring8", variants=("standard",), **{**kw, "steps": 16})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    other = study.run_study(tmp_path, "clean-ring8", variants=("standard",), overwrite=True, **{**kw, "steps": 16})
    assert other["meta"]["computed"] == 1                   # replaced with --overwrite: trained anew


def test_quick_attack_and_subspace_presets_run(tmp_path):
    res = study.run_study(tmp_path / "a", "trajectory-attack", seeds=1, quick=True, progress=False,
                          variants=("standard",), steps=20, n_eval=200)
    m = res["summary"]["standard"]
    assert "attack1_off_mode_mass" in m and m["attack0_mode_switch"]["mean"] == 0.0   # budget 0: the same samples
    assert 0.0 <= m["attack2_mode_switch"]["mean"] <= 1.0
    table = (tmp_path / "a" / "table.md").read_text()
    assert "Trajectory attack" in table and "| mode switches | budget 0.25 |" in table
    assert "| SW2 / floor, attacked - unattacked | budget 0.25 |" in table
    res = study.run_study(tmp_path / "s", "subspace-inlier", seeds=1, quick=True, progress=False,
                          variants=("random",), steps=5, n_eval=200, n_train=300)
    assert "residual_rms" in res["summary"]["random"] and (tmp_path / "s" / "samples.png").is_file()


def test_presets_and_sizes():
    for name in at_dm_setup.PRESETS:
        for quick in (False, True):
            cfg = at_dm_setup.study_config(name, quick)
            assert cfg["steps"] >= 1 and cfg["n_train"] >= 16
    assert at_dm_setup.study_config("memorization")["n_train"] == 32
    assert at_dm_setup.study_config("subspace-inlier")["dist_kw"]["d"] >= 256
    assert at_dm_setup.study_config("inlier-ring8", p=0.5)["p"] == 0.5


@pytest.mark.parametrize("bad", [dict(p=1.5), dict(q=-0.1), dict(variants=("standard", "trades")),
                                 dict(at={"lam": -1.0}), dict(at={"r_min": -0.1}),
                                 dict(at={"budget": 1.0}), dict(preset="ring9"), dict(seeds=0)])
def test_bad_input_is_a_clear_error(tmp_path, bad):
    kw = {"preset": "inlier-ring8", "quick": True, "progress": False, **bad}
    with pytest.raises(ValueError):
        study.run_study(tmp_path, **kw)


def test_command_line(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    study.add_parser(sub)
    a = parser.parse_args(["at-dm-study", "--dist", "ring8", "--corruption", "inlier", "--p", "0.9",
                           "--seeds", "3", "--out", str(tmp_path), "--lam", "0.5", "--quick"])
    assert a.p == 0.9 and a.seeds == 3 and a.lam == 0.5 and a.func is study._main
    seen = {}
    monkeypatch.setattr(study, "run_study", lambda *args, **kw: seen.update(args=args, kw=kw))
    assert a.func(a) == 0
    assert seen["args"][3] is True and seen["args"][5] == {"lam": 0.5}
    assert seen["kw"]["corruption"] == "inlier" and seen["kw"]["p"] == 0.9
    a = parser.parse_args(["at-dm-study", "--out", "x", "--target", "true-noise", "--sampler-sigma-min", "0.02",
                           "--shrink-sigmas", "0", "0.1", "--cache", "c", "--variants", "standard", "tweedie-shrinkage"])
    assert a.func(a) == 0
    assert seen["args"][5] == {"target": "true-noise"} and seen["kw"]["sampler_sigma_min"] == 0.02
    assert seen["kw"]["shrink_sigmas"] == [0.0, 0.1] and seen["kw"]["cache"] == "c"
    assert seen["args"][4] == ("standard", "tweedie-shrinkage")
    with pytest.raises(SystemExit):
        parser.parse_args(["at-dm-study", "--out", "x", "--variants", "trades"])


def test_corruptions():
    g = torch.Generator().manual_seed(0)
    x, m = corrupt(ring8(), 1000, "inlier", p=0.9, s=0.2, generator=g)
    assert m.sum() == 900 and x.shape == (1000, 2)
    x, m = corrupt(ring8(), 1000, "outlier", q=0.1, generator=g)
    assert m.sum() == 100 and (x[m].abs() <= 1.5 * data_extent(ring8()) + 1e-9).all()
    x, m = corrupt(ring8(), 1000, "outlier", q=0.1, outlier="cluster", generator=g)
    assert (x[m].mean(0) - 1.5 * data_extent(ring8()) / 2 ** 0.5).abs().max() < 0.05
    dist = plane3d()
    x, m = corrupt(dist, 1000, "offplane", p=0.5, s=0.3, generator=g)
    U = dist.U[0]
    res = (x - (x @ U) @ U.T).norm(dim=1)
    assert (res[~m] < 1e-12).all() and res[m].mean() > 0.15
    with pytest.raises(ValueError):
        corrupt(ring8(), 10, "offplane")


@pytest.mark.slow
def test_inlier_noise_ordering_reproduces(tmp_path):
    """The paper's proof of concept on a fixed seed: trained on ring8 with 90% inlier noise,
    AT-adversarial leaves clearly less off-mode mass than standard training, and the invariance
    ablation is the worst. The adversarial arm here (`fgsm-at-loss`, this project's reading, not the
    paper's arm) takes its FGSM step on the AT residual: with
    the paper's prediction-gap objective the gain on ring8 varies from seed to seed (0.18-0.32
    against 0.33, results/at_dm/NOTES.md), while on off-plane noise it is robust (next test)."""
    torch.set_num_threads(1)
    res = study.run_study(tmp_path, "inlier-ring8", seeds=1, progress=False, steps=2000,
                          variants=("standard", "fgsm-at-loss", "invariance"))
    s = {v: res["summary"][v]["off_mode_mass"]["mean"] for v in res["summary"]}
    assert s["fgsm-at-loss"] < 0.5 * s["standard"]
    assert s["invariance"] > s["standard"]


@pytest.mark.slow
def test_offplane_noise_ordering_reproduces(tmp_path):
    """plane3d with 90% off-plane noise, fixed seed: the paper's AT-adversarial (FGSM on the
    prediction gap) leaves a clearly smaller distance to the plane than standard training."""
    torch.set_num_threads(1)
    res = study.run_study(tmp_path, "plane3d-offplane", seeds=1, progress=False, steps=2000,
                          variants=("standard", "adversarial"))
    s = {v: res["summary"][v]["residual_rms"]["mean"] for v in res["summary"]}
    assert s["adversarial"] < 0.8 * s["standard"]


@pytest.mark.parametrize("name,kind,kw", [("ring8", "inlier", {}), ("plane3d", "offplane", {}),
                                          ("subspace", "inlier", {"d": 16, "k": 3})])
def test_corrupted_distribution_is_what_corrupt_draws(name, kind, kw):
    """The mixture of the corrupted training distribution has the covariance of the points
    `corrupt` draws, and the noise level it was made with maximises their likelihood."""
    from dmat_core.toys.corruption import corrupted_distribution
    from dmat_core.toys.mixtures import make_distribution
    dist = make_distribution(name, **kw)
    x, _ = corrupt(dist, 100_000, kind, p=0.9, s=0.2, generator=torch.Generator().manual_seed(0))
    mix = corrupted_distribution(dist, kind, p=0.9, s=0.2)
    w, mu = mix.weights, mix.means
    S = mix.U @ torch.diag_embed(mix.lam) @ mix.U.transpose(1, 2)
    S = S + mix.nu[:, None, None] * (torch.eye(dist.dim) - mix.U @ mix.U.transpose(1, 2))
    m = (w[:, None] * mu).sum(0)
    cov = (w[:, None, None] * (S + mu[:, :, None] * mu[:, None, :])).sum(0) - torch.outer(m, m)
    emp = torch.cov(x.T)
    assert (emp - cov).abs().max() < 0.02 * cov.diagonal().max()
    at = 0.0 if mix.full_rank else 0.01      # the clean part of subspace data has no density
    nll = {s: float(-corrupted_distribution(dist, kind, 0.9, s).log_prob(x[:20_000], at).mean())
           for s in (0.15, 0.2, 0.25)}
    assert min(nll, key=nll.get) == 0.2
    assert corrupted_distribution(dist, "clean") is dist
    assert corrupted_distribution(dist, "outlier") is None


def test_summary_shows_collapse_as_collapse(tmp_path):
    """A collapsed AT arm (no off-mode mass, narrow modes, far from the truth by SW2) is not a win:
    the summary gives the truth's value as the right one, calls the collapsed arm farther than
    standard training on the divergence and on the spread, and does not say AT works."""
    import json

    from dmat_core.studies.at_dm_report import summary_table
    runs = []
    for seed in range(4):
        jitter = 0.01 * seed
        runs.append({"seed": seed, "variant": "standard", "metrics": {
            "off_mode_mass": 0.03 + jitter / 10, "sw2_ratio": 1.2 + jitter, "spread_ratio": 0.95 + jitter / 10}})
        runs.append({"seed": seed, "variant": "random", "metrics": {
            "off_mode_mass": 0.0, "sw2_ratio": 4.0 + 2 * jitter, "spread_ratio": 0.3 - jitter / 10}})
    results = {"meta": {"seeds": 4}, "summary": {"standard": {}, "random": {}}, "runs": runs,
               "reference": {"true samples": {"off_mode_mass": 0.011, "sw2_ratio": 1.0, "spread_ratio": 1.0}}}
    (tmp_path / "clean-ring8").mkdir()
    (tmp_path / "clean-ring8" / "results.json").write_text(json.dumps(results))
    table = summary_table(tmp_path)
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| clean-ring8")}
    assert "| 0.011 |" in rows["off-mode mass"]
    assert "random: " in rows["SW2 / floor"] and "(farther, 4 seeds)" in rows["SW2 / floor"]
    assert "(farther, 4 seeds)" in rows["spread"] and "| no: random vs standard" in rows["spread"]
    assert "**not shown** in: clean-ring8 (SW2 / floor)" in table


def test_a_metric_only_some_seeds_report_is_summarised_over_those():
    """The Tweedie baseline reports `heldout_ll_failed` only on seeds whose tuned sigma_s > 0; the
    10-seed clean-ring8 rerun stopped on it (KeyError) after every model was measured."""
    from dmat_core.studies.at_dm_report import summarize
    runs = [{"variant": "tweedie-shrinkage", "metrics": {"heldout_ll": -1.0}},
            {"variant": "tweedie-shrinkage", "metrics": {"heldout_ll": -0.5, "heldout_ll_failed": 2}},
            {"variant": "tweedie-shrinkage", "metrics": {"heldout_ll": -0.6, "heldout_ll_failed": 0}}]
    s = summarize(runs, ["tweedie-shrinkage"])["tweedie-shrinkage"]
    assert s["heldout_ll"]["n"] == 3 and abs(s["heldout_ll"]["mean"] + 0.7) < 1e-12
    assert s["heldout_ll_failed"] == {"mean": 1.0, "std": s["heldout_ll_failed"]["std"], "n": 2}
