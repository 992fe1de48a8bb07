"""Build the course site: every notebook executed, then rendered by Sphinx + MyST-NB into site/.

    .venv/bin/python tools/build_site.py                 # the course (`make docs`): each notebook at its CPU size
    .venv/bin/python tools/build_site.py --quick         # quick mode (DMAT_QUICK=1): seconds a notebook, numbers meaningless
    .venv/bin/python tools/build_site.py 01 03           # these notebooks only (the index lists the others unlinked)
    .venv/bin/python tools/build_site.py --from /tmp/nb  # reuse notebooks executed elsewhere, e.g. by
                                                          # bench/notebook_time.py --keep /tmp/nb

Sizes. The course runs each notebook at the largest size a CPU runs in minutes: an image notebook
(05-08) that has a "digits" size (`setup_size(..., cpu_size="digits")`) runs it (DMAT_MODE=digits);
every other notebook runs what its `MODE = None` picks on this machine (full for the toy notebooks
01-04 on a CPU). The index says the size each notebook printed. `--quick` runs every notebook in quick
mode instead (the tests' size).

Execution. nbclient runs each notebook top to bottom in a scratch folder (data in $DMAT_DATA there),
with the inline matplotlib backend (the figures are outputs) and the widget state saved. The
executed notebooks are kept in docs/_build/executed/<course|quick>/, keyed by a hash of their cells
and the size: a later build re-executes only a notebook whose source changed (`--force`: all of
them; a change in dmat_core alone does not re-execute anything). `--from DIR` takes DIR/<name>.ipynb
instead of executing when its code cells are the current ones and it ran at the size asked for.

Widgets. A static page has no kernel to run a slider's callback, so each widget output is written
as static HTML from its saved state: the controls (disabled, at the value the notebook left them)
and the figures their Output widgets hold. The pages then load no widget JavaScript; the site needs
no network except MathJax (formulas; offline they stay as TeX) and the Colab badge images.

Rendering. The staged notebooks and a generated index page (README's intro paragraph and its
notebook table, linked to the pages) are built by Sphinx with MyST-NB (configuration:
docs/course/conf.py), which never executes a notebook itself. The site is written to site/
(open site/index.html); site/ and docs/_build/ are not committed.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import functools
import hashlib
import html
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from notebook_client import NotebookClient  # noqa: E402  (tools/ is on sys.path; nbclient without its stall)
from notebook_header import repository_url  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
CONF = ROOT / "docs" / "course"          # conf.py and _static/
BUILD = ROOT / "docs" / "_build"         # executed/ (the cache) and src/ (what Sphinx reads)
SITE = ROOT / "site"
INLINE = "module://matplotlib_inline.backend_inline"
DIGITS = re.compile(r"""cpu_size\s*=\s*["']digits["']""")
SIZE_LINE = re.compile(r"dmat \| size: ([^|\n]+?) \| device: (\S+)")
CACHE_FORMAT = 1                         # bump when what an executed notebook holds changes
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


# --------------------------------------------------------------------------- sizes and the cache
def run_env(nb, quick: bool) -> dict:
    """The environment that picks the notebook's size: DMAT_QUICK=1, DMAT_MODE=digits, or nothing."""
    if quick:
        return {"DMAT_QUICK": "1"}
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return {"DMAT_MODE": "digits"} if DIGITS.search(code) else {}


def cache_key(nb, env: dict) -> str:
    """sha256 of the cells (type and source) and the size's environment."""
    cells = [[c.cell_type, c.source] for c in nb.cells]
    blob = json.dumps({"format": CACHE_FORMAT, "cells": cells, "env": env}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def printed_size(nb) -> tuple[str, str]:
    """(size, device) from the line dmat_core.common.notebook.setup prints, ("?", "?") if none."""
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            m = SIZE_LINE.search(o.get("text", "")) if o.get("output_type") == "stream" else None
            if m:
                return m[1].strip(), m[2]
    return "?", "?"


def machine() -> str:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()}-core CPU ({platform.machine()})"


def execute(path: Path, env: dict, timeout: int | None):
    """Run the notebook top to bottom in a scratch folder; returns it with its outputs and the
    widget state. Raises nbclient's CellExecutionError when a cell fails."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="dmat-site-") as tmp:
        run = {"DMAT_DATA": str(Path(tmp) / "data"), "MPLBACKEND": INLINE, "OMP_WAIT_POLICY": "PASSIVE", **env}
        saved = {k: os.environ.get(k) for k in (*run, "DMAT_QUICK", "DMAT_MODE")}
        for k in ("DMAT_QUICK", "DMAT_MODE"):
            os.environ.pop(k, None)
        os.environ.update(run)
        t0 = time.perf_counter()
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                           resources={"metadata": {"path": tmp}}).execute()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        seconds = time.perf_counter() - t0
    size, device = printed_size(nb)
    nb.metadata["dmat_site"] = {"size": size, "device": device, "seconds": round(seconds, 1),
                                "date": datetime.date.today().isoformat(), "machine": machine(),
                                "executed_by": "tools/build_site.py"}
    return nb


def imported(path: Path, source_dir: Path, env: dict):
    """The notebook executed elsewhere (DIR/<name>.ipynb) with the current markdown, and a line
    saying so; or None and the reason: a different code cell, another size, or missing figures."""
    import nbformat
    other = source_dir / path.name
    if not other.is_file():
        return None, f"no {other}"
    nb = nbformat.read(path, as_version=4)
    ran = nbformat.read(other, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    ran_code = [c for c in ran.cells if c.cell_type == "code"]
    if [c.source for c in code] != [c.source for c in ran_code]:
        return None, f"{other} has other code cells than notebooks/{path.name}"
    size, device = printed_size(ran)
    want = "quick" if env.get("DMAT_QUICK") else env.get("DMAT_MODE")
    if want and size.split()[0] != want or not want and size.startswith("quick (DMAT_QUICK"):
        return None, f"{other} ran at size {size!r}, this build wants {want or 'the notebook default'}"
    blank = [i for i, c in enumerate(ran_code) if "plt.show()" in c.source and not any(
        {"image/png", WIDGET_VIEW} & set(o.get("data", {})) for o in c.get("outputs", []))]
    if blank:                         # Agg draws nothing: bench/notebook_time.py used it before
        return None, f"{other}: code cell {blank[0] + 1} calls plt.show() but holds no figure " \
            "(executed with MPLBACKEND=Agg?)"
    for c, r in zip(code, ran_code):
        c.outputs, c.execution_count = r.outputs, r.execution_count
    if "widgets" in ran.metadata:
        nb.metadata["widgets"] = ran.metadata["widgets"]
    stamp = datetime.datetime.fromtimestamp(other.stat().st_mtime).date().isoformat()
    nb.metadata["dmat_site"] = {"size": size, "device": device, "seconds": None, "date": stamp,
                                "machine": None, "executed_by": str(other)}
    return nb, f"taken from {other}"


LOG = functools.partial(print, flush=True)


def executed(path: Path, quick: bool, cache: Path, source_dir: Path | None, force: bool,
             timeout: int | None, log=LOG):
    """The executed notebook: from the cache when its key matches, else from `source_dir`, else run."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    env = run_env(nb, quick)
    key = cache_key(nb, env)
    kept = cache / path.name
    if kept.is_file() and not force:
        old = nbformat.read(kept, as_version=4)
        if old.metadata.get("dmat_site", {}).get("key") == key:
            log(f"{path.name}: cached ({old.metadata['dmat_site']['size']})")
            return old
    new, why = imported(path, source_dir, env) if source_dir else (None, "")
    if new is None:
        if why:
            log(f"{path.name}: not imported: {why}")
        log(f"{path.name}: executing ({' '.join(f'{k}={v}' for k, v in env.items()) or 'its default size'})")
        new = execute(path, env, timeout)
        log(f"{path.name}: {new.metadata['dmat_site']['size']}, {new.metadata['dmat_site']['seconds']:.0f} s")
    else:
        log(f"{path.name}: {why}")
    new.metadata["dmat_site"].update(key=key, env=env)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_suffix(".tmp")
    nbformat.write(new, tmp)
    os.replace(tmp, kept)
    return new


# --------------------------------------------------------------------------- widgets as static HTML
def _esc(x) -> str:
    return html.escape(str(x))


def _outputs_html(outputs: list) -> str:
    """The outputs an Output widget captured, as HTML (figures inline as data URIs)."""
    parts = []
    for o in outputs:
        kind = o.get("output_type")
        if kind == "stream":
            parts.append(f"<pre>{_esc(o.get('text', ''))}</pre>")
        elif kind == "error":
            tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(o.get("traceback", [])))
            parts.append(f"<pre>{_esc(tb)}</pre>")
        else:
            data = o.get("data", {})
            for mime in ("image/png", "image/jpeg"):
                if mime in data:
                    b64 = "".join(data[mime]).replace("\n", "")
                    parts.append(f'<img src="data:{mime};base64,{b64}" alt="figure">')
                    break
            else:
                if "image/svg+xml" in data:
                    parts.append("".join(data["image/svg+xml"]))
                elif "text/html" in data:
                    parts.append("".join(data["text/html"]))
                elif "text/plain" in data:
                    parts.append(f"<pre>{_esc(''.join(data['text/plain']))}</pre>")
    return "".join(parts)


