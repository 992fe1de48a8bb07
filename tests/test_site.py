"""The course site builds and renders in a browser, offline.

Builds the site from notebook 01 in quick mode (tools/build_site.py --quick 01: executed with
nbclient, rendered by Sphinx + MyST-NB into a temporary folder), serves it on 127.0.0.1 and opens it
in headless Chromium (Debian's `chromium`, driven by Playwright) with every request to another host
blocked. Checks: the index links to the notebook's page; on that page a figure (a cell's PNG output)
has loaded; the widget page (01's sigma viewer) shows its widget as the notebook left it, its
slider at the value the notebook set and the figure its Output widget captured, with no page error
and no widget left unrendered. That is what "renders" can mean on a static page: the controls are
disabled copies (moving the slider needs a kernel; tests/test_browser.py moves it in JupyterLab).
The only requests that may leave the machine are MathJax (formulas) and the Colab badge image.
Two more tests check parts of the build without a browser: a widget's saved state written as static
HTML, and the cache key and the rules for reusing notebooks executed elsewhere (`--from`).
"""
from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NOTEBOOK = "01_known_densities_and_flows"        # figures, and the sigma slider: the widget page
# what a page may try to fetch from elsewhere; blocked here, so nothing checked depends on it
OFFSITE_OK = {"cdn.jsdelivr.net": "/npm/mathjax", "colab.research.google.com": "/assets/colab-badge.svg"}


def _missing(what: str):
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if CHROMIUM is None:
        _missing("Debian's chromium is not installed (make test installs it: apt-get install chromium)")
    for module, extra in (("sphinx", "docs"), ("myst_nb", "docs"), ("furo", "docs"), ("playwright", "test")):
        if importlib.util.find_spec(module) is None:
            _missing(f"{module} is not installed (pip install -e '.[{extra}]')")
    tmp = tmp_path_factory.mktemp("site")
    # --timeout bounds each cell. The cell after 01's widget viewer used to start exactly --timeout
    # seconds late (nbclient's missed wake-up on the shell channel, tools/notebook_client.py); the
    # build's client now waits in short polls, and the limit only guards against a hung kernel.
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_site.py"), "--quick", NOTEBOOK[:2],
                        "--build-dir", str(tmp / "build"), "--out", str(tmp / "site"), "--timeout", "120"],
                       capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # nothing written beside the site (MyST-NB's extracted figures stay in the build folder: with
    # --out at the repository root, a jupyter_execute/ folder used to appear there)
    assert sorted(p.name for p in tmp.iterdir()) == ["build", "site"], sorted(p.name for p in tmp.iterdir())
    print(f"site built in {time.perf_counter() - t0:.1f} s:\n{r.stdout}")
    handler = functools.partial(_QuietHandler, directory=str(tmp / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                     "--disable-background-networking", "--disable-component-update",
                                     "--disable-sync"])
        yield b
        b.close()


