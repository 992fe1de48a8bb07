"""The toy denoiser and its trainer: preconditioning at init, a seeded generator that resumes
exactly from a checkpoint, and (slow) near-exact quality on clean ring8 in seconds."""
import time

import pytest
import torch

from dmat_core.diffusion.losses import ATConfig
from dmat_core.diffusion.samplers import latent_noise, run
from dmat_core.toys.metrics import sample_metrics
from dmat_core.toys.mixtures import ring8, subspace
from dmat_core.toys.nets import ToyDenoiserMLP, data_std
from dmat_core.toys.train import fit_toy, fit_toy_snapshots, lr_at, make_toy_model, train_toy


def test_untrained_denoiser_is_c_skip_x_in_any_dimension():
    for d in (2, 256):
        D = ToyDenoiserMLP(d, sigma_data=0.7, width=32, depth=2)
        x = torch.randn(5, d)
        for s in (0.01, 1.0, torch.full((5,), 3.0)):
            sig = torch.as_tensor(s, dtype=torch.float32)
            want = 0.49 / (sig ** 2 + 0.49) * x if sig.ndim == 0 else (0.49 / (sig ** 2 + 0.49))[:, None] * x
            assert torch.allclose(D(x, s), want, atol=1e-6)


def test_data_std_and_bad_input():
    x = torch.randn(10_000, 3, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0])
    assert abs(data_std(x) - (14 / 3) ** 0.5) < 0.05
    with pytest.raises(ValueError):
        ToyDenoiserMLP(2, sigma_data=-1.0)
    with pytest.raises(ValueError):
        next(train_toy(make_toy_model(2, 1.0), torch.randn(10), steps=5))
    with pytest.raises(ValueError):
        next(train_toy(make_toy_model(2, 1.0), torch.randn(10, 2), steps=0))


