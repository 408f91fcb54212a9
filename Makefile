# berth — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= /usr/bin/python3
VENV := .venv
# What berth needs to run guests, and what the tests need beyond that (real clients and peers).
APT_PACKAGES := busybox-static tini iproute2 nftables libseccomp2 python3-venv util-linux procps
TEST_APT_PACKAGES := gcc libc6-dev runc podman conmon containerd kmod
BERTH := $(VENV)/bin/berth
PYTEST_ARGS ?=

.PHONY: setup setup-test apt apt-test demo test test-unit test-integration lint bench clean

# apt-install.sh installs only what is missing (a dpkg query when all is there): run it every time,
# so a package added to the lists reaches machines that ran an older Makefile.
apt:
	@bash tools/apt-install.sh $(APT_PACKAGES)

apt-test:
	@bash tools/apt-install.sh $(APT_PACKAGES) $(TEST_APT_PACKAGES)

setup: apt $(VENV)/.stamp

setup-test: apt-test $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml tools/launcher.sh
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	@bash tools/launcher.sh $(VENV)
	@touch $@

demo: setup
	@$(VENV)/bin/python tools/demo.py

test: setup-test
	@$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests

test-unit: setup-test
	@$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests/unit

lint: setup
	@$(VENV)/bin/ruff check src tests bench tools
	@$(VENV)/bin/ruff format --check src tests bench tools >/dev/null || { echo "ruff format: run '$(VENV)/bin/ruff format src tests bench tools'"; exit 1; }
	@$(VENV)/bin/mypy --no-error-summary
	@$(VENV)/bin/lint-imports --no-cache >/dev/null || $(VENV)/bin/lint-imports --no-cache

bench: setup-test
	@$(VENV)/bin/python bench/start_latency.py

clean:
	rm -rf $(VENV) build src/*.egg-info
