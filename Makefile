# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/vsearch: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	# Bytecode compiled at install: uv skips it by default, and where PYTHONDONTWRITEBYTECODE is
	# set every command would compile each library it imports again (seconds per command).
	$(BIN)/uv pip install -q --compile-bytecode -p $(BIN)/python -e ".[test]"
	$(BIN)/python -m compileall -q vsearch_pipeline serving benchmarks
	touch $(BIN)/vsearch

.PHONY: install demo test lint
install: $(BIN)/vsearch

demo: install
	$(BIN)/vsearch demo --home .vsearch

lint: install
	$(BIN)/ruff check .

test: install lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest
