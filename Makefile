# Quick start: `make demo` and `make test` each set up .venv by themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# No network at run time: models load from local directories only.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
# Ray 2.60 turns token auth on by default; a local single-user cluster runs without it.
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test lint e2e pretrain eval clean label-studio-venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The online loop on the shapes world: a local Ray instance, the feedback service and simulated
# labellers posting over HTTP, a few rounds, then the paper-style table.
demo: $(STAMP)
	$(VENV)/bin/t2i-rlhf run --config configs/shapes.yaml

test: $(STAMP) lint
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check t2i_rlhf tests benchmarks

# CI's end-to-end check: the shapes-ci config as a job submitted with `ray job submit` to a local
# `ray start --head` cluster (auth disabled for this single-user local cluster).
e2e: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" deploy/submit_local.sh configs/shapes-ci.yaml

pretrain: $(STAMP)
	$(VENV)/bin/t2i-rlhf pretrain

eval: $(STAMP)
	$(VENV)/bin/t2i-rlhf eval --model models/shapes-sd

# Label Studio in a venv of its own (its Django and pins would clash with ours), for
# `benchmarks/bench_feedback_load.py --label-studio .venv-label-studio`. Needs the network once;
# the benchmark then runs it on loopback only, analytics and version checks off.
LS_VENV := .venv-label-studio
LS_VERSION ?= 1.23.2

label-studio-venv: $(LS_VENV)/bin/label-studio

$(LS_VENV)/bin/label-studio:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q label-studio==$(LS_VERSION)

clean:
	rm -rf $(VENV) .pytest_cache