CONTROLS = {"SelectionSliderModel", "SelectionRangeSliderModel", "IntSliderModel", "FloatSliderModel",
            "FloatLogSliderModel", "IntRangeSliderModel", "FloatRangeSliderModel", "DropdownModel",
            "RadioButtonsModel", "ToggleButtonsModel", "SelectModel", "CheckboxModel", "ToggleButtonModel",
            "TextModel", "IntTextModel", "FloatTextModel", "BoundedIntTextModel", "BoundedFloatTextModel",
            "ButtonModel"}


def _control(label: str, body: str, readout: str) -> str:
    return (f'<div class="dmat-widget-control">{label}{body}'
            f'<output class="dmat-widget-readout">{_esc(readout)}</output></div>')


def widget_html(model_id: str, models: dict, found: set, depth: int = 0) -> str:
    """One widget and its children as static HTML, from the saved state; `found` collects the
    model names met (to tell controls from display-only widgets)."""
    m = models.get(model_id)
    if m is None or depth > 32:
        return ""
    name, s = m.get("model_name", ""), m.get("state", {})
    found.add(name)
    desc = s.get("description", "")
    label = f'<span class="dmat-widget-label">{_esc(desc)}</span>' if desc else ""

    def kids():
        return "".join(widget_html(str(c).removeprefix("IPY_MODEL_"), models, found, depth + 1)
                       for c in s.get("children", []))

    if name == "HBoxModel":
        return f'<div class="dmat-widget-hbox">{kids()}</div>'
    if name in ("VBoxModel", "BoxModel", "GridBoxModel", "AccordionModel", "TabModel", "StackModel"):
        return f'<div class="dmat-widget-vbox">{kids()}</div>'
    if name == "OutputModel":
        return f'<div class="dmat-widget-output">{_outputs_html(s.get("outputs", []))}</div>'
    if name in ("HTMLModel", "HTMLMathModel"):
        return f'<span class="dmat-widget-html">{label}{s.get("value", "")}</span>'
    if name == "LabelModel":
        return f'<span class="dmat-widget-html">{_esc(s.get("value", ""))}</span>'
    if name in ("IntProgressModel", "FloatProgressModel"):
        lo, hi = float(s.get("min", 0)), float(s.get("max", 100))
        return (f'<span class="dmat-widget-control">{label}<progress max="{hi - lo:g}" '
                f'value="{float(s.get("value", 0)) - lo:g}"></progress></span>')
    if name == "SelectionSliderModel":
        labels, i = s.get("_options_labels", []), int(s.get("index", 0))
        body = f'<input type="range" min="0" max="{max(len(labels) - 1, 0)}" value="{i}" disabled>'
        return _control(label, body, labels[i] if i < len(labels) else "")
    if name in ("IntSliderModel", "FloatSliderModel", "FloatLogSliderModel"):
        v, lo, hi, step = (float(s.get(k, d)) for k, d in (("value", 0), ("min", 0), ("max", 100), ("step", 1)))
        shown = v
        if name == "FloatLogSliderModel":                 # min, max and step are exponents of `base`
            v = math.log(max(v, 1e-300), float(s.get("base", 10)))
        body = f'<input type="range" min="{lo:g}" max="{hi:g}" step="{step:g}" value="{v:g}" disabled>'
        return _control(label, body, f"{shown:g}")
    if name in ("DropdownModel", "RadioButtonsModel", "ToggleButtonsModel", "SelectModel"):
        labels, i = s.get("_options_labels", []), s.get("index")
        return _control(label, "", labels[i] if isinstance(i, int) and i < len(labels) else "")
    if name in ("CheckboxModel", "ToggleButtonModel"):
        checked = " checked" if s.get("value") else ""
        return _control(label, f'<input type="checkbox" disabled{checked}>', "")
    if name == "ButtonModel":
        return f'<button disabled>{_esc(desc)}</button>'
    if "value" in s and name.endswith("TextModel"):
        return _control(label, f'<input type="text" value="{_esc(s["value"])}" disabled>', "")
    return f'<span class="dmat-widget-unknown">{_esc(name.removesuffix("Model"))}</span>'


