# The two commands of the README: `make dev` (a first run) and `make test` (the test suite).
# Both install what a fresh machine with only the Rust toolchain lacks.

CARGO ?= cargo

.PHONY: setup dev test bench ci

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

## Every benchmark of docs/benchmarks.md (criterion and bench binaries, then `wraft bench`).
bench: setup
	$(CARGO) bench -p wraft-host --bench apply
	$(CARGO) bench -p wraft-host --bench log_append
	$(CARGO) bench -p wraft-host --bench examples
	$(CARGO) bench -p wraft-host --bench lifecycle
	$(CARGO) bench -p wraft-host --bench ops
	$(CARGO) bench -p wraft-host --bench restart
	$(CARGO) run --release -p wraft-host --bin wraft -- bench --size 256,4096

## What CI runs.
ci:
	bash .ci/run
