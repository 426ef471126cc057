# The two commands of the README: `make demo` and `make test`. Each creates the virtualenv
# on first use (and again when pyproject.toml changes) and does every other step itself.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# Three workers on two cores: about a fifth of a two-worker run's time left both cores idle (tests
# waiting on timers, processes and fsyncs); each worker clones its own PostgreSQL template.
PYTEST_WORKERS ?= 3

.PHONY: demo test lint install browser clean lock

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/broker demo

lint: $(STAMP)
	$(BIN)/ruff check broker migrations tests bench examples
	$(BIN)/ruff format --check broker migrations tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# The auditor page's browser test drives Debian's chromium through chromedriver. Installing them
# needs root (as in CI); elsewhere, if this fails, that one test skips and says why.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	    || [ "$$CI" != "true" ]; \
	fi

# Byte-code caches stay on for the tests even where PYTHONDONTWRITEBYTECODE is set (as on this
# project's CI machines): without them every worker rewrites the asserts of every test module
# again and every process a test starts compiles the broker again.
test: lint browser
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -n $(PYTEST_WORKERS) -p no:cacheprovider --junitxml=var/junit.xml

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis

# requirements.lock: the container image's dependencies, pinned with hashes (Dockerfile installs
# them with --require-hashes). pip-tools runs in a throwaway virtualenv of its own.
lock:
	$(PYTHON) -m venv var/piptools
	var/piptools/bin/pip install --quiet pip-tools
	var/piptools/bin/pip-compile --quiet --generate-hashes --strip-extras --no-header \
	  --no-emit-index-url --no-emit-find-links --output-file var/requirements.lock pyproject.toml
	{ echo "# The image's dependencies, pinned with hashes (pip install --require-hashes). Regenerate with"; \
	  echo "# \`make lock\` after changing the dependencies in pyproject.toml."; \
	  cat var/requirements.lock; } > requirements.lock
