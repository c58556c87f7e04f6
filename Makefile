# Ticks: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.DEFAULT_GOAL := help
.PHONY: help run test soak lint migrate bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-8s %s\n", $$1, $$2}'

# Ticks runs on CPython 3.11 to 3.14 (its embedded servers ship wheels for those).
$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 14))' 2>/dev/null || { \
	  echo "make: Ticks needs Python 3.11 to 3.14; '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo missing)."; \
	  echo "      Run with another one, e.g. make $(MAKECMDGOALS) PYTHON=python3.13"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP_RUN): requirements.txt requirements-embedded.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-embedded.txt
	touch $@

$(STAMP_DEV): requirements.txt requirements-embedded.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@ $(STAMP_RUN)

run: $(STAMP_RUN) ## Start web, worker, deliveries and Flower (embedded Postgres/Redis unless DATABASE_URL/REDIS_URL are set)
	$(PY) -m devserver

# The status page's browser test drives a Chromium: the system's (Debian: `apt-get install
# chromium`), else one Playwright downloads once into ~/.cache/ms-playwright.
CHROMIUM_FOUND := $(shell command -v chromium || command -v chromium-browser || command -v google-chrome)

test: $(STAMP_DEV) ## Run the whole test suite (embedded servers unless TEST_DATABASE_URL/TEST_REDIS_URL are set)
ifeq ($(CHROMIUM_FOUND),)
	$(VENV)/bin/playwright install chromium
endif
	$(PY) -m pytest $(PYTEST_ARGS)

soak: $(STAMP_DEV) ## Fault soak on Redis and on RabbitMQ: minutes of load while faults cycle (SOAK_SECONDS, default 240)
	$(PY) -m pytest -m soak -s tests/faults/test_soak.py $(PYTEST_ARGS)

lint: $(STAMP_DEV) ## Lint and type-check (ruff, mypy)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app workers schemas devserver.py embedded.py

migrate: $(STAMP_RUN) ## Apply pending migrations to DATABASE_URL, else to make run's embedded PostgreSQL
	$(PY) -m devserver migrate

bench: $(STAMP_DEV) ## Run the benchmarks
	$(PY) -m bench

clean: ## Remove the venv and caches (keeps var/, the embedded servers' data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
