#!/usr/bin/env bash
# What the Cortex-M voter needs on a Debian/Ubuntu machine: the Rust target and
# qemu-system-arm (its mps2-an386 board runs the firmware). Idempotent.
set -euo pipefail

rustup target add thumbv7em-none-eabihf

if ! command -v qemu-system-arm >/dev/null; then
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends qemu-system-arm
fi
