# emoflow: `make demo` runs the demo pipeline, `make test` runs the tests.
# Both do every set-up step on a fresh machine (venv, packages, offline model files, system tools).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export EMOFLOW_HOME ?= $(CURDIR)/.emoflow
export NUMBA_CACHE_DIR ?= $(EMOFLOW_HOME)/numba
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PYTEST_ARGS ?=

.PHONY: setup demo test system-deps compile images clean bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip check
	touch $@

$(EMOFLOW_HOME)/assets/.fetched: $(BIN)/.installed src/emoflow/assets.py
	$(BIN)/python -m emoflow.assets fetch minilm mpnet
	touch $@

setup: $(BIN)/.installed $(EMOFLOW_HOME)/assets/.fetched

# promtool/prometheus (alert-rule tests, drift integration test); kubectl renders manifests.
system-deps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  echo "installing Debian prometheus (server + promtool)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v kubectl >/dev/null || { echo "kubectl is required for manifest tests"; exit 1; }

demo: setup
	$(BIN)/emoflow run

test: setup system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

compile: setup
	$(BIN)/emoflow compile -o emoflow-training.yaml

images: setup  ## build and tag the container images (tags from python -m emoflow.images)
	$(MAKE) --no-print-directory -f images/images.mk images IMAGES_PYTHON=$(BIN)/python

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	-$(BIN)/emoflow serve --stop --port 8080
	rm -rf $(EMOFLOW_HOME)/store $(EMOFLOW_HOME)/pipeline_root $(EMOFLOW_HOME)/demo
