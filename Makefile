# Soul: `make run` starts the whole local stack, `make test` runs the whole suite. Both set themselves up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.soul-installed
PYTEST_ARGS ?=

.PHONY: setup run test test-fast test-e2e test-ui browser bench lint clean clients clients-setup node gpu-wheels

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

# Wheels the lent CUDA machine lacks (no network there; it has torch, transformers, peft, grpcio, ...) for
# bench/gpu.py and bench/gpu_session.sh: CPython 3.12 x86-64, into .whl/ (ignored; name it in the run's carry).
# --no-deps: the import closure of bench/gpu.py and gpu_runner's ModelHost, minus what that machine has, plus
# protobuf and typing-extensions at the floors these wheels check (>= 6.33.5, >= 4.16.0).
gpu-wheels: setup
	rm -rf .whl
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
	  diffusers==0.42.1 torchao==0.18.0 structlog==26.1.0 pydantic==2.14.4 pydantic-core==2.50.5 \
	  pydantic-settings==2.16.3 python-dotenv==1.2.4 typing-inspection==0.4.5 annotated-types==0.8.0 \
	  python-ulid==4.1.0 google-api-core==2.44.0 google-auth==2.63.0 google-cloud-core==2.8.0 \
	  google-cloud-firestore==2.34.1 googleapis-common-protos==1.76.0 grpcio-status==1.85.3 proto-plus==1.29.0 \
	  cryptography==50.0.2 cffi==2.1.1 protobuf==7.36.2 typing-extensions==4.16.0
	du -sh .whl