def repository_links(markdown: str, built: set, folder: str = "notebooks") -> str:
    """Markdown links to files of the repository (`../docs/science.md` from a notebook in `folder`;
    a notebook not in this build) made links to the repository: the site holds only the pages."""
    blob = f"{repository_url()}/blob/main/"

    def repl(m):
        target = m[1]
        if re.match(r"[a-z]+:|#", target) or target.split("#")[0] in built:
            return m[0]
        path = os.path.normpath(os.path.join(folder, target)).replace(os.sep, "/")
        return f"]({blob}{path})"
    return re.sub(r"\]\(([^)\s]+)\)", repl, markdown)


def site_copy(nb, built: set):
    """The notebook as the site shows it: widget outputs as static HTML (text/plain kept as the
    fallback), no widget state in the metadata (so no widget JavaScript is loaded), and links to
    the repository's files made repository links."""
    nb = copy.deepcopy(nb)
    for c in nb.cells:
        if c.cell_type == "markdown":
            c.source = repository_links(c.source, built)
    models = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            data = o.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            view = data.pop(WIDGET_VIEW)
            model_id = view.get("model_id", "") if isinstance(view, dict) else ""
            if model_id not in models:               # no state saved: the text/plain fallback stays
                continue
            found = set()
            body = widget_html(model_id, models, found)
            note = ('<p class="dmat-widget-note">A static copy of this widget as the notebook left it: its '
                    'controls need a running kernel (open the notebook in JupyterLab or Colab to use them).'
                    '</p>') if found & CONTROLS else ""
            data["text/html"] = f'<div class="dmat-widget">{body}{note}</div>'
    nb.metadata.pop("widgets", None)
    return nb


