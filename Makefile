# tsmr: `make demo` and `make test` set everything up on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TSMR := $(VENV)/bin/tsmr
# Debian packages the test suite needs: swtpm for TPM tests, libtss2-dev and
# pkg-config to build tpm2-pytss, fuse3 for unprivileged FUSE mounts, postgresql
# for the verifier service's tests (the tests start their own throwaway cluster);
# for tsmr predict and tsmr authenticode: ovmf (OVMF.fd with TDX and SEV metadata),
# shim-signed (PE binaries signed by Microsoft and Debian), pesign, osslsigncode and
# sbsigntool (independent Authenticode tools), systemd-boot-efi
# (the UKI stub), systemd (systemd-measure) and binutils (objcopy builds UKIs); curl
# sends bundles and admin requests over TLS as the README shows.
APT_PACKAGES := swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config fuse3 postgresql \
	ovmf shim-signed pesign osslsigncode sbsigntool systemd-boot-efi systemd binutils curl
DEMO_STATE ?= $(CURDIR)/.state/demo
PYTEST_ARGS ?=

.PHONY: all demo test test-kernel install install-test apt-deps bench clean help fuzz

all: help

help:
	@echo "make demo    - create .venv, install tsmr, run the demo on the built-in emulator"
	@echo "make test    - install Debian and Python test dependencies, run the whole suite"
	@echo "make test-kernel - Linux's own tsm-mr in qemu against tsmr (builds a Debian sid guest once)"
	@echo "make bench   - run the benchmarks in bench/ (prints ratios to baselines)"
	@echo "make fuzz    - run every fuzz target for FUZZ_SECONDS (default 60) each"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[verifier]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python apt-deps
	$(PIP) install -q -e '.[tpm,verifier,postgresql,test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

apt-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# A real Linux kernel (Debian's cloud kernel, its bzImage) for the demo and the prediction tests.
KERNEL_IMAGE ?= $(CURDIR)/.state/kernel/vmlinuz
$(KERNEL_IMAGE):
	tools/fetch-kernel $@

demo: install $(KERNEL_IMAGE)
	@$(MAKE) --no-print-directory apt-deps APT_PACKAGES=ovmf
	@rm -rf $(DEMO_STATE)
	TSMR_STATE_DIR=$(DEMO_STATE)/state TSMR_LOG_DIR=$(DEMO_STATE)/logs TSMR_KERNEL_IMAGE=$(KERNEL_IMAGE) $(PY) examples/demo.py

test: install-test $(KERNEL_IMAGE)
	$(PY) -m mypy
	TSMR_KERNEL_IMAGE=$(KERNEL_IMAGE) $(PY) -m pytest -q --ignore=tests/kernel $(PYTEST_ARGS)

# The kernel tier: Linux's own tsm-mr (tsm_mr_sample) in qemu against tsmr's sysfs backend.
# Builds a Debian sid guest once into $(KERNEL_CACHE); later runs only boot it.
KERNEL_CACHE ?= /var/cache/tsmr-kernel
KERNEL_APT := debootstrap qemu-system-x86 ovmf swtpm binutils xz-utils
test-kernel: install-test
	@missing=$$(for p in $(KERNEL_APT); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	TSMR_KERNEL_CACHE=$(KERNEL_CACHE) $(PY) tests/kernel/run.py --report .state/kernel-report.json --tpm-out .state/kernel-vtpm
	TSMR_KERNEL_REPORT=.state/kernel-report.json TSMR_KERNEL_VTPM=.state/kernel-vtpm $(PY) -m pytest -q tests/kernel

# Every fuzz target (tests/fuzz/targets.py) for FUZZ_SECONDS each, two at a time; crash inputs
# are kept under .state/fuzz-artifacts.  `make test` runs the same targets for 2 s each.
FUZZ_SECONDS ?= 60
fuzz: install-test
	$(PY) tests/fuzz/run.py --seconds $(FUZZ_SECONDS) --jobs 2 --artifacts .state/fuzz-artifacts

bench: install-test
	$(PY) bench/extend.py
	$(PY) bench/append.py
	$(PY) bench/replay_runtime.py
	$(PY) bench/replay.py
	$(PY) bench/replay_ima.py
	$(PY) bench/verify.py
	$(PY) bench/service.py
	$(PY) bench/predict.py
	$(PY) bench/limits.py

clean:
	rm -rf $(VENV) .state .pytest_cache .hypothesis build src/*.egg-info
