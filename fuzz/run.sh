#!/usr/bin/env bash
# Runs the fuzz targets (all, or those named) for FUZZ_SECS seconds each and prints, per
# target, executions, executions per second and libFuzzer's coverage (cov: edges, ft:
# features). Installs cargo-fuzz first if it is missing. Used by `make fuzz` and by CI.
#
# Works on stable Rust: cargo-fuzz's coverage instrumentation (-Cpasses=sancov-module and
# LLVM options) is stable; only sanitizers need nightly flags. The default, FUZZ_SANITIZER=none,
# suits safe-Rust decoders (debug assertions and overflow checks stay on); with
# FUZZ_SANITIZER=address the script sets RUSTC_BOOTSTRAP=1 so stable rustc accepts
# -Zsanitizer=address (its runtime ships with the stable std).
#
# A crash stops the run with the failing input under fuzz/artifacts/<target>/ and the
# command that replays it; new coverage is kept in fuzz/corpus/<target>/ (not committed:
# fuzz/seeds/<target>/ holds the committed seeds, read but never written).
set -euo pipefail
cd "$(dirname "$0")"

secs=${FUZZ_SECS:-60}
cargo_fuzz=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q " $cargo_fuzz"; then
    cargo install cargo-fuzz --version "$cargo_fuzz" --locked
fi

sanitizer=${FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
flags=(--sanitizer "$sanitizer" --debug-assertions)
# FUZZ_BUILD=dev: unoptimized dependencies, a third of the release build's time; CI's smoke
# runs use it (a short run needs the build more than the speed).
if [ "${FUZZ_BUILD:-release}" = dev ]; then
    flags+=(--dev)
fi

# FUZZ_HOST=0: leave out the targets that need the node crate (wasmtime, LMDB; see the
# `host` feature in fuzz/Cargo.toml), which cost most of the build.
host_targets=$(awk '/^name = /{gsub(/"/, "", $3); name=$3} /^required-features = \["host"\]/{print name}' Cargo.toml)
if [ "${FUZZ_HOST:-1}" = 0 ]; then
    flags+=(--no-default-features)
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
if [ "${FUZZ_HOST:-1}" = 0 ]; then
    mapfile -t targets < <(printf '%s\n' "${targets[@]}" | grep -vxF "$host_targets")
fi

cargo fuzz build "${flags[@]}"

logs=${FUZZ_LOGS:-$(mktemp -d)}
mkdir -p "$logs"
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
    log="$logs/$t.log"
    printf '%-14s %s s ... ' "$t" "$secs"
    if ! cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -max_len=8192 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1; then
        echo "FAILED"
        tail -n 60 "$log"
        echo "full log: $log"
        exit 1
    fi
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\) .*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\) .*/\1/p' <<<"$last")
    echo "ok"
    summary+=("$(printf '| %s | %s | %s | %s | %s | %s | %s |' \
        "$t" "$secs" "$runs" "$rate" "$cov" "$ft" "$corp")")
done
echo
echo "| target | seconds | executions | exec/s | cov | ft | corpus |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${summary[@]}"
