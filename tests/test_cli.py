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
    (["--dist", "ring8", "--n", "0", "--json"], "n must be a positive integer"),
    (["--dist", "ring8", "--steps", "0", "--json"], "steps must be an integer >= 1"),
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
