# Soul: `make run` starts the whole local stack, `make test` runs the whole suite. Both set themselves up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.soul-installed
PYTEST_ARGS ?=

.PHONY: setup run test test-fast test-e2e test-ui browser bench lint clean clients clients-setup node

setup: $(STAMP) clients-setup

# Re-installs whenever pyproject.toml changes. torch==2.13.0 is pinned: pip takes the CPU wheel on this image.
# The Python client (clients/python, its own package) is installed beside it: the `soul` CLI uses it.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' -e ./clients/python
	touch $@

# The TypeScript client's toolchain (typescript, openapi-typescript, standardwebhooks) from package-lock.json;
# node and npm from Debian when the machine has none (needs root, as on CI).
TS_CLIENT := clients/typescript
TS_STAMP := $(TS_CLIENT)/node_modules/.package-lock.json
clients-setup: $(TS_STAMP)

$(TS_STAMP): $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	$(MAKE) node
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node:
	command -v node >/dev/null && command -v npm >/dev/null || \
	  (apt-get update && apt-get install -y --no-install-recommends nodejs npm)

# Regenerates both clients from the current endpoint table (clients/openapi.json, the Python models and
# operations, the TypeScript types and operations); commit the result. `make test` fails while they are stale.
clients: setup
	$(PY) clients/generate.py
	cd $(TS_CLIENT) && npm run --silent build

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
	rm -rf .soul .pytest_cache $(TS_CLIENT)/dist
