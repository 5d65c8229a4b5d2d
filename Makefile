VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
INTEROP_STAMP := $(VENV)/.installed-interop
# Debian's Chromium, which the browser tests (tests/browser) drive through Playwright.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install chromium redis serve test test-fast test-interop test-docker screenshots lint format bench bench-workers bench-train bench-data clean check typecheck audit load

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Installed only where it is missing (apt needs root: CI runs as root, elsewhere sudo).
$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver

chromium: $(CHROMIUM)

# Debian's redis-server, which the shared-limit tests (tests/service/test_shared_limits.py,
# tests/integration/test_scale.py) start on a free port; installed like Chromium.
REDIS_SERVER := /usr/bin/redis-server
$(REDIS_SERVER):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends redis-server

redis: $(REDIS_SERVER)

serve: $(STAMP)
	$(VENV)/bin/tinygpt serve

test: $(STAMP) $(CHROMIUM) $(REDIS_SERVER)
	$(PY) -m pytest -m "not docker and not interop"

test-fast: $(STAMP) $(REDIS_SERVER)
	$(PY) -m pytest -m "not slow and not docker and not interop"

# The optional [interop] extra. llama-cpp-python compiles llama.cpp from its source package
# (7.5 minutes measured on 2 shared cores; pip caches the wheel, so later installs take
# seconds); its server target is off, since that step may try to download a web UI.
$(INTEROP_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=OFF" $(PY) -m pip install --quiet -e '.[dev,interop]'
	touch $(INTEROP_STAMP)

# Exports and imports against the real transformers, llama.cpp, gensim and TensorBoard.
test-interop: $(INTEROP_STAMP)
	$(PY) -m pytest -m interop

# Builds the image and runs it with docker-compose (needs Docker, or ../shared/docker).
test-docker: $(STAMP)
	$(PY) -m pytest -m docker tests/docker -v

# The browser tests, then their pictures of the shipped models into docs/screenshots/.
screenshots: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -m browser tests/browser
	mkdir -p docs/screenshots
	cp test-artifacts/browser/*.png docs/screenshots/

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Static checks CI runs before the tests: lint, formatting, types, known vulnerabilities.
check: lint typecheck audit

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The installed dependencies against the vulnerability data pip-audit reaches through pip's own
# network settings; where it cannot reach them, it says so and the audit is skipped.
audit: $(STAMP)
	@out=$$($(VENV)/bin/pip-audit --skip-editable --progress-spinner off 2>&1); status=$$?; \
	echo "$$out" | grep -v "could not be audited"; \
	skipped=$$(echo "$$out" | grep -c "could not be audited"); \
	[ "$$skipped" -eq 0 ] || echo "pip-audit: $$skipped installed packages are not in the index it reached and were not audited"; \
	if [ $$status -ne 0 ] && echo "$$out" | grep -qiE "connection|timed out|name resolution|max retries"; then \
		echo "pip-audit skipped: it cannot reach its vulnerability service from this machine"; \
	else \
		exit $$status; \
	fi

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Generation speed: in process, the engine against full recompute (bench/results/engine.json)
# and against transformers' generate and llama.cpp on the same weights, which need the
# [interop] extra (bench/results/peers.json); then over HTTP against a server it starts,
# 1/8/32 streaming clients of gpt-char (requests of 60-120 tokens), with the server's defaults (compiled where it can) and
# then with the eager decode step, each beside the same requests in process
# (bench/results/http.json, http-eager.json).
HTTP_BENCH = $(PY) -m bench.http --model gpt-char --max-new-tokens 120 --length-spread 0.5 --concurrency 1 8 32 --requests-per-client 16 --repeats 5 --in-process
bench: $(INTEROP_STAMP)
	$(PY) -m bench.engine --threads 1 --repeats 3
	$(PY) -m bench.peers
	$(HTTP_BENCH)
	$(HTTP_BENCH) --decode eager --out bench/results/http-eager.json

# One worker against two (one torch thread each), 32 streaming clients of the reference GPT
# (bench/results/http-workers-1.json, http-workers-2.json).
bench-workers: $(STAMP)
	$(PY) -m bench.http --workers 1 --torch-threads 1 --concurrency 32 --out bench/results/http-workers-1.json
	$(PY) -m bench.http --workers 2 --torch-threads 1 --concurrency 32 --out bench/results/http-workers-2.json

# 64 clients mixing generate, next-token and neighbours for 60 s (bench/results/load.json).
load: $(STAMP)
	$(PY) -m bench.load

# The bigram and reference GPT targets, then nanoGPT's CPU recipe restated against our trainer
# at the same settings (bench/results/training.json); `--only nanogpt --iters 50` for a quick check.
bench-train: $(STAMP)
	$(PY) -m bench.train_reference

# Large corpora: prepare (char, BPE) and training start-up on a generated corpus, against the
# nanoGPT-style encoder (bench/results/data.json); BPE on 100 MB of it, some 50x slower here.
bench-data: $(STAMP)
	$(PY) -m bench.data --size 500 --bpe-size 100

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
