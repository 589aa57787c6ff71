# DisCo cache — one command to test, one to run the demo.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install
PKGS   := teacher_service student_trainer store

.PHONY: install test lint demo bench bench-gpu serve clean format docker-smoke

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the dependency files change.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check $(PKGS) tests bench
	$(BIN)/ruff format --check $(PKGS) tests bench
	$(BIN)/mypy $(PKGS)
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_imports.py

format: $(STAMP)
	$(BIN)/ruff check --fix $(PKGS) tests bench
	$(BIN)/ruff format $(PKGS) tests bench

demo: $(STAMP)
	$(BIN)/disco demo

bench: $(STAMP)
	$(BIN)/python bench/store_io.py
	$(BIN)/python bench/precompute.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/knn.py
	$(BIN)/python bench/service.py

bench-gpu:
	bash bench/gpu_check.sh

serve: $(STAMP)
	$(BIN)/disco serve

# Build the service image and run it under docker compose (root; see scripts/docker_smoke.sh).
docker-smoke: $(STAMP)
	PYTHON=$(abspath $(BIN)/python) bash scripts/docker_smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
