# Every target builds its own virtual environment; a fresh machine needs only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck unit demo demo-stop bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

demo: $(STAMP)
	demo/demo.sh

demo-stop: $(STAMP)
	demo/stop.sh

bench: $(STAMP)
	$(BIN)/python -m bench all

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
