# The README's two commands: `make demo` and `make test`.
#
# `make demo` installs only what the demo needs (nbflow and its kernel), printing each step. `make test`
# installs everything the suite uses from constraints.txt, a lock of every package it uses (the package's
# own dependency ranges stay ranges: users install nbflow into environments of their own). A new upstream
# release therefore never turns a fresh clone red. To move to newer releases: `make test-latest` runs the
# suite against today's newest releases in a separate venv; when it passes, `make upgrade` rewrites the
# lock and `make test` confirms it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
DEMO_HOME := $(CURDIR)/.nbflow-demo
LOCK := constraints.txt
EXTRAS := test,dev,ai,dask,docs
LATEST := .venv-latest
# What the Makefile itself installs besides the project: the build backend and its readme plugin (the
# editable install runs without build isolation, so they are locked too), the installer, and uv, which
# writes the lock.
BUILD_TOOLS := pip hatchling hatch-fancy-pypi-readme editables
TOOLS := $(BUILD_TOOLS) uv
DEMO_STAMP := $(VENV)/.demo-installed
# The oldest pydantic-ai the `ai` extra admits; the agent tests run against it too (tests/integrations).
AI_OLDEST := $(shell sed -n 's/.*"pydantic-ai-slim>=\([0-9.]*\).*/\1/p' pyproject.toml)
AI_OLDEST_DIR := pydantic-ai-oldest/site-packages

.PHONY: demo docs test test-latest lint lock upgrade bench bench-prefect install clean system-deps

$(PY):
	$(PYTHON) -m venv $(VENV)

# $(1): the venv. Installs pydantic-ai's oldest supported release beside it (not into it), where the agent
# tests put it first on the path of a second run of themselves.
define install_oldest_ai
	rm -rf $(1)/$(AI_OLDEST_DIR)
	$(1)/bin/python -m pip --disable-pip-version-check -q install --no-deps --target $(1)/$(AI_OLDEST_DIR) \
		"pydantic-ai-slim==$(AI_OLDEST)" "pydantic-graph==$(AI_OLDEST)"
endef

# $(1): the venv. The kernel the notebook tests and `make demo` start.
define install_kernel
	$(1)/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (nbflow)" >/dev/null
endef

$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PIP) install -c $(LOCK) $(TOOLS)
	$(PIP) install --no-build-isolation -c $(LOCK) -e ".[$(EXTRAS)]"
	$(call install_oldest_ai,$(VENV))
	$(call install_kernel,$(VENV))
	touch $(STAMP)

install: $(STAMP)

# The demo needs nbflow and a kernel, nothing else: not the test, dev, docs or browser tools `make test`
# installs (about 160 MB against 950). pip is not quiet here: its lines are the progress of a first run.
$(DEMO_STAMP): pyproject.toml $(LOCK) | $(PY)
	@echo "=== installing the build tools (pip, hatchling) into $(VENV) ==="
	$(PY) -m pip --disable-pip-version-check install --progress-bar off -c $(LOCK) $(BUILD_TOOLS)
	@echo "=== installing nbflow and its dependencies (IPython, ipykernel, nbclient, pydantic, diskcache...) ==="
	$(PY) -m pip --disable-pip-version-check install --progress-bar off --no-build-isolation -c $(LOCK) -e .
	@echo "=== registering the venv's Python as the kernel \"Python 3 (nbflow)\" ==="
	$(call install_kernel,$(VENV))
	touch $(DEMO_STAMP)

# Runs notebooks/quickstart.ipynb headless twice against a fresh demo store. The notebook's flow computes
# its three tasks on the first run; its last cell calls the same tasks again, so even the first run
# ends with three cached rows. The second run, in a new kernel, is served from the cache throughout.
demo: $(DEMO_STAMP)
	rm -rf $(DEMO_HOME)
	@echo
	@echo "=== first run, an empty store: the flow computes its 3 tasks (the last cell calls them again: cached) ==="
	NBFLOW_HOME=$(DEMO_HOME) $(VENV)/bin/nbflow run notebooks/quickstart.ipynb
	@echo
	@echo "=== second run, a fresh kernel: every task served from the cache ==="
	NBFLOW_HOME=$(DEMO_HOME) $(VENV)/bin/nbflow run notebooks/quickstart.ipynb

