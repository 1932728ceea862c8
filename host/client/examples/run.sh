#!/usr/bin/env bash
# Runs every example of wraft-client against a fresh `wraft dev` cluster (a CI step: the
# examples must build and work, not only compile). Ports: those of `wraft dev`
# (7001-7003, 8001-8003).
set -euo pipefail
cd "$(dirname "$0")/../../.."
target=${CARGO_TARGET_DIR:-target}
# The whole workspace's binaries and examples: the feature set `make test` (`cargo test
# --workspace`) builds, so after it this is a no-op. `-p wraft-host --bin wraft` alone
# resolves other features and rebuilds the node (~6 minutes of a CI run).
cargo build -q --workspace --bins --examples
dir=$(mktemp -d)
# The settings the examples read, whatever the caller's environment holds.
unset WRAFT_DEV_PORT WRAFT_DEV_HTTP_PORT WRAFT_PROFILE
export WRAFT_NODES=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 WRAFT_FSM=sequencer
"$target/debug/wraft" dev --data-dir "$dir" --port 7001 --http-port 8001 >"$dir/dev.log" 2>&1 &
dev=$!
stop() {
    kill $dev 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 $dev 2>/dev/null || break; sleep 1; done
    kill -9 $dev 2>/dev/null || true
    rm -rf "$dir"
}
trap stop EXIT
for _ in $(seq 1 120); do
    grep -q '^wraft dev:' "$dir/dev.log" && break
    kill -0 $dev 2>/dev/null || break
    sleep 1
done
grep -q '^wraft dev:' "$dir/dev.log" || { echo "wraft dev did not start:"; cat "$dir/dev.log"; exit 1; }
export WRAFT_CLIENT_CA=$dir/certs/ca.pem WRAFT_CLIENT_CERT=$dir/certs/writer.pem \
    WRAFT_CLIENT_KEY=$dir/certs/writer.key
for example in host/client/examples/*.rs; do
    name=$(basename "$example" .rs)
    echo "== example $name"
    "$target/debug/examples/$name"
done
