# wapipe: `make run` starts everything on this machine; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TESTSTAMP := $(VENV)/.installed-test
LINTED := daemon actors tests bench examples

# What .venv gets is locked: requirements/lock.txt pins every distribution at one version, pip and
# setuptools included, and `make lock` renews it. Every pip call reads it from the environment:
# PIP_CONSTRAINT for what pip installs, PIP_BUILD_CONSTRAINT for what an isolated build installs
# (setuptools, for the editable install; since pip 26.2 only build constraints reach a build).
LOCK   := requirements/lock.txt
LOCKED := PIP_CONSTRAINT=$(CURDIR)/$(LOCK) PIP_BUILD_CONSTRAINT=$(CURDIR)/$(LOCK)
locked  = $(shell grep -E '^$(1)==' $(LOCK))
# `make lock` and `make test-latest` take the newest releases, in virtualenvs of their own.
UNLOCKED := env -u PIP_CONSTRAINT -u PIP_BUILD_CONSTRAINT
LATEST := .venv-latest
RENEW  := .venv-lock

.PHONY: run example screenshot test test-latest lint typecheck check clean bench bench-publish install fuzz lock

# `make run` needs wapipe and the embedded Redis; `make test` adds the test tools. A new lock
# rebuilds .venv from nothing, so that it holds the lock's distributions and no others.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	$(LOCKED) $(BIN)/python -m pip install --quiet '$(call locked,pip)' '$(call locked,setuptools)'
	$(LOCKED) $(BIN)/pip install --quiet -e '.[embedded]'
	touch $(STAMP)

$(TESTSTAMP): $(STAMP)
	$(LOCKED) $(BIN)/pip install --quiet -e '.[embedded,test]'
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
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(TESTSTAMP)
	$(BIN)/mypy

# The suite's own pip calls (tests/test_packaging.py) read the lock too. `PYTEST_ARGS=...` narrows
# pytest (CI passes none).
test: $(TESTSTAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy
	$(LOCKED) $(BIN)/pytest $(PYTEST_ARGS)

# Lint, mypy and the suite on the newest release of everything, ignoring the lock, in .venv-latest
# (made afresh each time): what renewing the lock would break, seen before it does. Not run by CI.
# tests/test_lock.py's check that the environment is the lock does not apply there.
test-latest:
	$(UNLOCKED) $(PYTHON) -m venv --clear $(LATEST)
	$(UNLOCKED) $(LATEST)/bin/python -m pip install --quiet --upgrade pip setuptools
	$(UNLOCKED) $(LATEST)/bin/pip install --quiet -e '.[embedded,test]'
	$(LATEST)/bin/ruff check $(LINTED)
	$(LATEST)/bin/ruff format --check $(LINTED)
	MYPY_CACHE_DIR=$(LATEST)/.mypy_cache $(LATEST)/bin/mypy
	$(UNLOCKED) $(LATEST)/bin/pytest --deselect tests/test_lock.py::test_the_environment_holds_exactly_the_lock $(PYTEST_ARGS)

# Renews requirements/lock.txt: installs `.[embedded,test]`, pip and setuptools at their newest in a
# throwaway virtualenv and writes what it holds, names normalised and sorted. Run `make test-latest`
# first to see what the renewal changes, then commit the lock with what it needed.
lock:
	rm -rf $(RENEW)
	$(UNLOCKED) $(PYTHON) -m venv $(RENEW)
	$(UNLOCKED) $(RENEW)/bin/python -m pip install --quiet --upgrade pip setuptools
	$(UNLOCKED) $(RENEW)/bin/pip install --quiet -e '.[embedded,test]'
	$(RENEW)/bin/pip freeze --all --exclude-editable > $(RENEW)/freeze.txt
	awk '$$0 !~ /^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!]+$$/ { print "make lock: not a release: " $$0 > "/dev/stderr"; bad = 1 } \
	    { name = tolower($$0); sub(/==.*/, "", name); gsub(/[-_.]+/, "-", name); sub(/^[^=]*/, name); print } \
	    END { exit bad }' $(RENEW)/freeze.txt > $(RENEW)/pins.txt
	printf '%s\n' \
	    '# The versions `make test` and CI install, every distribution: written by `make lock`, the newest' \
	    "# releases of what .[embedded,test] needs, with pip and setuptools, on Python $$($(RENEW)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') ($$(uname -sm))." \
	    '# Do not edit: the Makefile hands it to every pip call (PIP_CONSTRAINT, PIP_BUILD_CONSTRAINT).' \
	    > $(LOCK).new
	LC_ALL=C sort -t = -k 1,1 $(RENEW)/pins.txt >> $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(RENEW)
	@echo "$(LOCK): $$(grep -c == $(LOCK)) distributions"

clean:
	rm -rf $(VENV) $(LATEST) $(RENEW) var .mypy_cache .ruff_cache .pytest_cache dist build

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
