# privzoo — `make demo` (the main job) and `make test`. Both set up a fresh machine first:
# create .venv if missing, install the project into it, make Fashion-MNIST available, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data
FMNIST_DEBIAN := /usr/share/datasets/fashion-mnist
export WANDB_SILENT ?= true

.PHONY: demo test lint install data clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

# Fashion-MNIST: Debian's dataset-fashion-mnist package when we are root (extracted into $(DATA_DIR),
# never linked), else torchvision's download.
data: install
	@if [ ! -d $(FMNIST_DEBIAN) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi
	$(PY) -c "from datamodules import FashionMNISTDataModule as D; D(data_dir='$(DATA_DIR)').prepare_data()"

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

test: data lint
	$(PY) -m pytest

demo: data
	$(PY) scripts/demo.py --data-dir $(DATA_DIR)

clean:
	rm -rf logs runs lightning_logs wandb .pytest_cache
