# The two commands of the README: `make dev` (a first run) and `make test` (the test suite).
# Both install what a fresh machine with only the Rust toolchain lacks.

CARGO ?= cargo

# Where cargo puts what it builds: a CARGO_TARGET_DIR in the environment is honoured (made
# absolute: the firmware builds in its own directory), else ./target.
TARGET_DIR = $(if $(CARGO_TARGET_DIR),$(abspath $(CARGO_TARGET_DIR)),$(CURDIR)/target)

.PHONY: setup dev test man bench fuzz fuzz-seeds ci edge-setup edge edge-cross edge-test embedded-setup embedded embedded-test console-test

## Rust targets and components the build needs (idempotent, offline once installed).
setup:
	rustup target add wasm32-unknown-unknown thumbv7em-none-eabihf
	rustup component add rustfmt clippy

## Build wraft and run a local 3-node cluster (data under ./wraft-data/dev) until Ctrl-C.
dev: setup
	$(CARGO) run -p wraft-host --bin wraft -- dev

## Every test of the workspace: unit, integration (real LMDB, real wasm guests), doc tests.
test: setup
	$(CARGO) test --workspace
	CARGO_TARGET_DIR=$(TARGET_DIR) $(CARGO) test --manifest-path vendor/base2histogram/Cargo.toml

## Man pages from the clap definitions: wraft.1 and one per subcommand, in target/man.
man:
	$(CARGO) run -p wraft-host --bin wraft -- man --dir $(TARGET_DIR)/man

## Every benchmark of docs/benchmarks.md (criterion and bench binaries, then `wraft bench`).
bench: setup
	$(CARGO) bench -p wraft-host --bench apply
	$(CARGO) bench -p wraft-host --bench log_append
	$(CARGO) bench -p wraft-host --bench examples
	$(CARGO) bench -p wraft-host --bench lifecycle
	$(CARGO) bench -p wraft-host --bench ops
	$(CARGO) bench -p wraft-host --bench restart
	$(CARGO) run --release -p wraft-host --bin wraft -- bench --size 256,4096

## Every cargo-fuzz target (fuzz/fuzz_targets) for FUZZ_SECS seconds each, on stable Rust;
## installs cargo-fuzz if missing and prints executions and coverage per target
## (docs/testing.md, "Fuzzing"). FUZZ_TARGETS="frame link" narrows the run;
## FUZZ_SANITIZER=address adds AddressSanitizer; FUZZ_BUILD=dev FUZZ_HOST=0 is CI's quick form.
FUZZ_SECS ?= 60
fuzz: setup
	FUZZ_SECS=$(FUZZ_SECS) bash fuzz/run.sh $(FUZZ_TARGETS)

## Rewrites the committed seed corpora (fuzz/seeds/) from real encodings (fuzz/src/seeds.rs).
fuzz-seeds: setup
	cd fuzz && $(CARGO) run --example seeds

## Cross toolchains, Rust targets and qemu-user for the edge builds (targets/edge-linux).
edge-setup: setup
	bash targets/edge-linux/setup.sh

## wraft for edge boards with the size-tuned `edge` profile: aarch64 (Cranelift) and armv7
## (Pulley); prints the binary sizes (docs/edge.md).
edge: edge-setup
	$(CARGO) build --profile edge --bin wraft --target aarch64-unknown-linux-gnu
	$(CARGO) build --profile edge --bin wraft --target armv7-unknown-linux-gnueabihf
	ls -l $(TARGET_DIR)/aarch64-unknown-linux-gnu/edge/wraft \
		$(TARGET_DIR)/armv7-unknown-linux-gnueabihf/edge/wraft

## Dev builds of wraft for aarch64 and armv7, the edge test's emulated nodes (edge-setup must
## have run). EDGE_TARGET_DIR puts them in a target directory of their own: CI builds them
## there in the background while the tests run (.ci/run), so they take no lock of ./target.
## One cargo run per target: both in one run took 9m26s on a fresh 2-core CI machine against
## 4m19s + 3m36s one after the other (2026-12-05).
EDGE_TARGET_DIR ?= $(TARGET_DIR)
EDGE_DIR = $(abspath $(EDGE_TARGET_DIR))
edge-cross:
	CARGO_TARGET_DIR=$(EDGE_DIR) $(CARGO) build --bin wraft --target aarch64-unknown-linux-gnu
	CARGO_TARGET_DIR=$(EDGE_DIR) $(CARGO) build --bin wraft --target armv7-unknown-linux-gnueabihf

## One x86_64, one aarch64 (qemu-aarch64) and one armv7 (qemu-arm) node in one cluster:
## identical state for every FSM (host/node/tests/all/edge.rs). Dev builds: quicker to build.
EDGE_BINS = WRAFT_EDGE_AARCH64=$(EDGE_DIR)/aarch64-unknown-linux-gnu/debug/wraft \
	WRAFT_EDGE_ARMV7=$(EDGE_DIR)/armv7-unknown-linux-gnueabihf/debug/wraft
edge-test: edge-setup
	$(MAKE) edge-cross
	CARGO_TARGET_DIR=$(EDGE_DIR) $(CARGO) test --manifest-path vendor/base2histogram/Cargo.toml --target armv7-unknown-linux-gnueabihf
	$(EDGE_BINS) $(CARGO) test -p wraft-host --test all edge -- --ignored --nocapture

## qemu-system-arm and the thumbv7em target for the Cortex-M passive voter (targets/cortex-m).
embedded-setup: setup
	bash targets/cortex-m/setup.sh

## The passive-voter firmware for a Cortex-M4 (QEMU's mps2-an386); prints its flash and RAM
## use (docs/embedded.md). memory.x caps it at 128 KiB of flash and 64 KiB of RAM.
VOTER_FIRMWARE = $(TARGET_DIR)/thumbv7em-none-eabihf/release/wraft-voter
embedded: embedded-setup
	cd targets/cortex-m && CARGO_TARGET_DIR=$(TARGET_DIR) $(CARGO) build --release
	@if command -v size >/dev/null; then \
		size -A $(VOTER_FIRMWARE) | grep -E '^(\.vector_table|\.text|\.rodata|\.data|\.bss|\.uninit) '; \
	else ls -l $(VOTER_FIRMWARE); echo "(binutils' size prints the sections)"; fi

## Two `wraft serve` nodes and the firmware in qemu-system-arm as one three-voter cluster
## (host/node/tests/all/embedded.rs).
embedded-test: embedded
	WRAFT_VOTER_FIRMWARE=$(VOTER_FIRMWARE) $(CARGO) test -p wraft-host --test all embedded -- --ignored --nocapture

## The web console in headless Chromium against three `wraft serve` processes; the screenshot
## is kept in target/console.png (host/node/tests/all/console.rs).
console-test: setup
	bash host/node/tests/browser-setup.sh
	$(CARGO) test -p wraft-host --test all console -- --ignored --nocapture

## What CI runs.
ci:
	bash .ci/run
