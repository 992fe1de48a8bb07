# dmat: two commands do everything on a fresh machine.
#   make demo   the known-density demo (exact denoiser, every sampler, exact metrics), CPU, minutes
#   make test   the test suite, notebooks included (quick mode)
# Both create .venv on first use and reuse it afterwards (re-installed when pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow bench notebooks-strip readme clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[notebooks,test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m dmat_core demo --out results/demo

test: $(STAMP)
	$(PY) -m pytest

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