def _params(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_trainer_is_a_seeded_generator():
    x = ring8().sample(500, torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        m = make_toy_model(2, data_std(x), seed=3, width=32, depth=1)
        states = list(train_toy(m, x, ATConfig("adversarial"), steps=12, batch=32, seed=7))
        runs.append(([s["loss"] for s in states], _params(states[-1]["ema"])))
    s = states[-1]
    assert [st["step"] for st in states] == list(range(1, 13))
    assert {"loss", "loss_dsm", "loss_at", "lr", "r_mean", "seconds", "ema", "model"} <= set(s)
    assert s["loss_at"] > 0 and s["r_mean"] > 0
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(_params(s["ema"]), _params(s["model"]))
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1) and lr_at(99, 100, 1.0, 10) < 0.06


def test_snapshots_are_the_ema_of_the_same_run_at_those_steps():
    """fit_toy_snapshots keeps, at each chosen step, exactly the EMA weights train_toy has there
    (same run, same schedule); the last is the final denoiser, and keeping them changes nothing."""
    x = ring8().sample(256, torch.Generator().manual_seed(0))
    kw = dict(steps=12, batch=32, seed=7)
    D, hist, snaps = fit_toy_snapshots(make_toy_model(2, data_std(x), 0), x, ATConfig("standard"), (4, 12), **kw)
    assert sorted(snaps) == [4, 12]
    at4 = None
    for state in train_toy(make_toy_model(2, data_std(x), 0), x, ATConfig("standard"), **kw):
        if state["step"] == 4:
            at4 = {k: v.clone() for k, v in state["ema"].state_dict().items()}
    final = state["ema"].state_dict()
    assert all(torch.equal(snaps[4][k], at4[k]) for k in at4)
    assert all(torch.equal(snaps[12][k], final[k]) and torch.equal(D.state_dict()[k], final[k]) for k in final)
    assert any(not torch.equal(snaps[4][k], final[k]) for k in final)
    D2, hist2 = fit_toy(make_toy_model(2, data_std(x), 0), x, ATConfig("standard"), **kw)
    no_time = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert all(torch.equal(D2.state_dict()[k], final[k]) for k in final) and no_time(hist2) == no_time(hist)
    with pytest.raises(ValueError, match="snapshot steps"):
        fit_toy_snapshots(make_toy_model(2, 1.0), x, None, (13,), **kw)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_checkpoint_resume_is_exact(tmp_path, device):
    x = ring8().sample(300, torch.Generator().manual_seed(0))
    kw = dict(steps=20, batch=16, seed=1, device=device)
    full = make_toy_model(2, 1.4, seed=0, width=16, depth=1)
    *_, last = train_toy(full, x, ATConfig("random"), **kw)
    ck = tmp_path / "toy.pt"
    part = make_toy_model(2, 1.4, seed=0, width=16, depth=1)
    for st in train_toy(part, x, ATConfig("random"), checkpoint=ck, checkpoint_every=10, **kw):
        if st["step"] == 13:      # killed after the checkpoint of step 10
            break
    resumed = make_toy_model(2, 1.4, seed=0, width=16, depth=1)
    states = list(train_toy(resumed, x, ATConfig("random"), checkpoint=ck, **kw))
    assert states[0]["step"] == 11
    assert torch.allclose(_params(states[-1]["ema"]), _params(last["ema"]), atol=1e-6)
    done = list(train_toy(make_toy_model(2, 1.4, width=16, depth=1), x, ATConfig("random"),
                          checkpoint=ck, **kw))
    assert len(done) == 1 and done[0]["step"] == 20
    assert torch.allclose(_params(done[0]["ema"]), _params(last["ema"]), atol=1e-6)


def test_high_dimensional_training_step_runs():
    dist = subspace(d=256, k=8)
    x = dist.sample(256, torch.Generator().manual_seed(0))
    D, hist = fit_toy(make_toy_model(256, data_std(x), width=64, depth=1), x,
                      ATConfig("adversarial"), steps=3, batch=32, log_every=1)
    assert len(hist) == 3 and D(x[:4].float(), 0.5).shape == (4, 256)


@pytest.mark.slow
def test_ring8_trains_to_near_exact_quality_in_30_seconds():
    """The issue's budget: a 2D model reaches near-exact quality on clean ring8 in < 30 s on 2 cores."""
    torch.set_num_threads(1)
    dist = ring8()
    x = dist.sample(20_000, torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    D, _ = fit_toy(make_toy_model(2, data_std(x), seed=0), x, steps=3000, batch=256)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        s = run(D, latent_noise(5000, 2, torch.Generator().manual_seed(1)), "heun", 18)
    m = sample_metrics(dist, s.double(), mmd=False)
    assert seconds < 30
    assert m["modes_covered"] == 8 and m["off_mode_mass"] < 0.05 and abs(m["nll_gap"]) < 0.15
    assert m["sw2_ratio"] < 1.6 and 0.85 < m["spread_ratio"] < 1.15


# ----------------------------------------------------------------------- load-else-train (notebooks/models)
def test_trained_toy_loads_a_matching_run_and_trains_otherwise(tmp_path, capsys):
    from dmat_core.toys.nets import load_toy_run, trained_toy
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    calls = []

    def train():
        calls.append(1)
        return fit_toy(make_toy_model(2, 1.0, seed=0, width=16, depth=1), x, steps=5, batch=16, seed=0, log_every=1)
    path = tmp_path / "run.pt"
    settings = {"steps": 5, "seed": 0, "arm": {"variant": "standard"}, "sizes": (1, 2)}
    first, h1 = trained_toy(path, settings, train)
    assert len(calls) == 1 and path.is_file() and len(h1) == 5
    again, h2 = trained_toy(path, settings, train)                  # loaded: no training, same weights
    assert len(calls) == 1 and "loaded" in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert h2 == [{k: float(v) for k, v in r.items() if isinstance(v, (int, float))} for r in h1]
    trained_toy(path, {**settings, "steps": 6}, train)              # other settings: trains, says which differ
    assert len(calls) == 2 and "other settings (steps)" in capsys.readouterr().out
    trained_toy(path, {**settings, "steps": 6}, train, retrain=True)
    assert len(calls) == 3
    trained_toy(None, settings, train)                              # no file: always trains, writes nothing
    assert len(calls) == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]
    assert load_toy_run(path)[1]["steps"] == 6
    with pytest.raises(ValueError, match="plain data"):
        trained_toy(tmp_path / "other.pt", {"x": torch.zeros(1)}, train)
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a toy run"):
        trained_toy(tmp_path / "bad.pt", settings, train)


def test_the_committed_notebook_models_match_the_settings_the_notebooks_use_now():
    """notebooks/models/ holds the full-size toy runs notebooks 03 and 04 load; each file's settings
    must still be what the study's full configuration and the notebooks' parameters give, or the
    notebooks would silently retrain (or, worse, the files would be stale)."""
    from pathlib import Path

    from dmat_core.studies.at_dm_setup import ARMS, study_config
    from dmat_core.toys.nets import load_toy_run
    models = sorted((Path(__file__).resolve().parents[1] / "notebooks" / "models").glob("*.pt"))
    assert models, "no finished toy runs in notebooks/models/"
    cfg = study_config("inlier-ring8")
    for path in models:
        model, settings, history = load_toy_run(path)
        assert history and all(p.isfinite().all() for p in model.parameters())
        if path.name.startswith("03_"):
            arm = next(v for v in ARMS if path.name == f"03_inlier-ring8_{v}_seed0.pt")
            assert settings == {"preset": "inlier-ring8", "arm": ARMS[arm], "at": {"lam": 0.3}, "seed": 0,
                                **{k: cfg[k] for k in ("dist", "corruption", "p", "s", "n_train", "steps", "batch",
                                                       "lr", "ema", "width", "depth", "P_mean", "P_std")}}, path.name
        else:                                   # notebook 04's memorization models (its full-size parameters)
            n, v = (int(path.name.split("_n")[1].split("_")[0]), path.name.split("_")[3])
            assert path.name == f"04_memorization_n{n}_{v}_seed0.pt" and n in (8, 32, 128, 1024), path.name
            assert settings == {"dist": "ring8", "n_train": n, "data_seed": 1000 + n, "variant": v, "seed": 0,
                                "steps": 4000, "batch": 256}, path.name
