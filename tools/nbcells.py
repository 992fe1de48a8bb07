"""Write a notebook from a list of (kind, source) cells, outputs empty: how dmat's notebooks are
authored and re-authored (`python tools/nbcells.py` is not a build step; the .ipynb is the
source of truth once written). Also the shared header cells every notebook starts with."""
from __future__ import annotations

import nbformat

REPO = "dmat-project/dmat"


def header(path: str, title: str, intro: str) -> list[tuple[str, str]]:
    """Badge row + title, the Colab install cell (torch never pinned), and the set-up cell."""
    badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"(https://colab.research.google.com/github/{REPO}/blob/main/{path})")
    return [
        ("md", f"{badge}\n\n# {title}\n\n{intro}"),
        ("code", "# On Colab, install dmat (torch and torchvision come with Colab and are not pinned).\n"
                 "import sys\n"
                 "if 'google.colab' in sys.modules:\n"
                 f"    %pip install -q 'dmat[notebooks] @ git+https://github.com/{REPO}'"),
    ]


def write(path: str, cells: list[tuple[str, str]]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        src = src.strip("\n")
        nb.cells.append(nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src))
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{i:02d}"
    nbformat.validate(nb)
    nbformat.write(nb, path)
