# `make demo` and `make test` both start by creating .venv and installing the package.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# The CPU wheel of torch; on a GPU cluster use e.g. `make install TORCH_SPEC=torch==2.13.0` with a CUDA index.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean-venv slurm-up slurm-down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python examples/demo.py

test: install
	$(BIN)/python -m pytest tests

bench: install
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/attention.py
	$(BIN)/python benchmarks/training.py

# `make slurm-up NODES=2`: a local cluster of two nodes (127.0.0.2, 127.0.0.3).
NODES ?= 1
slurm-up:
	bash tools/slurm/start_local_cluster.sh --nodes $(NODES)

slurm-down:
	bash tools/slurm/stop_local_cluster.sh

clean-venv:
	rm -rf $(VENV)
