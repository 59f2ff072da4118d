#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing (curl, python3,
# Chromium and chromedriver for the dashboard test; needs root and apt-get), then runs every
# test.
# Extra arguments go to `cargo test --workspace`. QUICTUN_SKIP_BROWSER=1 skips the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if [ "${QUICTUN_SKIP_BROWSER:-}" != 1 ]; then
    [ -x "${QUICTUN_CHROMIUM:-/usr/bin/chromium}" ] || need+=(chromium)
    [ -x "${QUICTUN_CHROMEDRIVER:-/usr/bin/chromedriver}" ] || need+=(chromium-driver)
fi
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    else
        echo "test.sh: missing ${need[*]}: install them (Debian: apt-get install ${need[*]})," \
             "or set QUICTUN_SKIP_BROWSER=1 to skip the browser test" >&2
        exit 1
    fi
fi

cargo test --workspace "$@"
