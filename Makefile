# strata — the two commands for a fresh machine are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := qemu-utils ntfs-3g dosfstools mtools e2fsprogs sleuthkit libhivex-bin \
                casync zstd xorriso genisoimage gdisk fdisk time attr \
                libzstd-dev libxxhash-dev ntfs-3g-dev

.PHONY: all deps install demo test lint bench bench-smoke clean

all: test

deps:
	@bash scripts/install-system-deps.sh $(APT_PACKAGES)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard native/*.c)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# Bytecode is compiled here because the environment may set PYTHONDONTWRITEBYTECODE: without
# a cache every strata command recompiles its modules (measured 20-35 ms per command).
install: deps $(STAMP)
	@$(BIN)/python -m compileall -q src/strata

demo: install
	$(BIN)/python fixtures/demo.py

lint: install
	$(BIN)/ruff check src tests benchmarks fixtures

test: install lint
	$(BIN)/pytest tests
	$(MAKE) bench-smoke

bench-smoke: install
	STRATA_BENCH_SMOKE=1 $(BIN)/pytest benchmarks -q -p no:cacheprovider

bench: install
	$(BIN)/pytest benchmarks

clean:
	rm -rf build $(VENV) src/*.egg-info src/strata/*.so