# --------------------------------------------------------------------------- the index page
def readme_intro_and_table() -> tuple[str, list[tuple[str, str, str]]]:
    """README's first paragraph (relative links made repository links) and the rows of its
    '## Notebooks' table: (title, notebook file name, what it teaches)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split("\n", 1)[1].lstrip("\n")
    intro = repository_links(body.split("\n\n", 1)[0], set(), folder=".")
    section = text.split("\n## Notebooks\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| \[([^\]]+)\]\(notebooks/([^)]+\.ipynb)\) \| (.+?) \|$", section, re.M)
    return intro, rows


def _duration(seconds) -> str:
    if seconds is None:
        return "time not recorded"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def index_page(built: dict, quick: bool) -> str:
    """index.md: the intro, the notebook table (linked where built, with the size each ran at) and
    the hidden table of contents."""
    intro, rows = readme_intro_and_table()
    lines = ["# dmat: diffusion models and adversarial training", "", intro, "",
             "Every page below is a notebook of the repository, executed top to bottom "
             + ("in **quick mode** (`DMAT_QUICK=1`: small sizes, seconds each; its numbers mean nothing)."
                if quick else "at the largest size a CPU runs in minutes: the toy notebooks 01-04 at their "
                "default size, the image notebooks 05-08 at their `digits` size where they have one (else "
                "their default on a CPU)."),
             "Widgets are shown as the notebook left them (static: their controls need a running kernel); "
             "run a notebook yourself in JupyterLab or Colab to move them.", "",
             "| notebook | what it teaches | executed at |", "|---|---|---|"]
    listed = set()
    for title, name, teaches in rows:
        listed.add(name)
        meta = built.get(name)
        if meta is None:
            lines.append(f"| {title} | {teaches} | not in this build |")
        else:
            lines.append(f"| [{title}]({name}) | {teaches} | {meta['size']}, {meta['device']}, "
                         f"{_duration(meta.get('seconds'))} |")
    for name, meta in built.items():                 # a notebook README's table does not list yet
        if name not in listed:
            lines.append(f"| [{name[:-6]}]({name}) |  | {meta['size']}, {meta['device']}, "
                         f"{_duration(meta.get('seconds'))} |")
    dates = sorted({m["date"] for m in built.values() if m.get("date")})
    machines = sorted({m["machine"] for m in built.values() if m.get("machine")})
    lines += ["", f"Executed {', '.join(dates) or 'on an unknown date'}"
              + (f" on {', '.join(machines)}" if machines else "") + " by `tools/build_site.py`; "
              "built with Sphinx and MyST-NB (`make docs`).", "",
              "```{toctree}", ":hidden:", ":maxdepth: 1", "", *[n[:-6] for n in built], "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the build
def build(numbers=(), quick=False, source_dir=None, force=False, out=SITE, build_dir=BUILD,
          timeout=None, log=LOG) -> Path:
    """Execute (or take from the cache) the chosen notebooks, stage them and build the site."""
    import importlib.util
    missing = [m for m in ("sphinx", "myst_nb", "furo", "nbclient") if importlib.util.find_spec(m) is None]
    if missing:                      # before hours of execution, not after
        raise SystemExit(f"{', '.join(missing)} not installed: pip install -e '.[docs]' (make docs does)")
    import nbformat
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    unknown = set(numbers) - {p.name[:2] for p in paths}
    if unknown:
        raise SystemExit(f"no notebook numbered {', '.join(sorted(unknown))}")
    paths = [p for p in paths if not numbers or p.name[:2] in numbers]
    cache = build_dir / "executed" / ("quick" if quick else "course")
    src = build_dir / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    built = {}
    for p in paths:
        nb = executed(p, quick, cache, source_dir, force, timeout, log)
        nbformat.write(site_copy(nb, {q.name for q in paths}), src / p.name)
        built[p.name] = nb.metadata["dmat_site"]
    (src / "index.md").write_text(index_page(built, quick), encoding="utf-8")
    # Sphinx writes into the build folder, then the pages are copied out: MyST-NB puts the files
    # it extracts (figures) beside the folder it writes into, which must not be the repository root
    html = build_dir / "html"
    shutil.rmtree(html, ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", str(CONF),
                        "-d", str(build_dir / "doctrees"), str(src), str(html)],
                       capture_output=True, text=True)
    if r.stderr.strip():
        log(r.stderr.rstrip())
    if r.returncode:
        raise SystemExit(f"sphinx failed (exit {r.returncode}): {r.stdout[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(html, out)
    log(f"site: {out / 'index.html'} ({len(built)} notebooks; sphinx {time.perf_counter() - t0:.0f} s)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", help="two-digit numbers (default: all)")
    p.add_argument("--quick", action="store_true", help="quick mode (DMAT_QUICK=1), the tests' size")
    p.add_argument("--from", dest="source_dir", type=Path, metavar="DIR",
                   help="a folder of executed notebooks to reuse (bench/notebook_time.py --keep DIR)")
    p.add_argument("--force", action="store_true", help="execute again even when the cache is current")
    p.add_argument("--out", type=Path, default=SITE, help="the site folder (default: site/)")
    p.add_argument("--build-dir", type=Path, default=BUILD,
                   help="the cache and staging folder (default: docs/_build/)")
    p.add_argument("--timeout", type=int, default=None, help="seconds a cell may run (default: no limit)")
    a = p.parse_args(argv)
    build(tuple(a.notebooks), a.quick, a.source_dir, a.force, a.out, a.build_dir, a.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
