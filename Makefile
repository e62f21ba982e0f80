# tunefleet — every target works from a fresh clone.
SHELL := /bin/bash
PY_SYS ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOME_DIR ?= $(or $(TUNEFLEET_HOME),$(CURDIR)/var)
INSTALL_STAMP := $(VENV)/.install-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
MODEL_DIR := $(HOME_DIR)/models/tiny-llama

.PHONY: install model test lint reliability run run-registry clean

install: $(INSTALL_STAMP)

# torch first from the local CPU wheel (any other spec pulls GBs of CUDA), then the
# project, then drop the CUDA builds of torchvision & co that break `import peft`.
$(INSTALL_STAMP): pyproject.toml
	@test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,dev]'
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
	@rm -f $(VENV)/.install-*
	@touch $@

model: install
	TUNEFLEET_HOME=$(HOME_DIR) $(PY) -m shared.models.build --out $(MODEL_DIR)

test: install model
	bash scripts/system_deps.sh
	TUNEFLEET_HOME=$(HOME_DIR) bash scripts/run_tests.sh

lint: install
	$(VENV)/bin/ruff check gateway services shared tests benchmarks
	$(VENV)/bin/ruff format --check gateway services shared tests benchmarks
	$(VENV)/bin/mypy shared gateway services
	bash scripts/audit_deps.sh   # pip-audit; exceptions with reasons in scripts/audit_deps.ignore

# Every fault, security and property test plus the bounded soak (RELIABILITY.md).
reliability: install model
	bash scripts/system_deps.sh
	TUNEFLEET_HOME=$(HOME_DIR) bash scripts/reliability.sh

# Starts the fleet, runs the demo; the fleet keeps running (under CI=true it stops after).
run: install model
	TUNEFLEET_HOME=$(HOME_DIR) $(VENV)/bin/tunefleet up --demo

run-registry:
	TUNEFLEET_HOME=$(HOME_DIR) $(PY) -m services.registry

clean:
	rm -rf $(VENV) var .pytest_cache
