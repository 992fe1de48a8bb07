# dmat: two commands do everything on a fresh machine.
#   make demo   the known-density demo (exact denoiser, every sampler, exact metrics), CPU, minutes
#   make test   the test suite, notebooks included (quick mode)
# Both create .venv on first use and reuse it afterwards (re-installed when pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow browser bench readme clean-venv

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

# Re-render the README blocks that quote results files (never typed by hand).
readme: $(STAMP)
	$(PY) tools/render_readme.py

clean-venv:
	rm -rf $(VENV)
