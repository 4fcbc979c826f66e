# Soul: `make run` starts the whole local stack, `make test` runs the whole suite. Both set themselves up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.soul-installed
PYTEST_ARGS ?=

.PHONY: setup run test test-fast test-e2e test-ui browser bench lint clean

setup: $(STAMP)

# Re-installs whenever pyproject.toml changes. torch==2.13.0 is pinned: pip takes the CPU wheel on this image.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# `make run RUNNERS=3` starts three runners; `make run AUTOSCALE=0:4` lets the local autoscaler size them.
RUNNERS ?= 1
AUTOSCALE ?=
run: setup
	HF_HUB_OFFLINE=1 RUNNERS=$(RUNNERS) AUTOSCALE=$(AUTOSCALE) $(PY) -m emulators.devstack

test: setup browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not e2e and not fault and not ui" $(PYTEST_ARGS)

test-e2e: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "e2e or fault" $(PYTEST_ARGS)

test-ui: setup browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m ui $(PYTEST_ARGS)

# The page's tests drive Debian's chromium through Playwright (never `playwright install`): installed only when
# missing (needs root, as on CI).
CHROMIUM ?= /usr/bin/chromium
browser:
	test -x $(CHROMIUM) || (apt-get update && apt-get install -y --no-install-recommends chromium)

bench: setup
	HF_HUB_OFFLINE=1 $(PY) -m bench

clean:
	rm -rf .soul .pytest_cache
