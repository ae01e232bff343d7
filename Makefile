# berth — build, install and test.
#
#   make setup   install what berth needs (apt packages, rustup target), build
#                it, install berth and its stage1s to $(PREFIX)/bin, the guest
#                kernel and guest-init to $(PREFIX)/lib/berth, and build the
#                cached test image. Idempotent; fast when nothing changed (the
#                kernel is cached under $(BERTH_CACHE), keyed by its inputs).
#   make test    make setup, then formatting, clippy, unit and end-to-end tests.

SHELL       := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PREFIX      ?= /usr/local
BERTH_CACHE ?= /var/cache/berth
export BERTH_CACHE
export PATH := $(HOME)/.cargo/bin:$(PATH)
# `make test` builds each crate once: incremental state (8 GB here) only
# costs disk. A developer's own `cargo build` keeps its default.
export CARGO_INCREMENTAL ?= 0

# Debian packages (installed with a policy-rc.d that refuses to start any
# service: nginx is for --host-share pods, the host must not run it):
# busybox-static for the test image; runc, crun and
# systemd-container for the benchmark's reference runtimes; hyperfine and jq
# for the benchmarks; musl-tools for the static guest-init; nftables for
# --net private (NAT, published ports), curl, iperf3 and ping for its tests and
# bench/net.sh; strace for bench/kvm-io.sh; debootstrap for the Debian test image;
# podman, conmon and containerd for berth-oci's client tests (tests/oci.rs),
# golang-go to build the OCI runtime-tools validation suite.
APT_PACKAGES := busybox-static runc crun systemd-container hyperfine jq nftables curl iperf3 iputils-ping strace debootstrap nginx \
                podman conmon containerd golang-go \
                musl-tools build-essential pkg-config iproute2 procps e2fsprogs \
                linux-source-6.1 flex bison bc libelf-dev libssl-dev xz-utils patch
RUST_TARGETS := x86_64-unknown-linux-musl
BINARIES     := berth berth-stage1-ns berth-stage1-kvm berth-oci
LIBDIR       := $(PREFIX)/lib/berth
MUSL_INIT    := target/x86_64-unknown-linux-musl/release/berth-guest-init

.PHONY: setup apt rust build install kernel images test check unit clean

setup: apt rust build install kernel images

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "setup: installing $$missing"; \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	    rc=$$?; rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

rust:
	@for t in $(RUST_TARGETS); do \
	    rustup target list --installed | grep -qx $$t || rustup target add $$t; done

build:
	cargo build --release --workspace
	cargo build --release -p berth-guest-init --target x86_64-unknown-linux-musl

install: build
	install -d $(PREFIX)/bin $(LIBDIR) $(PREFIX)/lib/systemd/system
	for b in $(BINARIES); do install -m 0755 target/release/$$b $(PREFIX)/bin/$$b; done
	sed 's|@BINDIR@|$(PREFIX)/bin|g' systemd/berth@.service > $(PREFIX)/lib/systemd/system/berth@.service
	# Man pages and completions, generated from the CLI's definitions.
	$(PREFIX)/bin/berth generate-manpages $(PREFIX)/share/man/man1
	install -d $(PREFIX)/share/bash-completion/completions $(PREFIX)/share/zsh/site-functions \
	    $(PREFIX)/share/fish/vendor_completions.d
	$(PREFIX)/bin/berth completion bash > $(PREFIX)/share/bash-completion/completions/berth
	$(PREFIX)/bin/berth completion zsh > $(PREFIX)/share/zsh/site-functions/_berth
	$(PREFIX)/bin/berth completion fish > $(PREFIX)/share/fish/vendor_completions.d/berth.fish
	install -m 0755 -s $(MUSL_INIT) $(LIBDIR)/berth-guest-init

# The guest kernel: built once per input hash (minutes), then cached.
kernel:
	@k=$$(bash kernel-config/build.sh | tail -n 1); test -f "$$k"; install -d $(LIBDIR); \
	if ! cmp -s "$$k" $(LIBDIR)/vmlinux; then install -m 0644 "$$k" $(LIBDIR)/vmlinux; fi

images:
	@bash images/busybox.sh >/dev/null
	@bash images/debian.sh >/dev/null
	@bash tests/testhost/testhost.sh build >/dev/null

test: setup check unit

check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Unit and end-to-end tests in one cargo run (so one summary line counts them
# all). The end-to-end tests drive the debug binaries, which `cargo test
# --workspace` builds side by side.
unit:
	cargo build --workspace
	cargo test --workspace --no-fail-fast

clean:
	cargo clean
