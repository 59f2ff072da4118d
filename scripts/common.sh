# Shared by the demo scripts (sourced, not run).

# Fails with one line unless every tool named is on PATH: need_tools SCRIPT TOOL...
need_tools() {
    local script=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null ||
            { echo "$script: $tool is needed (apt-get install $tool)" >&2; exit 1; }
    done
}

# Builds the workspace in release mode and prints where the binaries are: cargo's target
# directory (./target, $CARGO_TARGET_DIR or a config file's) + /release.
release_bin_dir() {
    cargo build --quiet --workspace --release || return 1
    local target_dir
    target_dir=$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    echo "$target_dir/release"
}

# Prints the certificate fingerprint a starting server logs, waiting up to 10 s for it; fails
# with the server's log when none comes: server_fingerprint SCRIPT LOG
server_fingerprint() {
    local script=$1 log=$2 fingerprint=""
    for _ in $(seq 100); do
        fingerprint=$(grep -o 'sha256:[0-9a-f]\{64\}' "$log" | head -n 1 || true)
        [ -n "$fingerprint" ] && break
        sleep 0.1
    done
    [ -n "$fingerprint" ] || { echo "$script: the server did not start:" >&2; cat "$log" >&2; return 1; }
    echo "$fingerprint"
}
