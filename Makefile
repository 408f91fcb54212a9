# berth — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= /usr/bin/python3
VENV := .venv
# What berth needs to run guests, and what the tests need beyond that (real clients and peers).
APT_PACKAGES := busybox-static tini iproute2 nftables libseccomp2 python3-venv util-linux procps lxcfs uidmap
TEST_APT_PACKAGES := gcc libc6-dev runc podman conmon containerd kmod iptables iperf3 tmux debootstrap
# CRIU 4.1.1 from Debian 13 with its libraries, unpacked into berth's tools dir (never installed over libc).
CRIU_DIR ?= /var/lib/berth/tools/criu
# The lab (bench/lab): separate-kernel guests and the cgroup-v2 test kernel. Installed by lab-setup only.
LAB_APT_PACKAGES := qemu-system-x86 user-mode-linux runsc busybox-static kmod gcc libc6-dev
# The evaluation (bench/eval, issue 8): sysbench and fio, plus the lab's peers (UML, runsc).
BENCH_APT_PACKAGES := sysbench fio
# test-v2: TEST_V2_ARGS='--select all' for the whole integration suite, or '--select a.py,b.py -- -x'.
TEST_V2_ARGS ?=
BERTH := $(VENV)/bin/berth
PYTEST_ARGS ?=

.PHONY: setup setup-test apt apt-test demo test test-unit test-integration lint bench bench-full bench-apt bench-latency clean lab-setup test-v2 criu

# apt-install.sh installs only what is missing (a dpkg query when all is there): run it every time,
# so a package added to the lists reaches machines that ran an older Makefile.
apt:
	@bash tools/apt-install.sh $(APT_PACKAGES)

apt-test:
	@bash tools/apt-install.sh $(APT_PACKAGES) $(TEST_APT_PACKAGES)

setup: apt $(VENV)/.stamp

setup-test: apt-test $(VENV)/.stamp criu

# criu-install.sh does nothing when the bundle is there and runs.
criu: apt-test
	@bash tools/criu-install.sh $(CRIU_DIR)

$(VENV)/.stamp: pyproject.toml tools/launcher.sh src/berth/guests/fastclient.c src/berth/runtime/waiter.c
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

# lab-setup: the lab's Debian packages and Debian's kernel (apt-get download + dpkg -x into
# /var/cache/berth-lab, never installed). test-v2: the tests on a cgroup-v2-only kernel under qemu.
lab-setup: setup-test
	@bash tools/apt-install.sh $(LAB_APT_PACKAGES)
	@PYTHONPATH=. $(VENV)/bin/python -c 'from bench.lab.kernel import ensure_kernel; k = ensure_kernel(); print(f"lab: kernel {k.version}")'

test-v2: lab-setup
	@PYTHONPATH=. $(VENV)/bin/python -m bench.lab.test_v2 $(TEST_V2_ARGS)

# bench: the quick evaluation (< 10 min), bench-full: the whole one (< 60 min); both write
# bench/results/<timestamp>/report.md with PNG plots (start_latency.py's output is part of it).
bench: bench-apt
	@PYTHONPATH=. $(VENV)/bin/python -m bench.eval --quick

bench-full: bench-apt
	@PYTHONPATH=. $(VENV)/bin/python -m bench.eval --full

bench-apt: setup-test
	@bash tools/apt-install.sh $(LAB_APT_PACKAGES) $(BENCH_APT_PACKAGES)

bench-latency: setup-test
	@$(VENV)/bin/python bench/start_latency.py

clean:
	rm -rf $(VENV) build src/*.egg-info
