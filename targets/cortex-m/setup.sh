#!/usr/bin/env bash
# What the Cortex-M voter needs on a Debian/Ubuntu machine: the Rust target and
# qemu-system-arm (its mps2-an386 board runs the firmware). Idempotent.
set -euo pipefail

rustup target add thumbv7em-none-eabihf

need=()
# The firmware's build script and the host crates link with the system C compiler.
command -v cc >/dev/null || need+=(build-essential)
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
if ((${#need[@]})); then
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
