"""Every notebook runs top to bottom in quick mode, and is committed the way users meet it:
outputs stripped, a Colab badge, an install cell that does not pin torch, a printed device."""
import json
import re
import sys
import time
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_form(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{path.name} has outputs: strip them before committing"
    first = "".join(nb["cells"][0]["source"])
    assert "colab.research.google.com/assets/colab-badge.svg" in first, "missing Colab badge"
    assert path.name in first, "the Colab badge points at another notebook"
    sources = "\n".join("".join(c["source"]) for c in code)
    assert "pip install" in sources, "missing the install cell"
    assert not re.search(r"torch(vision)?\s*[=<>~]=", sources), "a notebook must not pin torch"
    assert re.search(r"\bsetup(_size)?\(", sources), \
        "the notebook must call dmat_core.common.notebook.setup() or setup_size() (prints the device)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_in_quick_mode(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from notebook_client import NotebookClient     # tools/: nbclient without its stall after a widget cell

    monkeypatch.setenv("DMAT_QUICK", "1")
    monkeypatch.setenv("DMAT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - t0
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "device:" in text, "the notebook did not print its device"
    print(f"{path.name}: {seconds:.1f} s in quick mode")
