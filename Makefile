# pyrovae — the two commands: `make test` and `make demo`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The machine's pip config points at a CPU-only torch wheel that no torchvision build matches;
# ignore it so that pip resolves torch and torchvision together from the registry.
PIP_ENV := PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS=
DATA_DIR ?= $(or $(PYROVAE_DATA_DIR),$(abspath ../shared/data))
RUN ?= runs/demo

.PHONY: install test demo bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_ENV) $(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_ENV) $(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -c "import torch, torchvision, pyro; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'pyro', pyro.__version__)"
	touch $@

install: $(BIN)/.installed

test: install
	PYROVAE_DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -q tests

demo: install
	PYROVAE_DATA_DIR=$(DATA_DIR) $(BIN)/pyrovae train --config examples/configs/mnist.toml --out $(RUN) --set train.epochs=5
	PYROVAE_DATA_DIR=$(DATA_DIR) $(BIN)/pyrovae evaluate $(RUN) --iw-samples 1000 --test-size 1000

bench: install
	PYROVAE_DATA_DIR=$(DATA_DIR) $(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