def _open(browser, url):
    """A page at `url` with every request off 127.0.0.1 blocked; returns (page, errors, blocked)."""
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors, blocked = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        if urlparse(r.request.url).hostname == "127.0.0.1" or r.request.url.startswith("data:"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()
    page.route("**/*", route)
    page.goto(url, wait_until="load", timeout=60_000)
    return page, errors, blocked


def _offsite_ok(urls):
    bad = [u for u in urls if not any(urlparse(u).hostname == h and urlparse(u).path.startswith(p)
                                      for h, p in OFFSITE_OK.items())]
    assert not bad, f"the site fetches from elsewhere: {bad}"


def test_index_links_to_the_notebook_pages(site, browser):
    url, _ = site
    page, errors, blocked = _open(browser, f"{url}/index.html")
    links = page.eval_on_selector_all("article a[href]", "as => as.map(a => a.getAttribute('href'))")
    assert f"{NOTEBOOK}.html" in links, f"the index does not link to {NOTEBOOK}.html: {links}"
    text = page.inner_text("article")
    assert "not in this build" in text, "the notebooks left out of this build are not listed as such"
    assert "quick (DMAT_QUICK=1)" in text, "the index does not say the size the notebook ran at"
    page.click(f"article a[href='{NOTEBOOK}.html']")
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/{NOTEBOOK}.html")
    assert not errors, errors
    _offsite_ok(blocked)


def test_a_figure_and_the_widget_page_render(site, browser):
    url, tmp = site
    page, errors, blocked = _open(browser, f"{url}/{NOTEBOOK}.html")
    page.wait_for_load_state("networkidle")
    # a figure: a cell's PNG output (not inside a widget), loaded and of non-zero size
    figures = page.locator(".cell_output img:not(.dmat-widget img)")
    assert figures.count() >= 2, "fewer than two figures among the cell outputs"
    first = figures.first
    first.scroll_into_view_if_needed()
    assert first.evaluate("img => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0"), \
        "a figure did not load"
    # the widget: the viewer's slider at the value the notebook set, and the figure its Output holds
    widget = page.locator(".dmat-widget").filter(has=page.locator("input[type=range]")).first
    assert widget.count() == 1, "the sigma viewer is not on the page"
    widget.scroll_into_view_if_needed()
    control = widget.locator(".dmat-widget-control").first
    assert control.locator(".dmat-widget-label").inner_text() == "sigma"
    assert control.locator(".dmat-widget-readout").inner_text() == "0.5"     # value=0.5 in the notebook
    assert control.locator("input[type=range]").is_disabled()
    img = widget.locator(".dmat-widget-output img").first
    assert img.evaluate("img => img.complete && img.naturalWidth > 100"), "the viewer's figure did not load"
    assert "running kernel" in widget.inner_text(), "the static widget does not say it needs a kernel"
    # nothing left unrendered: no widget-view scripts, no widget text fallback, no page error
    assert page.locator("script[type='application/vnd.jupyter.widget-view+json']").count() == 0
    text = page.inner_text("article")
    for bad in ("VBox(children=", "HBox(children=", "Error displaying widget", "Traceback (most recent call last)"):
        assert bad not in text, f"{bad!r} on the page"
    assert not errors, errors
    _offsite_ok(blocked)
    widget.screenshot(path=str(tmp / "widget.png"))


# --------------------------------------------------------------------------- the build's parts, no browser
def _tools():
    sys.path.insert(0, str(ROOT / "tools"))
    import build_site
    return build_site


def _notebook(code: list[str], outputs: list[list] | None = None):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t")] + [nbformat.v4.new_code_cell(c) for c in code]
    for c, outs in zip(nb.cells[1:], outputs or []):
        c.outputs = [nbformat.from_dict(o) for o in outs]
    return nb


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_widget_state_becomes_static_html():
    b = _tools()
    view = {"output_type": "display_data", "metadata": {},
            "data": {b.WIDGET_VIEW: {"model_id": "box", "version_major": 2, "version_minor": 0},
                     "text/plain": "VBox(children=(...))"}}
    nb = _notebook(["viewer()"], [[view]])
    nb.metadata["widgets"] = {b.WIDGET_STATE: {"version_major": 2, "version_minor": 0, "state": {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_s", "IPY_MODEL_o"]}},
        "s": {"model_name": "SelectionSliderModel",
              "state": {"description": "sigma", "_options_labels": ["0.1", "0.5", "1"], "index": 1}},
        "o": {"model_name": "OutputModel", "state": {"outputs": [
            {"output_type": "display_data", "metadata": {}, "data": {"image/png": PNG, "text/plain": "<Figure>"}}]}},
    }}}
    site = b.site_copy(nb, set())
    data = site.cells[1].outputs[0]["data"]
    assert b.WIDGET_VIEW not in data and "widgets" not in site.metadata   # no widget JavaScript needed
    html = data["text/html"]
    assert '<span class="dmat-widget-label">sigma</span>' in html
    assert 'type="range" min="0" max="2" value="1" disabled' in html and ">0.5</output>" in html
    assert f'src="data:image/png;base64,{PNG}"' in html and "running kernel" in html
    assert b.WIDGET_VIEW in nb.cells[1].outputs[0]["data"], "site_copy changed the executed notebook"


def test_cache_key_and_what_may_be_imported(tmp_path, monkeypatch):
    b = _tools()
    import nbformat
    code = ["from dmat_core.common.notebook import setup\nsetup(None)", "plt.plot([0, 1]); plt.show()"]
    nb = _notebook(code)
    assert b.cache_key(nb, {}) != b.cache_key(nb, {"DMAT_QUICK": "1"})
    assert b.cache_key(nb, {}) != b.cache_key(_notebook(code[:1]), {})
    assert b.run_env(nb, quick=False) == {} and b.run_env(nb, quick=True) == {"DMAT_QUICK": "1"}
    assert b.run_env(_notebook(['setup_size(MODE, cpu_size="digits")']), quick=False) == {"DMAT_MODE": "digits"}
    size = {"output_type": "stream", "name": "stdout", "text": "dmat | size: quick (DMAT_QUICK=1) | device: cpu (x)\n"}
    figure = {"output_type": "display_data", "metadata": {}, "data": {"image/png": PNG, "text/plain": "<Figure>"}}
    current, ran = tmp_path / "cur", tmp_path / "ran"
    current.mkdir(), ran.mkdir()
    nbformat.write(nb, current / "01_t.ipynb")

    def verdict(notebook, env):
        nbformat.write(notebook, ran / "01_t.ipynb")
        return b.imported(current / "01_t.ipynb", ran, env)

    got, why = verdict(_notebook(code, [[size], [figure]]), {"DMAT_QUICK": "1"})
    assert got is not None and got.cells[2].outputs[0]["data"]["image/png"] == PNG, why
    assert verdict(_notebook(code, [[size], [figure]]), {})[0] is None            # quick is not the course
    assert verdict(_notebook(code, [[size], []]), {"DMAT_QUICK": "1"})[0] is None  # Agg: plt.show() drew nothing
    assert verdict(_notebook([code[0], "plt.show()"], [[size], [figure]]), {"DMAT_QUICK": "1"})[0] is None
