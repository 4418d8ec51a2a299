# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/vsearch: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	$(BIN)/uv pip install -q -p $(BIN)/python -e ".[test]"
	touch $(BIN)/vsearch

.PHONY: install demo test lint
install: $(BIN)/vsearch

demo: install
	$(BIN)/vsearch demo --home .vsearch

lint: install
	$(BIN)/ruff check .

test: install lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest
