# bootgen: `make demo` and `make test` install what is missing, then do their job.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BOOTGEN := $(VENV)/bin/bootgen
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tool and its tests use (the host's systemd, busybox, cryptsetup, kernel, QEMU).
APT_PACKAGES := qemu-system-x86 qemu-utils linux-image-amd64 busybox-static systemd udev kmod \
	cryptsetup-bin dropbear-bin openssh-client openssh-server shellcheck cpio fdisk e2fsprogs \
	zstd xz-utils lz4 python3-venv lvm2 mdadm btrfs-progs xfsprogs dosfstools \
	binutils systemd-boot-efi sbsigntool ovmf mtools \
	swtpm swtpm-tools tpm2-tools libtss2-esys-3.0.2-0 libtss2-rc0 libtss2-mu0 libtss2-tcti-device0 \
	console-setup kbd
PYTEST_ARGS ?= -n 2 --durations=30
OUT := out

.PHONY: setup apt venv demo test lint docs clean

setup: apt venv
	-@$(VENV)/bin/python -m compileall -q bootgen >/dev/null  # as installing a package does

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "== installing Debian packages:" $$missing; \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else echo "== Debian packages: all present"; fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "== creating $(VENV) with bootgen and its test tools"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

demo: setup
	@mkdir -p $(OUT)
	$(BOOTGEN) build examples/minimal.toml -o $(OUT)/minimal-systemd.img --flavor systemd \
		--manifest $(OUT)/minimal-systemd.json
	$(BOOTGEN) build examples/minimal.toml -o $(OUT)/minimal-scripted.img --flavor scripted \
		--manifest $(OUT)/minimal-scripted.json
	$(BOOTGEN) diff $(OUT)/minimal-scripted.img $(OUT)/minimal-systemd.img | head -n 12 || true
	$(BOOTGEN) verify examples/minimal.toml --flavor both --workdir $(OUT)/verify

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check bootgen tests benchmarks tools
	$(VENV)/bin/mypy bootgen

docs: venv
	$(VENV)/bin/python -m bootgen.description > docs/config.md

clean:
	rm -rf $(OUT) build dist
