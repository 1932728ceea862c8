#!/usr/bin/env bash
# What the console's browser test needs on a Debian/Ubuntu machine: Debian's Chromium and
# its ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver). Idempotent.
set -euo pipefail

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if ((${#need[@]})); then
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
