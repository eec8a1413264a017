# maskrt: the two commands a newcomer runs are `make demo` and `make test`.
# Both create .venv on first use and install the project into it (editable). The install builds the plugin
# libraries and the C++ runtime with CMake (CMakeLists.txt; build tree in build/); it runs again when a C++/CUDA source
# changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NATIVE_SOURCES := CMakeLists.txt $(shell find plugins runtime/cpp -name '*.h' -o -name '*.hpp' -o -name '*.cpp' -o -name '*.cu' -o -name 'CMakeLists.txt' -o -name '*.cmake')

# `maskrt serve` runs in its own venv: PyTriton pins numpy < 2, and its Triton python backend needs a Python built with
# a shared libpython (Debian's own python3.11 is; the pyenv one first on PATH is not).
SERVE_PYTHON ?= /usr/bin/python3.11
SERVE_VENV   := .venv-serve
SERVE_STAMP  := $(SERVE_VENV)/.installed

# One pytest-xdist worker per core, each test module on one worker (tests/conftest.py gives each worker its share of
# the threads). `make test PYTEST_PARALLEL=` runs the suite in one process.
PYTEST_PARALLEL ?= -n auto

.PHONY: demo test test-fast lint plugin wheel clean serve-env

$(STAMP): pyproject.toml $(NATIVE_SOURCES)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,openvino]'
	@touch $(STAMP)

# After $(STAMP): both editable installs build the plugins in build/, one at a time (the serving venv without the C++
# runtime, which it does not use).
$(SERVE_STAMP): pyproject.toml $(NATIVE_SOURCES) $(STAMP)
	@test -x $(SERVE_PYTHON) || { echo "error: $(SERVE_PYTHON) not found: set SERVE_PYTHON to a Python >= 3.11 with a shared libpython"; exit 2; }
	@test -x $(SERVE_VENV)/bin/python || $(SERVE_PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet -e '.[serve,openvino]' --config-settings=cmake.define.MASKRT_BUILD_CPP_RUNTIME=OFF
	@touch $@

serve-env: $(SERVE_STAMP)

demo: $(STAMP)
	$(BIN)/maskrt demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

plugin: $(STAMP)
	@$(BIN)/python -c "import maskrt.plugins as p; print('host library:', p.host_library_path()); print('plugin build:', p.build_info())"

# The serving tests (tests/test_serve.py) start `maskrt serve` from the serving venv.
test: $(STAMP) $(SERVE_STAMP) lint plugin
	MASKRT_SERVE_PYTHON=$(CURDIR)/$(SERVE_VENV)/bin/python $(BIN)/pytest $(PYTEST_PARALLEL)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" -q $(PYTEST_PARALLEL)

# A wheel with both libraries (e.g. to carry to a GPU machine: bash scripts/gpu_suite.sh dist/maskrt-*.whl).
wheel: $(STAMP)
	$(BIN)/pip wheel --no-deps --quiet -w dist .

clean:
	rm -rf build build-plugins dist demo .pytest_cache .hypothesis
