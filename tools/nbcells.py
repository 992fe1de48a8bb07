"""Write a notebook from a list of (kind, source) cells, outputs empty: how dmat's notebooks are
authored and re-authored (`python tools/nbcells.py` is not a build step; the .ipynb is the
source of truth once written). Also the shared header cells every notebook starts with."""
from __future__ import annotations

import nbformat

from notebook_header import badge_line, install_cell, repository_url   # tools/ is on sys.path


def header(path: str, title: str, intro: str, fid: bool = False) -> list[tuple[str, str]]:
    """Badge row + title, and the Colab install cell (tools/notebook_header.py makes both from the
    Repository URL in pyproject.toml, and rewrites them in place later)."""
    url = repository_url()
    return [
        ("md", f"{badge_line(path.rsplit('/', 1)[-1], url)}\n\n# {title}\n\n{intro}"),
        ("code", install_cell(url, fid)),
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
