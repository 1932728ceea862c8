#!/usr/bin/env bash
# What the edge builds need on a Debian/Ubuntu machine: the Rust targets, Debian's cross
# compilers (ring and LMDB have C parts; they also link) and qemu-user to run the binaries.
# Idempotent: installs only what is missing.
set -euo pipefail

rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64 >/dev/null && command -v qemu-arm >/dev/null || need+=(qemu-user)
if ((${#need[@]})); then
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
