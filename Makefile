# kernel-connect: `make test` and `make demo` set everything up from a fresh clone.
# They create .venv at the repo root (reused when present) and install the package,
# built from source by maturin, with its test extras.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test demo build lint rust-test py-test bench clean ssh-server upstream

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
	$(VENV)/bin/ruff check python tests benches upstream
	$(VENV)/bin/ruff format --check python tests benches upstream
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest kernel_connect._native

# The SSH tests run a real sshd on 127.0.0.1. Install OpenSSH's server when it
# is missing and we may (root, Debian's packages); otherwise those tests skip
# with a visible reason (and fail under CI=true).
ssh-server:
	@if command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null; \
	else echo "note: sshd is not installed; the SSH tests will skip"; fi

rust-test:
	cargo test --quiet

py-test: build
	$(PY) -m pytest -q

test: ssh-server lint rust-test py-test

# Upstream suites (jupyter_client 8.10's and nbclient 0.11's, from their PyPI
# sdists) run on jupyter_client and on kernel-connect, compared test by test:
# about 25 minutes, so not part of `make test`; .ci/run runs both. See upstream/README.md.
upstream: build
	$(PY) upstream/run.py

demo: build
	$(VENV)/bin/kernel-connect farm -n 4

bench: build
	$(PY) benches/bench_connect.py
	$(PY) benches/bench_ports.py
	$(PY) benches/bench_reader.py
	$(PY) benches/bench_kernels.py
	$(PY) benches/bench_ssh.py
	$(PY) benches/bench_cli.py
	$(PY) benches/bench_multikernel.py

clean:
	rm -rf target $(VENV) python/kernel_connect/*.so
