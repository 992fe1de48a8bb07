"""The command line as users meet it: help, `toy sample`, the demo, clear errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

from dmat_core.cli.main import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "toy" in out


def test_python_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "dmat_core", "toy", "sample", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--sampler" in r.stdout


def test_toy_sample_writes_npz_and_json(tmp_path, capsys):
    out = tmp_path / "x.npz"
    assert main(["toy", "sample", "--dist", "ring8", "--denoiser", "exact", "--sampler", "heun",
                 "--steps", "18", "--n", "3000", "--seed", "0", "--out", str(out), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    x = np.load(out)["x"]
    assert x.shape == (3000, 2) and x.dtype == np.float32
    assert m["nfe"] == 35 and m["sw2_ratio"] < 2.5 and abs(m["nll_gap"]) < 0.15
    assert list(tmp_path.iterdir()) == [out]                        # no temp files left


@pytest.mark.parametrize("argv, msg", [
    (["--dist", "ring8", "--n", "0", "--json"], "argument --n: must be an integer >= 1, got 0"),
    (["--dist", "ring8", "--steps", "0", "--json"], "argument --steps: must be an integer >= 1, got 0"),
    (["--dist", "ring8", "--denoiser", "net.pt", "--json"], "unknown denoiser"),
])
def test_toy_sample_bad_input(argv, msg, tmp_path, capsys):
    out = tmp_path / "x.npz"
    with pytest.raises(SystemExit) as e:
        main(["toy", "sample", *argv, "--out", str(out)])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_unknown_preset_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["toy", "sample", "--dist", "ring9", "--json"])
    assert e.value.code == 2 and "invalid choice: 'ring9'" in capsys.readouterr().err


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--n", "1000", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["dist"], r["sampler"]): r for r in res["rows"]}
    assert rows[("ring8", "heun-18")]["nfe"] == 35
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "| ring8 | heun-18 | 35 |" in capsys.readouterr().out


def test_set_values_are_json_when_they_parse_else_strings():
    from dmat_core.cli.settings import parse_set
    got = parse_set(["lam=0.5", "unet={\"dropout\": 0.1}", "at-variant=adversarial", "ema=true", "note=a=b"])
    assert got == {"lam": 0.5, "unet": {"dropout": 0.1}, "at_variant": "adversarial", "ema": True, "note": "a=b"}
    assert parse_set(None) == {}


def test_set_values_are_typed_by_the_settings():
    """With the settings model, a string setting keeps the text (``arch=true`` is a name), null is
    null, and a value that is not JSON stays a string, which a bool or number setting then refuses."""
    from dmat_core.cli.settings import parse_set
    from dmat_core.robust.config import TrainATConfig, make_config
    got = parse_set(["arch=true", "generated=null", "augment=False", "eps=8/255", "seed=3"], TrainATConfig)
    assert got == {"arch": "true", "generated": None, "augment": "False", "eps": "8/255", "seed": 3}
    assert make_config("cpu-quick", **parse_set(["augment=false", "eps=8/255"], TrainATConfig)).augment is False
    with pytest.raises(ValueError, match='augment="False": augment must be true or false'):
        make_config("cpu-quick", **parse_set(["augment=False"], TrainATConfig))


# ---------------------------------------------------------------- dmat toy likelihood
def test_toy_likelihood_json(capsys):
    assert main(["toy", "likelihood", "--dist", "ring8", "--denoiser", "exact", "--n", "200",
                 "--seed", "0", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert {"mean_log_likelihood", "exact_mean_log_prob", "n", "dist", "denoiser", "sem", "method",
            "nfe", "seconds"} <= set(m)
    assert m["n"] == 200 and m["dist"] == "ring8" and m["denoiser"] == "exact" and m["method"] == "exact"
    assert abs(m["mean_log_likelihood"] - m["exact_mean_log_prob"]) < 0.05 and 0 < m["sem"] < 1


def test_toy_likelihood_of_a_saved_toy_denoiser(tmp_path, capsys):
    import torch

    from dmat_core.diffusion.likelihood import log_likelihood
    from dmat_core.toys.mixtures import make_distribution
    from dmat_core.toys.nets import load_toy_denoiser, save_toy_denoiser
    from dmat_core.toys.train import make_toy_model

    model = make_toy_model(dim=2, sigma_data=1.0, seed=0, width=16, depth=1, emb_dim=8)
    with torch.no_grad():                                 # an untrained net with nonzero output
        model.net.out.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "den.pt"
    save_toy_denoiser(path, model)
    back = load_toy_denoiser(path)
    x = torch.randn(5, 2)
    assert back.config == model.config and not back.training
    assert torch.equal(back(x, 0.5), model.eval()(x, 0.5))
    assert main(["toy", "likelihood", "--dist", "ring8", "--denoiser", str(path), "--n", "20", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    pts = make_distribution("ring8").sample(20, torch.Generator().manual_seed(0))
    want = float(log_likelihood(model, pts)["log_likelihood"].mean())
    assert m["denoiser"] == str(path) and abs(m["mean_log_likelihood"] - want) < 1e-9
    assert m["mean_log_likelihood"] < m["exact_mean_log_prob"]          # a poor model loses


def _write_other_kinds(tmp_path):
    from dmat_core.common.checkpoint import atomic_save
    from dmat_core.toys.nets import ToyDenoiserMLP, save_toy_denoiser
    atomic_save({"format": "dmat-toy-train/1", "model": {}}, tmp_path / "train.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    save_toy_denoiser(tmp_path / "d3.pt", ToyDenoiserMLP(3, width=8, depth=1, emb_dim=8))


@pytest.mark.parametrize("argv, msg", [
    (["--dist", "ring9"], "invalid choice: 'ring9'"),
    (["--dist", "ring8", "--n", "0"], "argument --n: must be an integer >= 1, got 0"),
    (["--dist", "ring8", "--denoiser", "train.pt"], "not a toy denoiser file"),
    (["--dist", "ring8", "--denoiser", "notes.pt"], "not a valid checkpoint"),
    (["--dist", "ring8", "--denoiser", "d3.pt"], "a toy denoiser for d = 3"),
])
def test_toy_likelihood_bad_input(argv, msg, tmp_path, capsys, monkeypatch):
    _write_other_kinds(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as e:
        main(["toy", "likelihood", *argv, "--json"])
    out = capsys.readouterr()
    assert e.value.code == 2 and out.out == ""
    assert msg in out.err and len(out.err.strip().splitlines()) == 1, out.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before        # nothing written
