#!/usr/bin/env bash
# Build, run and test mxnode.
#
#   ./build.sh run     build and run the development node (`mxnode dev`)
#   ./build.sh test    install missing test tools, then fmt, clippy, build
#                      and every test with nextest (what CI runs)
#   ./build.sh bench   not implemented yet
#   ./build.sh image   not implemented yet (DESIGN §8)
#
# CARGO_TARGET_DIR defaults to /var/tmp/mxnode-target: outside the clone, so
# builds are reused between CI runs and checkouts on the same machine.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mxnode-target}"

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

log() {
    printf '==> %s\n' "$*" >&2
}

# Whether the Debian package $1 is installed.
dpkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# Debian bookworm packages the tests need, each with the check that proves
# it is present. Checking first keeps local runs fast and offline.
missing_packages() {
    local missing=()
    command -v swaks >/dev/null || missing+=(swaks)                 # independent SMTP client
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || missing+=(python3)                                        # webhook receiver peer
    command -v openssl >/dev/null || missing+=(openssl)              # TLS tooling in tests
    [ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
    dpkg_installed libclang-dev || missing+=(libclang-dev)           # bindgen (RocksDB bindings)
    command -v pkg-config >/dev/null || missing+=(pkg-config)        # finds OpenSSL for native-tls
    dpkg_installed libssl-dev || missing+=(libssl-dev)               # native-tls (OpenSSL)
    command -v c++ >/dev/null || missing+=(g++)                      # compiles RocksDB's C++
    printf '%s\n' "${missing[@]}"
}

install_test_dependencies() {
    local missing
    mapfile -t missing < <(missing_packages | sed '/^$/d')
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "missing packages: ${missing[*]}; install them as root:" >&2
            echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
            exit 1
        fi
    fi
    log "installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
}

ensure_rust_tools() {
    command -v cargo >/dev/null || {
        echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
        exit 1
    }
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        log "installing rustfmt and clippy"
        rustup component add rustfmt clippy
    fi
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest
    fi
}

cmd_test() {
    install_test_dependencies
    ensure_rust_tools
    log "cargo fmt --check"
    cargo fmt --all -- --check
    log "cargo clippy"
    cargo clippy --workspace --all-targets -- -D warnings
    log "cargo build -p mxnode"
    cargo build -p mxnode
    # The end-to-end tests start this binary (see tests/src/node.rs).
    export MXNODE_BIN="$CARGO_TARGET_DIR/debug/mxnode"
    log "cargo nextest run"
    # Last, and exec'd: the output ends with nextest's summary.
    exec cargo nextest run --workspace --no-fail-fast --profile ci
}

case "${1:-}" in
    run)
        shift
        exec cargo run -p mxnode --release -- dev "$@"
        ;;
    test)
        cmd_test
        ;;
    bench | image)
        echo "./build.sh $1: not implemented yet" >&2
        exit 2
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        exit 64
        ;;
esac
