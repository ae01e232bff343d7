# berth — build, install and test.
#
#   make setup   install what berth needs (apt packages, rustup target), build
#                it, install berth and its stage1s to $(PREFIX)/bin, and build
#                the cached test image. Idempotent; fast when nothing changed.
#   make test    make setup, then formatting, clippy, unit and end-to-end tests.

PREFIX      ?= /usr/local
BERTH_CACHE ?= /var/cache/berth
export BERTH_CACHE
export PATH := $(HOME)/.cargo/bin:$(PATH)

# Debian packages: busybox-static for the test image; runc, crun and
# systemd-container for the benchmark's reference runtimes; hyperfine and jq
# for the benchmarks; musl-tools for the static guest-init.
APT_PACKAGES := busybox-static runc crun systemd-container hyperfine jq \
                musl-tools build-essential pkg-config iproute2 procps
RUST_TARGETS := x86_64-unknown-linux-musl
BINARIES     := berth berth-stage1-ns berth-stage1-kvm

.PHONY: setup apt rust build install images test check unit e2e clean

setup: apt rust build install images

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "setup: installing $$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

rust:
	@for t in $(RUST_TARGETS); do \
	    rustup target list --installed | grep -qx $$t || rustup target add $$t; done

build:
	cargo build --release --workspace

install: build
	install -d $(PREFIX)/bin
	for b in $(BINARIES); do install -m 0755 target/release/$$b $(PREFIX)/bin/$$b; done

images:
	@bash images/busybox.sh >/dev/null

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
