"""The Colab header of every notebook (the badge and the install cell) is made from one repository URL,
`[project.urls] Repository` in pyproject.toml, by tools/notebook_header.py; and the install cell does on
Colab what it should (clone, install without the notebooks extra, Drive on request) and nothing elsewhere.
Fast: nothing is executed on Colab, no notebook is run."""
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "notebook_header.py"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "tools"))
import notebook_header as nh  # noqa: E402

URL = nh.repository_url()


def run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True)


def code_of(nb) -> str:
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def test_every_notebook_header_agrees_with_pyproject():
    r = run_tool("--check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_repository_url_is_written_in_one_place():
    slug = nh.github_path(URL)
    files = [ROOT / "README.md", ROOT / "Makefile", *ROOT.glob("docs/*.md"), *ROOT.glob("dmat_core/**/*.py"),
             *ROOT.glob("tools/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("bench/*.py")]
    bad = [str(p.relative_to(ROOT)) for p in files if slug in p.read_text(encoding="utf-8")]
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        first_code = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
        for i, c in enumerate(cells):
            text = "".join(c["source"])
            if i == 0:
                text = text.split("\n", 1)[1]          # the badge line is generated
            if slug in text and i != first_code:
                bad.append(f"{path.name} cell {i}")
    assert not bad, f"{slug} written outside pyproject.toml and the generated headers: {bad}"


def test_check_catches_a_stale_header_and_the_tool_repairs_only_the_header(tmp_path):
    src = ROOT / "notebooks" / "01_known_densities_and_flows.ipynb"
    path = tmp_path / src.name
    nb = json.loads(src.read_text(encoding="utf-8"))
    good = nh.dumps(nh.render(nb, src.name, URL))
    stale = json.loads(good)
    stale["cells"][0]["source"][0] = stale["cells"][0]["source"][0].replace(nh.github_path(URL), "someone/else")
    code = next(c for c in stale["cells"] if c["cell_type"] == "code")
    code["source"] = ["import sys\n", "if 'google.colab' in sys.modules:\n",
                      "    %pip install -q 'dmat[notebooks] @ git+https://example.org/dmat'"]
    path.write_text(nh.dumps(stale), encoding="utf-8")
    r = run_tool("--check", path)
    assert r.returncode == 1 and src.name in r.stdout and "notebook_header.py" in r.stdout
    assert path.read_text(encoding="utf-8") == nh.dumps(stale), "--check must not write"
    assert run_tool(path).returncode == 0
    assert path.read_text(encoding="utf-8") == good
    assert run_tool("--check", path).returncode == 0
    assert nh.render(json.loads(good), src.name, URL) == json.loads(good), "not idempotent"


def test_a_notebook_without_a_header_gets_one():
    nb = {"cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# Title"]},
                    {"cell_type": "code", "id": "b", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": ["x = fid_score"]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    out = nh.render(nb, "09_new.ipynb", URL)
    assert out["cells"][0]["source"][0].rstrip("\n") == nh.badge_line("09_new.ipynb", URL)
    assert "".join(out["cells"][1]["source"]) == nh.install_cell(URL, fid=True)
    assert [c["id"] for c in out["cells"]] == ["a", "install0", "b"]


@pytest.mark.parametrize("fid", [False, True])
def test_install_cell_is_safe_for_colab(fid):
    src = nh.install_cell(URL, fid)
    compile(src, "install cell", "exec")                        # plain Python, no magics
    assert "KEEP_ON_DRIVE = False" in src                       # Drive only when asked
    pip = [line for line in src.splitlines() if '"pip", "install"' in line]
    assert len(pip) == 1 and '"-e"' in pip[0]
    for word in ("notebooks", "jupyter", "ipywidgets", "torch", "--upgrade", '"-U"'):
        assert word not in pip[0], f"the install would touch what Colab ships: {word}"
    assert ('"[fid]"' in pip[0]) == fid


def test_install_cell_does_nothing_outside_colab(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(nh.install_cell(URL, True), {})
    assert calls == [] and Path.cwd() == tmp_path


@pytest.mark.parametrize("keep_on_drive", [False, True])
@pytest.mark.parametrize("cloned", [False, True])
def test_install_cell_on_colab(monkeypatch, keep_on_drive, cloned):
    """On a simulated Colab: what the cell runs, where it works, where the data goes."""
    mounted, calls, cwd = [], [], []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: calls.append(cmd) or types.SimpleNamespace(returncode=0))
    monkeypatch.setattr(os.path, "isdir", lambda p: cloned and p == "/content/dmat/.git")
    monkeypatch.setattr(os, "chdir", cwd.append)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("DMAT_DATA", raising=False)
    src = nh.install_cell(URL).replace("KEEP_ON_DRIVE = False", f"KEEP_ON_DRIVE = {keep_on_drive}")
    exec(src, {})
    fetch = (["git", "-C", "/content/dmat", "pull", "-q", "--ff-only"] if cloned
             else ["git", "clone", "-q", "--depth", "1", URL, "/content/dmat"])
    assert calls == [fetch, [sys.executable, "-m", "pip", "install", "-q", "-e", "/content/dmat"]]
    assert cwd == ["/content/dmat/notebooks"] and sys.path[0] == "/content/dmat"
    if keep_on_drive:
        assert mounted == ["/content/drive"]
        assert os.environ["DMAT_DATA"] == "/content/drive/MyDrive/dmat/data"   # runs: MyDrive/dmat/runs
    else:
        assert mounted == [] and "DMAT_DATA" not in os.environ


def test_fid_extra_only_where_a_notebook_computes_an_fid():
    fid = {p.name[:2] for p in NOTEBOOKS if nh.NEEDS_FID.search(code_of(json.loads(p.read_text(encoding="utf-8"))))}
    assert fid == {"06", "08"}


def test_tool_leaves_the_committed_form(tmp_path):
    """Rendering keeps the nbformat layout of the committed notebooks (indent 1, UTF-8, newline)."""
    for path in NOTEBOOKS:
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        run_tool(copy)
        assert json.loads(copy.read_text(encoding="utf-8"))["cells"][2:] == \
            json.loads(path.read_text(encoding="utf-8"))["cells"][2:]
        assert copy.read_text(encoding="utf-8").endswith("}\n")
