# The README's two commands: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
DEMO_HOME := $(CURDIR)/.nbflow-demo

.PHONY: demo test lint bench bench-prefect install clean system-deps

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[test,dev,ai,dask]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (nbflow)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

# Runs notebooks/quickstart.ipynb headless twice against a fresh demo store: the first run computes,
# the second is served from the cache.
demo: install
	rm -rf $(DEMO_HOME)
	@echo "=== first run: computes every task ==="
	NBFLOW_HOME=$(DEMO_HOME) $(VENV)/bin/nbflow run notebooks/quickstart.ipynb
	@echo
	@echo "=== second run, a fresh kernel: served from the cache ==="
	NBFLOW_HOME=$(DEMO_HOME) $(VENV)/bin/nbflow run notebooks/quickstart.ipynb

# System packages the suite needs (Chromium for the widget tests), installed when missing. The browser
# tests use this /usr/bin/chromium through Playwright (never `playwright install`) and fail without it.
system-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing chromium (apt)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

test: install system-deps
	$(VENV)/bin/ruff check nbflow tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check nbflow tests benchmarks
	$(VENV)/bin/mypy

# The benchmarks' peers (the bench extra), and every module compiled to .pyc up front: with
# PYTHONDONTWRITEBYTECODE=1 set, nothing else would ever write them and every import would compile.
$(VENV)/.bench-installed: pyproject.toml | $(STAMP)
	$(PIP) install -e ".[bench]"
	touch $@

bench: install $(VENV)/.bench-installed
	$(PY) -m compileall -q -j 0 $(VENV)/lib nbflow benchmarks >/dev/null || true
	$(PY) benchmarks/bench_overhead.py
	$(PY) benchmarks/bench_widget.py
	$(PY) benchmarks/bench_dask.py

# Optional: Prefect 3.8 (with a FastAPI it runs with) into the venv, then nbflow against it (not part of `make test`).
bench-prefect: install $(VENV)/.bench-installed
	$(PIP) install "prefect>=3.8,<3.9" "fastapi<=0.154"
	$(PY) -m compileall -q -j 0 $(VENV)/lib nbflow benchmarks >/dev/null || true
	$(PY) benchmarks/bench_prefect.py

clean:
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache .mypy_cache .ruff_cache
