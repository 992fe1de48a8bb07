# dmat: two commands do everything on a fresh machine.
#   make demo   the known-density demo (exact denoiser, every sampler, exact metrics), CPU, minutes
#   make test   the test suite, notebooks included (quick mode)
#   make docs   the course site: every notebook executed and rendered into site/ (as long as the notebooks)
# Each creates .venv on first use and reuses it afterwards (re-installed when pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow browser bench docs readme clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[notebooks,test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m dmat_core demo --out results/demo

test: $(STAMP) browser
	$(PY) -m pytest

# Debian's chromium for tests/test_browser.py (Playwright drives it; it never downloads one).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: could not install chromium (needs root and Debian); the browser test will skip outside CI"; }

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/toy_dm.py

# The course site in site/ (tools/build_site.py): every notebook executed, toy notebooks 01-04 at
# their default CPU size, image notebooks 05-08 at "digits" (as long as the notebooks take; later
# builds run only the notebooks whose cells changed), then rendered by Sphinx + MyST-NB.
# `make docs SITE_ARGS=--quick`: quick mode, minutes.
SITE_ARGS ?=
docs: $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	$(PY) tools/build_site.py $(SITE_ARGS)

# Re-render the README blocks that quote results files (never typed by hand).
readme: $(STAMP)
	$(PY) tools/render_readme.py

clean-venv:
	rm -rf $(VENV)
