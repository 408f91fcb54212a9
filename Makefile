# berth — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= /usr/bin/python3
VENV := .venv
APT_PACKAGES := busybox-static tini runc iproute2 nftables libseccomp2 gcc libc6-dev python3-venv util-linux kmod procps podman conmon containerd
BERTH := $(VENV)/bin/berth
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit test-integration lint bench clean

setup: $(VENV)/.stamp

.apt-stamp:
	@bash tools/apt-install.sh $(APT_PACKAGES)
	@touch $@

$(VENV)/.stamp: pyproject.toml .apt-stamp tools/launcher.sh
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	@bash tools/launcher.sh $(VENV)
	@touch $@

demo: setup
	@$(VENV)/bin/python tools/demo.py

test: setup
	@$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests

test-unit: setup
	@$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests/unit

lint: setup
	@$(VENV)/bin/ruff check src tests bench tools
	@$(VENV)/bin/ruff format --check src tests bench tools >/dev/null || { echo "ruff format: run '$(VENV)/bin/ruff format src tests bench tools'"; exit 1; }
	@$(VENV)/bin/mypy --no-error-summary
	@$(VENV)/bin/lint-imports --no-cache >/dev/null || $(VENV)/bin/lint-imports --no-cache

bench: setup
	@$(VENV)/bin/python bench/start_latency.py

clean:
	rm -rf $(VENV) .apt-stamp build src/*.egg-info
