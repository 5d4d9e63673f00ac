# Entry points: `make test` (lint, then the whole suite compiled and pure) and `make demo`.
# Everything runs from .venv/, built on first use and rebuilt when the package changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Whatever ends up in the installed package: a change to any of these reinstalls it.
PACKAGE_SOURCES := $(shell find valka proto schema -type f \
	\( -name '*.py' -o -name '*.pyi' -o -name '*.proto' -o -name '*.sql' -o -name 'py.typed' \) \
	-not -path '*/__pycache__/*' 2>/dev/null) tools/gen_proto.py

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all venv test test-compiled test-pure lint proto demo bench clean

all: test

venv: $(STAMP)

# A real (non-editable) install, so the compiled run uses the mypyc build. pip builds in
# build/ inside the tree; it is removed before (stale files would leak into the wheel) and
# after. The build never writes compiled modules into valka/ (test-pure checks).
$(STAMP): pyproject.toml setup.py $(PACKAGE_SOURCES)
	@if [ ! -x $(BIN)/python ]; then \
		$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet --upgrade pip; \
	fi
	rm -rf build valka.egg-info
	VALKA_PURE=0 $(BIN)/python -m pip install --quiet --progress-bar off '.[dev]'
	rm -rf build valka.egg-info
	@touch $@

test: lint test-compiled test-pure

# Run from the repo root: with --import-mode=importlib (pyproject.toml) pytest does not put
# the root on sys.path, so `valka` is the installed, compiled package.
test-compiled: $(STAMP)
	VALKA_EXPECT_COMPILED=1 $(BIN)/pytest $(PYTEST_ARGS)

# The source tree holds no compiled modules, so PYTHONPATH=. gives the pure build.
test-pure: $(STAMP)
	@if find valka -name '*.so' -o -name '*.pyd' | grep -q .; then \
		echo "compiled modules found in the source tree; the pure run would not be pure:"; \
		find valka -name '*.so' -o -name '*.pyd'; exit 1; fi
	PYTHONPATH=$(CURDIR) VALKA_EXPECT_COMPILED=0 $(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy valka tests tools

# Regenerate valka/v1 from proto/. Order-only: editing a .proto must not force a reinstall
# before the stubs can be made.
proto: | $(STAMP)
	$(BIN)/python tools/gen_proto.py

demo: $(STAMP)
	$(BIN)/python tools/demo.py

bench: $(STAMP)
	@if [ -f tools/bench_matching.py ]; then \
		$(BIN)/python tools/bench_matching.py; \
	else \
		echo "tools/bench_matching.py does not exist yet"; \
	fi

clean:
	rm -rf $(VENV) build dist valka.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
