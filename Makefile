# maskrt: the two commands a newcomer runs are `make demo` and `make test`.
# Both create .venv on first use and install the project (editable) into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint plugin clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/maskrt demo

lint: $(STAMP)
	$(BIN)/ruff check .

plugin: $(STAMP)
	$(BIN)/python -m plugins.build

test: $(STAMP) lint plugin
	$(BIN)/pytest

clean:
	rm -rf build demo .pytest_cache .hypothesis
