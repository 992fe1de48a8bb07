"""The generated-data study in any dimension (dmat_core/studies/gen_data_study.py): a quick run end
to end, every robust accuracy recomputed from the file alone, the truth scoring 0 divergence,
reuse of finished work, the batched trainer against dmat_core.robust.linear, bad input."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from dmat_core.cli.main import main
from dmat_core.robust.linear import linear_at_loss, robust_accuracy
from dmat_core.studies.gen_data_report import spearman, summary_markdown
from dmat_core.studies.gen_data_setup import DM_GENERATORS, GENERATORS, world_of
from dmat_core.studies.gen_data_study import pgd_at_losses, real_points, run_study, train_classifiers

F64 = torch.float64


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two quick runs (seconds): isotropic-linf in d = 2, 8 (affine DMs only for seed 0 in d = 8, as
    a run may keep DMs to the first seeds in high d, and MLP DMs only in d = 2), and lowrank-l2 with
    three generators."""
    root = tmp_path_factory.mktemp("gen_data")
    iso = run_study(root / "isotropic-linf", "isotropic-linf", seeds=2, quick=True, progress=False,
                    dm_high_d=4, dm_seeds_high_d=1, mlp_max_d=4)
    low = run_study(root / "lowrank-l2", "lowrank-l2", seeds=2, quick=True, progress=False, dims=[3], ns=[4],
                    generators=["truth", "mle", "dm-standard"])
    return root, iso, low


def _read(path):
    return json.loads(path.read_text())


def test_quick_run_writes_every_file(runs):
    root, iso, low = runs
    for name in ("isotropic-linf", "lowrank-l2"):
        for f in ("results.json", "table.md", "figure.png"):
            assert (root / name / f).is_file(), f"{name}/{f} missing"
    assert iso["meta"]["seconds"] < 60
    rows = _read(root / "isotropic-linf" / "results.json")["rows"]
    have = {(r["d"], r["seed"], r["generator"]) for r in rows}
    assert all((2, s, g) in have for s in (0, 1) for g in GENERATORS)
    assert all((8, 0, g) in have for g in DM_GENERATORS)
    assert not any((8, 1, g) in have for g in DM_GENERATORS)           # no DMs past dm_seeds_high_d
    assert {r["generator"] for r in low["rows"]} == {"none", "truth", "mle", "dm-standard"}
    for r in rows:
        for k in ("d", "n", "generator", "seed", "w", "b", "eps", "norm", "robust_acc_exact"):
            assert k in r
        if r["generator"] != "none":
            assert all(k in r for k in ("kl_pq", "kl_qp", "w2", "mean_angle_deg", "loglik"))
    table = (root / "isotropic-linf" / "table.md").read_text()
    assert "Spearman" in table and "best linear robust" in table
    assert "isotropic-linf" in summary_markdown({"isotropic-linf": iso, "lowrank-l2": low})


def test_every_robust_accuracy_recomputes_from_the_file(runs):
    root, _, _ = runs
    for name in ("isotropic-linf", "lowrank-l2"):
        res = _read(root / name / "results.json")
        worlds = res["meta"]["worlds"]
        for r in res["rows"]:
            w = worlds[str(r["d"])]
            got = robust_accuracy(r["w"], r["b"], w["mu"], w["Sigma"], r["eps"], r["norm"])
            # equal up to float64 rounding (BLAS sums in another order with another thread count)
            assert abs(got - r["robust_acc_exact"]) <= 1e-12, (name, r["d"], r["n"], r["generator"], r["seed"])
            assert got <= w["best_linear_upper"] + 1e-12


def test_truth_scores_zero_and_singular_fits_infinity(runs):
    root, _, _ = runs
    text = (root / "isotropic-linf" / "results.json").read_text()
    assert "Infinity" not in text and "NaN" not in text                # strict JSON: inf is 1e999
    rows = json.loads(text)["rows"]
    truth = [r for r in rows if r["generator"] == "truth"]
    assert truth and all(r["kl_pq"] == 0 and r["kl_qp"] == 0 and r["w2"] == 0 and r["mean_angle_deg"] == 0
                         for r in truth)
    singular = [r for r in rows if r["generator"] == "mle" and r["n"] <= r["d"]]   # rank n - 1 < d
    assert singular and all(r["kl_pq"] == math.inf and r["loglik"] == -math.inf for r in singular)
    assert all(r["kl_pq"] > 0 for r in rows if r["generator"] not in ("none", "truth"))


def test_rerun_reuses_every_cell(runs, tmp_path):
    root, iso, _ = runs
    again = run_study(root / "isotropic-linf", "isotropic-linf", seeds=2, quick=True, progress=False,
                      dm_high_d=4, dm_seeds_high_d=1, mlp_max_d=4)
    assert again["meta"]["cells_computed"] == 0 and again["meta"]["cells_reused"] == 8
    assert again["rows"] == iso["rows"]
    assert list((root / "isotropic-linf" / "cache").rglob("*.pt"))     # the DM laws, kept


def test_batched_training_is_independent_and_matches_the_linear_module():
    world = world_of({"world": "lowrank"}, 6)
    x, y = real_points(world, 5, 0)
    cfg = {"clf_batch": 32, "clf_steps": 20, "clf_lr": 0.05, "n_gen": 64, "unsup_fraction": 0.7}
    truth = {"means": torch.stack([-world.mu, world.mu]), "covs": torch.stack([world.Sigma] * 2)}
    W2, b2 = train_classifiers(x, y, [None, truth], cfg, 1.0, "l2", seed=3)
    W1, b1 = train_classifiers(x, y, [truth], cfg, 1.0, "l2", seed=3)
    assert torch.allclose(W1[0], W2[1], rtol=0, atol=1e-12) and abs(float(b1[0] - b2[1])) < 1e-12
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(3, 6, dtype=F64, generator=g), torch.randn(3, dtype=F64, generator=g)
    X, Y = torch.randn(3, 10, 6, dtype=F64, generator=g), torch.where(torch.rand(3, 10, generator=g) > 0.5, 1.0, -1.0)
    for norm in ("linf", "l2"):
        got = pgd_at_losses(W, b, X, Y.to(F64), 0.3, norm)
        want = [linear_at_loss(W[k], b[k], X[k], Y[k].to(F64), method="pgd-at", eps=0.3, norm=norm) for k in range(3)]
        assert torch.allclose(got, torch.stack(want), rtol=1e-12, atol=0)


def test_spearman_matches_scipy_with_ties_and_infinity():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    assert abs(float(spearman(x, y)) - spearmanr(x, y)[0]) < 1e-12
    x[:3] = np.inf
    z = x.copy()
    z[:3] = 1e9                                                        # inf ranks like the largest value
    assert abs(float(spearman(x, y)) - spearmanr(z, y)[0]) < 1e-12


@pytest.mark.parametrize("args, msg", [
    (["--d", "0"], "d must be integers >= 1"),
    (["--n", "0"], "n (real points per class) must be integers >= 2"),
    (["--eps", "-0.1"], "eps=-0.1: eps must be a number >= 0"),
    (["--generators", "mle", "gan"], 'generators.1="gan": must be \'none\''),
    (["--seeds", "0"], "argument --seeds: must be an integer >= 1, got 0"),
    (["--d", "two"], "invalid int value"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, msg, tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        main(["toy", "gen-data-study", "--quick", "--out", str(out), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# ----------------------------------------------------------------------- the MLP DMs (d <= 8)
def _gaussian_denoiser(mean, cov):
    """The exact denoiser of N(mean, cov), in float64: D(x, sigma) = A(sigma) x + b(sigma)."""
    from dmat_core.toys.affine_dm import gaussian_affine

    def D(x, sigma, labels=None):
        A, b = gaussian_affine(mean, cov, float(sigma))
        return x.to(F64) @ A.T + b
    return D


def test_heldout_kl_is_zero_for_the_truth_and_the_closed_form_for_a_wrong_gaussian():
    """The MLP DMs' KL(p‖q) estimate (PF-ODE likelihood of held-out points against the exact
    log-density), run on exact Gaussian denoisers: 0 for the class law itself (up to the integrator,
    as the estimate is paired point by point), and the closed-form Gaussian KL for a wrong law
    (within 3 standard errors of the estimate)."""
    from dmat_core.studies.gen_data_mlp import heldout_kl
    from dmat_core.toys.gaussians import gaussian_kl
    world = world_of({"world": "lowrank"}, 3)
    mean, cov = world.law(1)
    same = heldout_kl(_gaussian_denoiser(mean, cov), world, 1, 200, (3, 4, 0))
    assert abs(same["kl"]) < 0.01 and same["kl_var"] < 1e-3
    m2, S2 = 0.3 * mean, 2.0 * cov + 0.5 * torch.eye(3, dtype=F64)
    wrong = heldout_kl(_gaussian_denoiser(m2, S2), world, 1, 400, (3, 4, 0))
    exact = gaussian_kl(mean, cov, m2, S2)
    assert exact > 0.3
    assert abs(wrong["kl"] - exact) < 3 * math.sqrt(wrong["kl_var"] / 400) + 0.01


def test_mlp_dms_only_where_d_is_small_and_rank_correlations_skip_what_they_lack(runs):
    """MLP DMs appear in d <= mlp_max_d only; their rows have KL(p‖q) with its standard error and
    None for KL(q‖p) and W2; the rank correlation of W2 runs over the generators that have it."""
    from dmat_core.studies.gen_data_setup import MLP_GENERATORS, cell_generators, study_config
    cfg = study_config("isotropic-linf", quick=True, mlp_max_d=4)
    assert set(MLP_GENERATORS) <= set(cell_generators(cfg, 4, 0))
    assert not set(MLP_GENERATORS) & set(cell_generators(cfg, 5, 0))
    _, iso, _ = runs
    mlp = [r for r in iso["rows"] if r["generator"] in MLP_GENERATORS]
    assert {r["d"] for r in mlp} == {2}
    assert all(r["kl_qp"] is None and r["w2"] is None and r["kl_pq_se"] > 0 and math.isfinite(r["kl_pq"])
               for r in mlp)
    cell = iso["analysis"]["cells"][0]
    rho = cell["rho"]["all"]
    assert rho["w2"]["generators"] == rho["kl_pq"]["generators"] - len(MLP_GENERATORS)
    assert cell["mlp"]["kl_pq_standard"] == pytest.approx(np.mean([r["kl_pq"] for r in mlp if (r["d"], r["n"]) ==
                                                                   (cell["d"], cell["n"]) and r["generator"] ==
                                                                   "mlp-standard"]))
