#!/usr/bin/env bash
# The one test command: every test, the ignored tier included (`cargo test --workspace` alone
# runs the tier that needs nothing but a Rust toolchain; CONTRIBUTING.md).
#
# 1. Installs what the ignored tests need when it is missing: curl, python3, Chromium with
#    chromedriver for the dashboard test, dnsmasq and dig for the UDP application test, and
#    nginx with its stream module for the several-servers test
#    (as root, with apt-get).
# 2. Builds the plugin fixture made against another plugin-API version, a workspace of its own
#    that cargo cannot build as a dependency, into the same target directory.
# 3. Runs `cargo test --workspace --no-fail-fast -- --include-ignored` (every test binary runs,
#    so one failure does not hide another). Arguments before a `--` go to cargo, after it to
#    the test binaries: scripts/test.sh -p quictun -- --skip legacy
#
# QUICTUN_SKIP_BROWSER=1 skips the dashboard test. Not run as root, the link-emulator tests
# (network namespaces, TUN devices) are skipped, with a note saying so.
set -euo pipefail
cd "$(dirname "$0")/.."

browser_test=a_live_tunnel_shows_on_the_dashboard_with_growing_counts

cargo_args=()
test_args=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do cargo_args+=("$1"); shift; done
[ $# -gt 0 ] && shift
test_args=("$@")

need=()
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
[ -x "${QUICTUN_DNSMASQ:-/usr/sbin/dnsmasq}" ] || need+=(dnsmasq-base)
[ -x "${QUICTUN_DIG:-/usr/bin/dig}" ] || need+=(bind9-dnsutils)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
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

skip=()
if [ "${QUICTUN_SKIP_BROWSER:-}" = 1 ]; then
    echo "test.sh: QUICTUN_SKIP_BROWSER=1: skipping the dashboard test ($browser_test)" >&2
    skip+=(--skip "$browser_test")
fi

# The target directory cargo uses here ($CARGO_TARGET_DIR, a config file, or ./target).
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
profile_args=()
for arg in "${cargo_args[@]}"; do
    case "$arg" in
        --release | -r) profile_args=(--release) ;;
    esac
done
echo "test.sh: building the future-ABI plugin fixture" >&2
cargo build --quiet "${profile_args[@]}" \
    --manifest-path host/tests/fixtures/future-abi/Cargo.toml --target-dir "$target_dir"

if [ "$(id -u)" != 0 ]; then
    # Every test of bench/tests/linkem_e2e.rs needs root: skipped by name.
    linkem_tests=$(cargo test --quiet "${profile_args[@]}" -p quictun-bench --test linkem_e2e \
        -- --list --include-ignored --format terse | sed -n 's/: test$//p')
    echo "test.sh: not root: skipping the link-emulator tests (namespaces, TUN devices):" \
         $linkem_tests >&2
    for name in $linkem_tests; do skip+=(--skip "$name"); done
fi

cargo test --workspace --no-fail-fast "${cargo_args[@]}" -- --include-ignored "${skip[@]}" \
    "${test_args[@]}"
