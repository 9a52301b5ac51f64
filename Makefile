# Local workflow: `make run` for the service, `make test` for every test; both start Kafka and Cassandra if needed.
PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
THUMBS := $(VENV)/bin/thumbs
PYTEST_ARGS ?=

.PHONY: install servers stop status run test

# The stamp makes `install` a no-op until pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON3) -c 'import sys; sys.exit("Python 3.11+ is required" if sys.version_info < (3, 11) else 0)'
	test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
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

test: servers
	$(PY) -m pytest tests $(PYTEST_ARGS)
