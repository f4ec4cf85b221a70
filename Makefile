# kernel-connect: `make test` and `make demo` set everything up from a fresh clone.
# They create .venv at the repo root (reused when present) and install the package,
# built from source by maturin, with its test extras.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test demo build lint rust-test py-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Build the extension (release) and install it editable with the test extras:
# Python edits are live; cargo rebuilds only what changed.
build: | $(PY)
	$(PY) -m pip install -q --upgrade pip "maturin>=1.7,<2"
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet -E test

lint: build
	cargo fmt --check
	cargo clippy --all-targets --all-features -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest kernel_connect._native

rust-test:
	cargo test --quiet

py-test: build
	$(PY) -m pytest -q

test: lint rust-test py-test

demo: build
	$(PY) -m kernel_connect.farm -n 4

bench: build
	$(PY) benches/bench_connect.py

clean:
	rm -rf target $(VENV) python/kernel_connect/*.so
