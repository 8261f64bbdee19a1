# xaiclip: set-up, demo, tests, lint, benchmarks. `make demo` and `make test` each install from scratch if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
XAICLIP := $(VENV)/bin/xaiclip
export HF_HUB_OFFLINE ?= 1
export MPLBACKEND ?= Agg
DEMO_OUT ?= demo_out

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned pair: timm needs torchvision, and a mismatched pair fails at import.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	# medmnist declares torch/torchvision and would swap the pinned build: metadata only, no deps.
	$(PY) -m pip install -q --no-deps medmnist==3.0.2
	touch $@

# The main job on the embedded default (shipped toy model + toy cells): every command that exists, printed.
demo: install
	rm -rf $(DEMO_OUT) && mkdir -p $(DEMO_OUT)
	$(XAICLIP) --version
	$(XAICLIP) --help

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check xaiclip_cli tests benchmarks

bench: install
	bash benchmarks/run_all.sh $(PY)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
