# maskrt: the two commands a newcomer runs are `make demo` and `make test`.
# Both create .venv on first use and install the project into it (editable). The install builds the plugin
# libraries with CMake (plugins/CMakeLists.txt; build tree in build/); it runs again when a C++/CUDA source changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PLUGIN_SOURCES := $(shell find plugins -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name 'CMakeLists.txt' -o -name '*.cmake')

.PHONY: demo test test-fast lint plugin wheel clean

$(STAMP): pyproject.toml $(PLUGIN_SOURCES)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/maskrt demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

plugin: $(STAMP)
	@$(BIN)/python -c "import maskrt.plugins as p; print('host library:', p.host_library_path()); print('plugin build:', p.build_info())"

test: $(STAMP) lint plugin
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" -q

# A wheel with both libraries (e.g. to carry to a GPU machine: bash scripts/gpu_suite.sh dist/maskrt-*.whl).
wheel: $(STAMP)
	$(BIN)/pip wheel --no-deps --quiet -w dist .

clean:
	rm -rf build build-plugins dist demo .pytest_cache .hypothesis
