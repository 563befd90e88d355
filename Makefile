# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs what the demo needs, distils SevenNet-0 into a PaiNN
#               student (offline, CPU)
#   make test   creates .venv, installs every teacher and the dev extras, checks ruff, runs
#               the test suite; then the MACE teacher's tests in .venv-mace (mace-torch
#               cannot share an environment with SevenNet: see pyproject.toml)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
MACE_VENV  := .venv-mace
MACE_STAMP := $(MACE_VENV)/.installed
# torch first, pinned: otherwise pip may resolve a multi-GB CUDA build while installing the rest.
TORCH  ?= torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e ".[teachers,tensorboard,dev]"
	touch $(STAMP)

# The demo's teacher (SevenNet-0) and TorchSim (batched teacher MD) only: a shorter install.
$(DEMO_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e ".[sevenn,torchsim,tensorboard]"
	touch $(DEMO_STAMP)

# MACE (e3nn 0.4.4) beside the project and the dev tools, without SevenNet (e3nn >= 0.5).
$(MACE_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(MACE_VENV)
	$(MACE_VENV)/bin/pip install -q $(TORCH)
	$(MACE_VENV)/bin/pip install -q -c constraints.txt -e ".[mace,dev]"
	touch $(MACE_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/mlff-distill run configs/quickstart.yaml

test: $(STAMP) $(MACE_STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/python -m pytest -q
	$(MACE_VENV)/bin/python -m pytest -q tests/teachers/test_mace.py

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) $(MACE_VENV) runs .pytest_cache .ruff_cache
