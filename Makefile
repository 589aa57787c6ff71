# DisCo cache — one command to test, one to run the demo.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install
PKGS   := teacher_service student_trainer store

.PHONY: install test lint demo bench bench-gpu serve clean format docker-smoke docs docs-serve docs-test

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
	$(BIN)/ruff check $(PKGS) tests bench docs/hooks.py
	$(BIN)/ruff format --check $(PKGS) tests bench docs/hooks.py
	$(BIN)/mypy $(PKGS) docs/hooks.py
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_imports.py
	$(MAKE) --no-print-directory docs

format: $(STAMP)
	$(BIN)/ruff check --fix $(PKGS) tests bench docs/hooks.py
	$(BIN)/ruff format $(PKGS) tests bench docs/hooks.py

# The documentation site (mkdocs.yml): a strict, offline build into runs/site/ (part of `make lint`);
# the reference pages are generated from the code by docs/hooks.py during the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

# Run every runnable block of the docs pages (also part of `make test`).
docs-test: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_docs_guides.py

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