# System packages the suite needs (Chromium for the widget tests), installed when missing. The browser
# tests use this /usr/bin/chromium through Playwright (never `playwright install`) and fail without it.
# Without root, nothing is installed: the message says what to install, and make stops.
system-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "make test needs Chromium at /usr/bin/chromium for the widget's browser tests (tests/browser)," >&2; \
			echo "and installing it needs root. Install it, then run make test again:" >&2; \
			echo "    sudo apt-get install chromium      (Debian, Ubuntu: the package is chromium)" >&2; \
			echo "or run this step as root: sudo make system-deps" >&2; \
			exit 1; \
		fi; \
		echo "installing chromium (apt)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# pytest includes tests/test_docs.py: a strict build of the docs (warnings are errors; broken internal
# links and anchors fail through mkdocs.yml's `validation:`; external links are not checked, as the
# machines that run the suite reach no site but the package index), and every code block of README.md
# and docs/ run as written.
define suite
	$(1)/bin/ruff check nbflow tests benchmarks
	$(1)/bin/mypy
	$(1)/bin/pytest -q
endef

# The documentation site, into site/ (`mkdocs serve` from the venv previews it while you edit).
docs: install
	$(VENV)/bin/mkdocs build --strict

test: install system-deps
	$(call suite,$(VENV))

# The same suite against the newest release of everything, in a venv of its own: how a lock bump starts.
test-latest: system-deps
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip --disable-pip-version-check -q install --upgrade pip
	$(LATEST)/bin/python -m pip --disable-pip-version-check -q install --upgrade -e ".[$(EXTRAS)]"
	$(call install_oldest_ai,$(LATEST))
	$(call install_kernel,$(LATEST))
	$(call suite,$(LATEST))

lint: install
	$(VENV)/bin/ruff check nbflow tests benchmarks
	$(VENV)/bin/mypy

# Writes the lock for every supported platform and Python (>= 3.11, the `ai` extra's floor). `make lock`
# keeps the pins it can and adds what pyproject.toml now asks for; `make upgrade` moves every pin to the
# newest release. uv resolves for all platforms and Pythons at once, which pip-compile cannot (it locks
# for the interpreter it runs on).
LOCK_COMMAND = printf '%s\n' $(TOOLS) | $(VENV)/bin/uv pip compile pyproject.toml - --quiet \
	--extra test --extra dev --extra ai --extra dask --extra bench --extra docs --universal --python-version 3.11 \
	--custom-compile-command "make lock" -o $(LOCK)

lock: | $(PY)
	$(PIP) install -c $(LOCK) uv
	$(LOCK_COMMAND)

upgrade: | $(PY)
	$(PIP) install -c $(LOCK) uv
	$(LOCK_COMMAND) --upgrade

# The benchmarks' peers (the bench extra), and every module compiled to .pyc up front: with
# PYTHONDONTWRITEBYTECODE=1 set, nothing else would ever write them and every import would compile.
$(VENV)/.bench-installed: pyproject.toml $(LOCK) | $(STAMP)
	$(PIP) install --no-build-isolation -c $(LOCK) -e ".[bench]"
	touch $@

bench: install $(VENV)/.bench-installed
	$(PY) -m compileall -q -j 0 $(VENV)/lib nbflow benchmarks >/dev/null || true
	$(PY) benchmarks/bench_overhead.py
	$(PY) benchmarks/bench_widget.py
	$(PY) benchmarks/bench_dask.py
	$(PY) benchmarks/bench_auto.py
	$(PY) benchmarks/bench_strings.py

# Optional: Prefect 3.8 (with a FastAPI it runs with) into the venv, then nbflow against it (not part of `make test`).
bench-prefect: install $(VENV)/.bench-installed
	$(PIP) install "prefect>=3.8,<3.9" "fastapi<=0.154"
	$(PY) -m compileall -q -j 0 $(VENV)/lib nbflow benchmarks >/dev/null || true
	$(PY) benchmarks/bench_prefect.py

clean:
	rm -rf $(VENV) $(LATEST) $(DEMO_HOME) site .pytest_cache .mypy_cache .ruff_cache
