# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs, distils SevenNet-0 into a PaiNN student (offline, CPU)
#   make test   creates .venv, installs with dev extras, checks ruff, runs the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch first, pinned: otherwise pip may resolve a multi-GB CUDA build while installing the rest.
TORCH  ?= torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e ".[teachers,tensorboard,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mlff-distill run configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
