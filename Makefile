# Two commands for a newcomer: `make run` serves the app, `make test` runs every test.
# Both install what they need first; `make install` is safe to repeat.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 7860
MODEL ?= default
PYTEST_ARGS ?=

.PHONY: install run test test-fast test-llamacpp browser stress clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-offline.txt requirements-dev.txt requirements-deepspeed.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --no-build-isolation -r requirements-deepspeed.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-offline.txt
	$(PY) -m bot prepare
	touch $(STAMP)

run: install
	$(PY) app.py --host $(HOST) --port $(PORT) --model $(MODEL)

# Debian's chromium for the headless-browser tests (Playwright drives it; no browser download).
browser:
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: install browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Unit tests only: tiny models, no browser, no real model.
test-fast: install
	$(PY) -m pytest -q -m "not integration and not browser" $(PYTEST_ARGS)

# Optional: our remote backend against llama.cpp's server (compiles llama-cpp-python: minutes).
# On the 2-core dev VM (AVX-512, AMX advertised) a native build died with "Illegal instruction", with
# or without AMX; these explicit AVX-512 flags worked. Elsewhere `make test-llamacpp LLAMACPP_CMAKE_ARGS=`
# builds for the machine it runs on.
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
test-llamacpp: install
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(PY) -m pip install --quiet 'llama-cpp-python[server]'
	$(PY) -m pytest -q -m llamacpp tests/test_llamacpp.py

# Load test at full size: 16 users x 5 turns on the default model (about 4 minutes on 2 cores),
# as chat sessions, then as streaming API clients.
stress: install
	$(PY) tests/stress.py --users 16 --turns 5
	$(PY) tests/stress.py --users 16 --turns 5 --client api

clean:
	rm -rf $(VENV) .data .pytest_cache
