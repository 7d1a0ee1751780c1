# The README's two commands: `make serve` (the embedded service) and `make test` (lint, types, import rules, tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install serve demo test test-fast lint services gpu-check

$(BIN)/drlora: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(BIN)/drlora

install: $(BIN)/drlora

serve: install
	$(BIN)/drlora serve

demo: install
	$(BIN)/drlora train --model drlora-demo-moe --out runs/demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

services:
	bash scripts/services.sh

test: install lint services
	bash scripts/browser.sh
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: install lint services
	bash scripts/browser.sh
	$(BIN)/pytest -q -p no:cacheprovider -m "not slow" --durations=15

# On a machine with one CUDA device and a CUDA torch >= 2.10: speed, memory against the estimate, PEFT round trip.
gpu-check:
	bash scripts/gpu_check.sh runs/gpu-check
