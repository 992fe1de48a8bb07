"""(Re)write the Colab header of the notebooks from the one repository URL, `[project.urls]
Repository` in pyproject.toml: the "Open In Colab" badge (first line of the first cell) and the
install cell (the first code cell). `--check` writes nothing and exits 1 when a notebook differs
(tests/test_notebook_header.py runs it).

    python tools/notebook_header.py                          # every notebook under notebooks/
    python tools/notebook_header.py notebooks/05_*.ipynb     # some
    python tools/notebook_header.py --check [NOTEBOOK ...]

The install cell runs on Colab only (elsewhere it does nothing). It clones the repository (depth 1)
into /content/dmat, or pulls it when it is there, so that `results/` and the data the notebooks
read exist; installs it editable (`pip install -e`) with its base dependencies only, which leave
Colab's torch, ipywidgets and Jupyter as they are (the `notebooks` extra would upgrade them; a
notebook that computes an FID gets the `fid` extra, torch-fidelity); and works in the clone's
notebooks/ folder. `KEEP_ON_DRIVE = True` mounts Google Drive and points `DMAT_DATA` at
MyDrive/dmat/data: data and runs (kept beside the data folder) then outlive the Colab machine,
and a run resumes after a disconnect.

Notebooks are written the nbformat way (JSON, indent 1, UTF-8, trailing newline); nothing else
in them changes.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BRANCH = "main"
CLONE = "/content/dmat"
DRIVE_DIR = "/content/drive/MyDrive/dmat"
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
# a notebook that calls these computes an FID and needs the `fid` extra (torch-fidelity)
NEEDS_FID = re.compile(r"\bfid_score\b|\btorch_fidelity\b")


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """`[project.urls] Repository` of pyproject.toml, without a trailing slash or .git."""
    text = pyproject.read_text(encoding="utf-8")
    try:
        import tomllib
        url = tomllib.loads(text)["project"]["urls"]["Repository"]
    except ImportError:                      # Python 3.10: the one line is enough
        url = re.search(r'(?m)^Repository\s*=\s*"([^"]+)"', text)[1]
    url = url.rstrip("/")
    return url[:-4] if url.endswith(".git") else url


def github_path(url: str) -> str:
    """'https://github.com/owner/name' -> 'owner/name' (Colab opens notebooks from GitHub)."""
    m = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", url)
    if not m:
        raise ValueError(f"the Repository URL in pyproject.toml is not a GitHub repository: {url}")
    return m[1]


def badge_line(name: str, url: str) -> str:
    return (f"{BADGE}(https://colab.research.google.com/github/{github_path(url)}/blob/{BRANCH}/"
            f"notebooks/{name})")


def install_cell(url: str, fid: bool = False) -> str:
    """The source of the install cell (plain Python: it also runs where IPython magics do not)."""
    target = f'CLONE + "[fid]"' if fid else "CLONE"
    extra = "; the fid extra adds torch-fidelity, for the FID" if fid else ""
    return f'''\
# Colab only (elsewhere this cell does nothing): get the dmat repository, so that results/ and the
# data the notebooks read are there; `pip install -e` it without upgrading what Colab ships (its
# torch, ipywidgets and Jupyter stay{extra}); work in its notebooks/ folder.
KEEP_ON_DRIVE = False            # True: data and runs on Google Drive (MyDrive/dmat): a run resumes after a disconnect
import os, subprocess, sys
if "google.colab" in sys.modules:
    REPO, CLONE = "{url}", "{CLONE}"
    if os.path.isdir(CLONE + "/.git"):
        if subprocess.run(["git", "-C", CLONE, "pull", "-q", "--ff-only"]).returncode:
            print(f"could not update {{CLONE}}: using it as it is")
    else:
        subprocess.run(["git", "clone", "-q", "--depth", "1", REPO, CLONE], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", {target}], check=True)
    if CLONE not in sys.path:
        sys.path.insert(0, CLONE)    # importable now, without restarting the runtime
    if KEEP_ON_DRIVE:
        from google.colab import drive
        drive.mount("/content/drive")
        os.environ["DMAT_DATA"] = "{DRIVE_DIR}/data"   # the notebooks keep their runs beside it
    os.chdir(CLONE + "/notebooks")
    print("dmat:", CLONE, "| data:", os.path.abspath(os.environ.get("DMAT_DATA", "data")))'''


def _source(cell) -> str:
    return "".join(cell["source"])


def _set_source(cell, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def is_install_cell(cell) -> bool:
    return cell["cell_type"] == "code" and "google.colab" in _source(cell)


def render(nb: dict, name: str, url: str) -> dict:
    """The notebook with its badge and install cell made from `url` (a new dict)."""
    nb = json.loads(json.dumps(nb))
    cells = nb["cells"]
    if not cells or cells[0]["cell_type"] != "markdown":
        raise ValueError(f"{name}: the first cell must be the markdown title cell")
    lines = _source(cells[0]).split("\n")
    if lines[0].startswith(BADGE):
        lines[0] = badge_line(name, url)
    else:
        lines[:0] = [badge_line(name, url), ""]
    _set_source(cells[0], "\n".join(lines))
    code = [c for c in cells if c["cell_type"] == "code"]
    fid = bool(NEEDS_FID.search("\n".join(_source(c) for c in code if not is_install_cell(c))))
    source = install_cell(url, fid)
    if code and is_install_cell(code[0]):
        _set_source(code[0], source)
    else:
        ids = {c.get("id") for c in cells}
        cell = {"cell_type": "code", "execution_count": None,
                "id": next(f"install{i}" for i in range(len(cells) + 1) if f"install{i}" not in ids),
                "metadata": {}, "outputs": [], "source": []}
        _set_source(cell, source)
        cells.insert(1, cell)
    return nb


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _shown(path: Path) -> str:
    """The path relative to the repository root where it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    paths = [Path(a) for a in argv if a != "--check"] or sorted(NOTEBOOKS.glob("*.ipynb"))
    url = repository_url()
    stale = []
    for path in paths:
        old = path.read_text(encoding="utf-8")
        new = dumps(render(json.loads(old), path.name, url))
        if new != old:
            stale.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
                print(f"rewrote the header of {_shown(path)}")
    if check and stale:
        names = " ".join(_shown(p) for p in stale)
        print(f"Colab header out of date with pyproject.toml's Repository URL ({url}): {names}\n"
              f"run: python tools/notebook_header.py {names}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
