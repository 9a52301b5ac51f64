# Local workflow: `make run` for the service, `make test` for every test; both start Kafka and Cassandra if needed.
PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
THUMBS := $(VENV)/bin/thumbs
PYTEST_ARGS ?=

.PHONY: install servers stop status run test test-tools lock

# The stamp makes `install` a no-op until a pyproject.toml changes; devtools/ is the local tooling (servers, run).
$(VENV)/.installed: pyproject.toml devtools/pyproject.toml
	$(PYTHON3) -c 'import sys; sys.exit("Python 3.11+ is required" if sys.version_info < (3, 11) else 0)'
	test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]' -e ./devtools
	touch $@

install: $(VENV)/.installed

servers: install
	$(THUMBS) servers start

stop: install
	$(THUMBS) servers stop

status: install
	$(THUMBS) servers status

run: servers
	$(THUMBS) run

# What the deploy/ tests check with: kustomize and the operators' CRDs (pinned, into .thumbs/tools), and promtool;
# and headless Chromium with its driver, for the page's browser test.
test-tools:
	bash devtools/test-tools/kustomize.sh
	bash devtools/test-tools/promtool.sh
	bash devtools/test-tools/chromium.sh

test: servers test-tools
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The image's runtime dependencies, pinned with hashes (deploy/Dockerfile); rerun after changing them in pyproject.toml.
lock: install
	$(PY) -m pip install -q pip-tools
	CUSTOM_COMPILE_COMMAND='make lock' $(VENV)/bin/pip-compile -q --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-find-links --no-emit-index-url -o deploy/requirements.lock pyproject.toml
