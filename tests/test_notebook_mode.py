"""The size a notebook runs at is a choice (dmat_core.common.notebook): `MODE` in its parameter cell,
`DMAT_QUICK=1` forcing quick mode (the test suite), and no silent full mode on a CPU for the
GPU-sized notebooks. Tested without running a notebook: the GPU is monkeypatched."""
import json
import re
from pathlib import Path

import pytest
import torch

from dmat_core.common import notebook as nbmod
from dmat_core.common.notebook import choose_mode, setup

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
GPU_SIZED = {"05", "06", "07", "08"}   # 05: its CIFAR half
COST = "trains something big: days on a CPU"


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("DMAT_QUICK", raising=False)

    def set_gpu(available: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    set_gpu(False)
    return monkeypatch, set_gpu


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("mode", [None, "quick", "full"])
@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("cost", [None, COST])
def test_dmat_quick_forces_quick(env, mode, gpu, cost):
    monkeypatch, _ = env
    monkeypatch.setenv("DMAT_QUICK", "1")
    chosen, message = choose_mode(mode, cost, gpu=gpu)
    assert chosen == "quick"
    assert ("DMAT_QUICK=1 overrides" in message) == (mode == "full")


def test_without_dmat_quick(env):
    # a GPU: full by default, GPU-sized or not, and quick on request
    assert choose_mode(None, COST, gpu=True) == ("full", "")
    assert choose_mode(None, None, gpu=True) == ("full", "")
    assert choose_mode("quick", COST, gpu=True) == ("quick", "")
    # a CPU notebook on a CPU: full, nothing to say
    assert choose_mode(None, None, gpu=False) == ("full", "")
    assert choose_mode("full", None, gpu=False) == ("full", "")
    # a GPU-sized notebook on a CPU: quick and a warning with the cost, unless full is asked for by name
    chosen, message = choose_mode(None, COST, gpu=False)
    assert chosen == "quick" and message.startswith("WARNING") and COST in message and "MODE = 'full'" in message
    chosen, message = choose_mode("full", COST, gpu=False)
    assert chosen == "full" and message.startswith("WARNING") and COST in message
    assert choose_mode("quick", COST, gpu=False) == ("quick", "")


def test_dmat_quick_values(env):
    monkeypatch, _ = env
    for value, quick in [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)]:
        monkeypatch.setenv("DMAT_QUICK", value)
        assert nbmod.quick_mode() is quick


def test_bad_mode_is_refused(env):
    with pytest.raises(ValueError, match="mode must be"):
        choose_mode("fast")


def test_setup_on_a_cpu_falls_back_to_quick_and_says_so(env, capsys, threads):
    quick, device = setup(None, full_cost=COST, quick_threads=1)
    out = capsys.readouterr().out
    assert quick and device.type == "cpu" and torch.get_num_threads() == 1
    assert "WARNING" in out and COST in out and "size: quick (no GPU) | device: cpu" in out


def test_setup_full_on_a_cpu_when_asked(env, capsys):
    quick, device = setup("full", full_cost=COST)
    out = capsys.readouterr().out
    assert not quick and device.type == "cpu" and "WARNING" in out and "size: full | device: cpu" in out


def test_setup_on_a_gpu(env, capsys):
    _, set_gpu = env
    set_gpu(True)
    quick, device = setup(None, full_cost=COST)
    out = capsys.readouterr().out
    assert not quick and device.type == "cuda" and "WARNING" not in out
    assert "size: full | device: cuda (Fake GPU)" in out
    quick, device = setup("quick")                      # quick mode stays on the CPU, as under DMAT_QUICK
    assert quick and device.type == "cpu"


def test_setup_under_dmat_quick_is_as_before(env, capsys, threads):
    monkeypatch, set_gpu = env
    set_gpu(True)
    monkeypatch.setenv("DMAT_QUICK", "1")
    assert setup() == (True, torch.device("cpu"))
    out = capsys.readouterr().out
    assert out.startswith("dmat | size: quick (DMAT_QUICK=1) | device: cpu") and "WARNING" not in out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameter_cell_chooses_the_mode(path):
    cells = [("".join(c["source"]), c["cell_type"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]
    code = [s for s, kind in cells if kind == "code"]
    params = next(s for s in code if s.startswith("# Parameters"))
    assert re.search(r"^MODE = None\b", params, re.M), "the parameter cell must start by choosing MODE"
    if path.name[:2] in GPU_SIZED:       # the image notebooks: quick / digits / full
        call = re.search(r"^SIZE, DEVICE = setup_size\(MODE\b(.*)\)", params, re.M)
        assert call, "setup_size(MODE, ...) belongs in the parameter cell, before the sizes that depend on SIZE"
        assert "full_cost=" in call.group(1) and 'cpu_size="digits"' in call.group(1)
        assert re.search(r'^QUICK, DIGITS = SIZE == "quick", SIZE == "digits"', params, re.M)
        assert params.index("MODE = None") < call.start() < params.find("QUICK else")
    else:
        call = re.search(r"^QUICK, DEVICE = setup\(MODE\b(.*)\)", params, re.M)
        assert call, "setup(MODE, ...) belongs in the parameter cell, before the sizes that depend on QUICK"
        assert params.index("MODE = None") < call.start() < params.find("QUICK else")
        assert "full_cost=" not in call.group(1)
    assert "setup()" not in "\n".join(code) and "setup_size()" not in "\n".join(code), \
        "a second setup() would choose the size again"


# ----------------------------------------------------------------------------- the digits size (05-08)
def test_image_notebooks_default_to_digits_on_a_cpu_and_full_on_a_gpu(env):
    chosen, message = choose_mode(None, COST, gpu=False, cpu_size="digits")
    assert chosen == "digits" and "No GPU" in message and COST in message and "MODE = 'quick'" in message
    assert choose_mode(None, COST, gpu=True, cpu_size="digits") == ("full", "")
    assert choose_mode("digits", COST, gpu=True, cpu_size="digits") == ("digits", "")
    assert choose_mode("quick", COST, gpu=False, cpu_size="digits") == ("quick", "")


def test_digits_is_refused_where_a_notebook_has_no_such_size(env):
    with pytest.raises(ValueError, match="'digits'"):
        choose_mode("digits", COST, gpu=False)
    with pytest.raises(ValueError, match="cpu_size"):
        choose_mode(None, COST, gpu=False, cpu_size="huge")


def test_dmat_mode_from_the_environment(env):
    monkeypatch, _ = env
    monkeypatch.setenv("DMAT_MODE", "digits")
    assert choose_mode(None, COST, gpu=True, cpu_size="digits") == ("digits", "")
    chosen, message = choose_mode("full", COST, gpu=True, cpu_size="digits")
    assert chosen == "digits" and "DMAT_MODE=digits overrides" in message
    chosen, message = choose_mode(None, None, gpu=False)          # a toy notebook: its own choice, said
    assert chosen == "full" and "no such size" in message
    monkeypatch.setenv("DMAT_QUICK", "1")                         # DMAT_QUICK wins over DMAT_MODE
    assert choose_mode(None, COST, gpu=False, cpu_size="digits")[0] == "quick"
    monkeypatch.delenv("DMAT_QUICK")
    monkeypatch.setenv("DMAT_MODE", "huge")
    with pytest.raises(ValueError, match="DMAT_MODE"):
        choose_mode(None)


def test_setup_size_prints_the_digits_size(env, capsys):
    size, device = nbmod.setup_size(None, full_cost=COST, cpu_size="digits")
    out = capsys.readouterr().out
    assert size == "digits" and device.type == "cpu" and "size: digits | device: cpu" in out
