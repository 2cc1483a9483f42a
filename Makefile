# Two entry points, each doing its own set-up in ./.venv:
#   make demo   - plain vs adversarial training on the bundled UCI digits
#   make test   - the test suite (CI runs this through .ci/run)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all docs clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "keras-bidir needs Python >= 3.10"'
	@echo "== Setting up $(VENV) (first run only): TensorFlow, Keras, keras-hub, JAX and the test tools,"
	@echo "== about 1 GB to download and install; allow 4-6 minutes on a 2-core machine. =="
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e ".[test,plot]"
	touch $(STAMP)
	@echo "== $(VENV) is ready. =="

demo: $(STAMP)
	$(BIN)/keras-bidir demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest

docs: $(STAMP)
	$(BIN)/mkdocs build --strict   # the site goes to outputs/site (tests build it too)

clean:
	rm -rf $(VENV) outputs .pytest_cache *.egg-info
