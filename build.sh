#!/usr/bin/env bash
# Build, run and test mxnode.
#
#   ./build.sh run     build and run the development node (`mxnode dev`)
#   ./build.sh test    install missing test tools, then fmt, clippy, build
#                      and every test with nextest (what CI runs)
#   ./build.sh bench   mxnode against Postfix, Haraka and the SMTP limit on
#                      loopback, and MIME-to-payload MB/s; results in out/bench/
#                      (root; `./build.sh bench --quick` for a short development
#                      sweep)
#   ./build.sh image [--production] [--version V] [--overlay DIR] [--release-only]
#                      the appliance disk image (DESIGN §8) in out/image/
#                      (raw, qcow2, sizes, sha256) and its signed release in
#                      out/image/release/ (DESIGN §9); needs root. Without
#                      --production it trusts the development key (marked);
#                      --production needs MXNODE_RELEASE_KEY, MXNODE_UPDATE_KEYS
#   ./build.sh vm      boot that image in qemu (TCG), SMTP and HTTPS
#                      forwarded to 127.0.0.1 (--fresh: forget the VM's disk)
#   ./build.sh fuzz [TARGET] [SECONDS]
#                      a fuzzing campaign (default: every target, 600 s each);
#                      the grown corpus stays in /var/tmp/mxnode-fuzz
#   ./build.sh doctor  every package and tool the commands need, which
#                      command needs it, and whether this machine has it
#
# CARGO_TARGET_DIR defaults to /var/tmp/mxnode-target: outside the clone, so
# builds are reused between CI runs and checkouts on the same machine.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mxnode-target}"

usage() {
    sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

log() {
    printf '==> %s\n' "$*" >&2
}

# Every Debian package a command needs, listed once: the package, the commands that need it
# (run, test, bench, image; `test` also builds and boots the image), the check that proves it
# is present, and why. A check tests what the code really uses (the library file, the Perl
# module, the binary), so neither a package that merely happens to be installed nor one whose
# recommendations are missing can satisfy it.
REQUIREMENTS=(
    # package           | commands             | check                                              | needed for
    "libclang-dev       | run test bench image | compgen -G '/usr/lib/llvm-*/lib/libclang.so' && compgen -G '/usr/lib/llvm-*/lib/clang/*/include/stddef.h' | bindgen (RocksDB bindings): libclang and its headers"
    "librocksdb-dev     | run test bench image | [ -e /usr/lib/x86_64-linux-gnu/librocksdb.so ]     | RocksDB to link (.cargo/config.toml)"
    "g++                | run test bench image | command -v c++                                     | compiles RocksDB's C++ glue"
    "ca-certificates    | run test bench image | [ -s /etc/ssl/certs/ca-certificates.crt ]          | system trust roots of every HTTPS client"
    "swaks              | test                 | command -v swaks                                   | independent SMTP client"
    "libnet-ssleay-perl | test                 | perl -MNet::SSLeay -e1                             | swaks --tls (STARTTLS)"
    "python3            | test                 | python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' | webhook receiver and channel peers"
    "python3-venv       | test bench           | python3 -c 'import ensurepip, venv'                | venvs of schemathesis, dkimpy and the bench chart"
    "dnsmasq-base       | test bench           | command -v dnsmasq                                 | DNS server of the sender-authentication tests (auth.rs) and of the mxnode-auth bench target"
    "openssl            | test bench           | command -v openssl                                 | TLS tooling of the tests; DKIM keys of the bench"
    "strace             | test                 | command -v strace                                  | files the node writes (at_rest)"
    "chromium           | test                 | [ -x /usr/bin/chromium ]                           | browser of the console tests (ui.rs)"
    "npm                | test bench           | command -v npm                                     | installs playwright-core and Haraka"
    "nodejs             | bench                | node -e 'process.exit(parseInt(process.versions.node) < 20 ? 1 : 0)' | runs Haraka (3.3 needs Node.js 20 or later)"
    "postfix            | test bench           | command -v smtp-source && command -v smtp-sink && command -v postqueue | smtp-source, smtp-sink, Postfix (mta.rs, bench)"
    "mmdebstrap         | test image           | command -v mmdebstrap                              | Debian root file system of the image"
    "erofs-utils        | test image           | command -v mkfs.erofs                              | read-only root image"
    "mtools             | test image           | command -v mcopy                                   | ESP without mounting"
    "dosfstools         | test image           | command -v mkfs.vfat                               | ESP file system"
    "fdisk              | test image           | command -v sfdisk                                  | GPT on a file"
    "e2fsprogs          | test image           | command -v mkfs.ext4                               | state partition (-d)"
    "binutils           | test image           | command -v objcopy                                 | strips debug info"
    "qemu-utils         | test image           | command -v qemu-img                                | qcow2"
    "ovmf               | test image           | [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ]             | UEFI firmware of the VM"
    "swtpm              | test image           | command -v swtpm                                   | TPM 2.0 of the VM"
    "swtpm-tools        | test image           | command -v swtpm_setup                             | creates the VM's TPM state"
    "qemu-system-x86    | test image           | command -v qemu-system-x86_64                      | boots the image (bookworm-backports)"
)

# Field $2 (1-based) of requirement line $1, trimmed.
requirement_field() {
    local field
    field=$(cut -d'|' -f"$2" <<<"$1")
    field="${field#"${field%%[![:space:]]*}"}"
    printf '%s' "${field%"${field##*[![:space:]]}"}"
}

# Whether requirement line $1 is met: its check, run quietly.
requirement_met() {
    bash -c "$(requirement_field "$1" 3)" >/dev/null 2>&1
}

# The packages command $1 needs that are missing, one a line.
missing_packages() {
    local line
    for line in "${REQUIREMENTS[@]}"; do
        if [[ " $(requirement_field "$line" 2) " == *" $1 "* ]] && ! requirement_met "$line"; then
            requirement_field "$line" 1
            echo
        fi
    done
}

# Installs what command $1 needs: checked first (fast and offline when all is there), then
# `apt-get update` and one `apt-get install`, as root or through passwordless sudo; otherwise
# the exact command to run. qemu-system-x86 comes from bookworm-backports (the machine's
# qemu-utils are from there, and both share qemu-system-common's version).
BACKPORTS_SOURCES=/etc/apt/sources.list.d/mxnode-backports.sources

install_packages() {
    local missing=() backports=() package
    while read -r package; do
        case "$package" in
            '') ;;
            qemu-system-x86) backports+=("$package") ;;
            *) missing+=("$package") ;;
        esac
    done < <(missing_packages "$1")
    if [ "${#missing[@]}" -eq 0 ] && [ "${#backports[@]}" -eq 0 ]; then
        return
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "./build.sh $1 needs these Debian packages: ${missing[*]} ${backports[*]}" >&2
            echo "install them as root:" >&2
            echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
            if [ "${#backports[@]}" -gt 0 ]; then
                echo "  apt-get install -y --no-install-recommends -t bookworm-backports ${backports[*]}" >&2
                echo "  (with bookworm-backports in the apt sources)" >&2
            fi
            exit 1
        fi
    fi
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
    if [ "${#backports[@]}" -gt 0 ] && [ ! -f "$BACKPORTS_SOURCES" ]; then
        log "adding bookworm-backports ($BACKPORTS_SOURCES) for ${backports[*]}"
        "${sudo[@]}" tee "$BACKPORTS_SOURCES" >/dev/null <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    if [[ " ${missing[*]} " == *" postfix "* ]]; then
        # Postfix asks what the machine's own mail system should be: "No configuration" writes
        # no /etc/postfix/main.cf and starts nothing; tests and the bench run private instances.
        echo "postfix postfix/main_mailer_type select No configuration" |
            "${sudo[@]}" debconf-set-selections
    fi
    log "installing ${missing[*]} ${backports[*]}"
    "${apt[@]}" update
    if [ "${#missing[@]}" -gt 0 ]; then
        "${apt[@]}" install -y --no-install-recommends "${missing[@]}"
    fi
    if [ "${#backports[@]}" -gt 0 ]; then
        "${apt[@]}" install -y --no-install-recommends -t bookworm-backports "${backports[@]}"
    fi
    # A package's presence is not the proof: every check must hold now.
    local still
    still=$(missing_packages "$1" | sed '/^$/d' | tr '\n' ' ')
    if [ -n "$still" ]; then
        echo "installed, but their checks still fail: $still(see ./build.sh doctor)" >&2
        exit 1
    fi
}

# `./build.sh doctor`: every requirement, the commands that need it, and whether it is present
# on this machine (CI prints it before the tests, so a run shows what the machine already had).
cmd_doctor() {
    local line state package
    printf '%-20s %-22s %-8s %s\n' requirement "needed by" state "what for"
    for line in "${REQUIREMENTS[@]}"; do
        package=$(requirement_field "$line" 1)
        if requirement_met "$line"; then state=present; else state=MISSING; fi
        printf '%-20s %-22s %-8s %s\n' "$package" "$(requirement_field "$line" 2)" "$state" \
            "$(requirement_field "$line" 4)"
    done
    local tool check
    for tool in \
        "cargo|cargo --version|run test bench image|Rust toolchain (rustup)" \
        "rustfmt, clippy|cargo fmt --version && cargo clippy --version|test|lint gates" \
        "cargo-nextest|cargo nextest --version|test|test runner" \
        "cargo-fuzz|cargo fuzz --version|test|fuzz smoke run" \
        "cargo-audit|cargo audit --version|test|RustSec check of Cargo.lock" \
        "s3s-fs $S3S_FS_VERSION|[ \"\$(${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs --version)\" = 's3s-fs $S3S_FS_VERSION' ]|test|S3 server peer" \
        "schemathesis|$SCHEMATHESIS_VENV/bin/schemathesis --version|test|API contract tester" \
        "dkimpy $DKIMPY_VERSION|$DKIMPY_VENV/bin/python -c 'import dkim'|test bench|DKIM and ARC signer of auth.rs and of the mxnode-auth bench target" \
        "playwright-core|cd tests/ui && node -p 'require(\"playwright-core/package.json\").version'|test|browser driver"; do
        IFS='|' read -r package check line _ <<<"$tool|"
        if bash -c "$check" >/dev/null 2>&1; then state=present; else state=MISSING; fi
        printf '%-20s %-22s %-8s %s\n' "$package" "$line" "$state" "$(cut -d'|' -f4 <<<"$tool")"
    done
}

# The Rust tools a command needs: cargo for every command; the lint and test tools for `test`.
ensure_rust_tools() {
    command -v cargo >/dev/null || {
        echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
        exit 1
    }
    if [ "${1:-test}" != test ]; then
        return
    fi
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        log "installing rustfmt and clippy"
        rustup component add rustfmt clippy
    fi
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest
    fi
    if ! cargo audit --version >/dev/null 2>&1; then
        log "installing cargo-audit"
        cargo install --locked cargo-audit
    fi
}

# The RustSec advisory database the audit reads: the offline snapshot beside the clone.
ADVISORY_DB="${MXNODE_ADVISORY_DB:-../shared/advisory-db}"

# Cargo.lock against the RustSec database: every kind of advisory (vulnerability, unmaintained,
# unsound, notice) fails, except those ignored in .cargo/audit.toml, each with its reason there.
audit_dependencies() {
    if [ ! -d "$ADVISORY_DB/crates" ]; then
        echo "no RustSec advisory database at $ADVISORY_DB (set MXNODE_ADVISORY_DB)" >&2
        exit 1
    fi
    log "cargo audit (RustSec snapshot in $ADVISORY_DB)"
    cargo audit --db "$ADVISORY_DB" --no-fetch --stale --deny warnings
}

# The S3-compatible server of the S3 tests (tests/src/s3.rs): s3s-fs, which checks SigV4
# signatures. Pinned: newer versions need a newer rustc. Its binary needs the `binary` feature.
# Installed into cargo's bin dir; compiling it takes minutes on a two-core machine, once.
S3S_FS_VERSION=0.14.1

ensure_s3_server() {
    local bin="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
    if [ "$("$bin" --version 2>/dev/null || true)" != "s3s-fs $S3S_FS_VERSION" ]; then
        log "installing s3s-fs $S3S_FS_VERSION (takes a few minutes)"
        cargo install --locked s3s-fs --version "$S3S_FS_VERSION" --features binary
    fi
    export S3S_FS_BIN="$bin"
}

# The contract-testing tool of tests/tests/api_contract.rs (PyPI), pinned, in a venv of its own
# outside the clone (like the build cache), so the system Python stays untouched.
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV=/var/tmp/mxnode-venv

ensure_schemathesis() {
    local bin="$SCHEMATHESIS_VENV/bin/schemathesis"
    if [ "$("$bin" --version 2>/dev/null || true)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
        log "installing schemathesis $SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV"
        python3 -m venv "$SCHEMATHESIS_VENV"
        "$SCHEMATHESIS_VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
    fi
    export MXNODE_SCHEMATHESIS="$bin"
}

# The DKIM and ARC signer of tests/tests/auth.rs (PyPI, with the Ed25519 support it needs),
# pinned, in a venv of its own like schemathesis's.
DKIMPY_VERSION=1.1.8
DKIMPY_VENV=/var/tmp/mxnode-auth-venv

ensure_dkimpy() {
    local python="$DKIMPY_VENV/bin/python"
    if [ "$("$python" -c 'import importlib.metadata as m; print(m.version("dkimpy"))' 2>/dev/null || true)" != "$DKIMPY_VERSION" ]; then
        log "installing dkimpy $DKIMPY_VERSION into $DKIMPY_VENV"
        python3 -m venv "$DKIMPY_VENV"
        "$DKIMPY_VENV/bin/pip" install --quiet --disable-pip-version-check \
            "dkimpy==$DKIMPY_VERSION" 'pynacl>=1.5,<2' 'authres>=1.2,<2'
    fi
    export MXNODE_DKIMPY_PYTHON="$python"
}

# The browser driver of tests/tests/ui.rs (npm), pinned by tests/ui/package-lock.json and
# installed into tests/ui/node_modules (git-ignored). It drives Debian's /usr/bin/chromium and
# never downloads a browser of its own.
PLAYWRIGHT_VERSION=1.57.0

ensure_playwright() {
    local installed
    installed="$(cd tests/ui && node -p 'require("playwright-core/package.json").version' 2>/dev/null || true)"
    if [ "$installed" != "$PLAYWRIGHT_VERSION" ]; then
        log "installing playwright-core $PLAYWRIGHT_VERSION into tests/ui/node_modules"
        (cd tests/ui && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
    fi
}

# Where `image` puts its output and `vm` boots from (git-ignored).
IMAGE_OUT="${MXNODE_IMAGE_OUT:-out/image}"

# Options (see image/build-image.sh): --production, --version V, --overlay DIR (test releases
# only), --release-only. MXNODE_RELEASE_KEY signs the release (default: the development key in
# firmware-config/), MXNODE_UPDATE_KEYS lists the keys the image trusts (default: the
# development key). --production refuses to start unless both are set to keys of your own
# (image/keys.sh), before anything is installed or built; a build that trusts the development
# key says so loudly and is marked (VARIANT_ID=development, issue 16).
cmd_image() {
    local repo=$PWD arg production=""
    # shellcheck source=image/keys.sh
    . image/keys.sh
    for arg in "$@"; do
        if [ "$arg" = --production ]; then production=1; fi
    done
    if [ -n "$production" ]; then
        check_production_keys "build.sh image"
    elif trusts_development_key "${MXNODE_UPDATE_KEYS:-firmware-config/update-keys.txt}" 2>/dev/null; then
        development_keys_warning
    fi
    install_packages image
    log "cargo build -p mxnode --release"
    cargo build -p mxnode --release
    image/build-image.sh --binary "$CARGO_TARGET_DIR/release/mxnode" --out "$IMAGE_OUT" "$@"
}

# Where `bench` writes its tables, JSON and chart (git-ignored); its scratch space (message
# files, the private Postfix instance and its queue, the benchmarked node's data_dir); and the
# Python environment that draws the chart. The last two live outside the clone, like the target.
BENCH_OUT="${MXNODE_BENCH_OUT:-out/bench}"
BENCH_WORK="${MXNODE_BENCH_WORK:-/var/tmp/mxnode-bench}"
BENCH_VENV="${MXNODE_BENCH_VENV:-/var/tmp/mxnode-bench-venv}"

# The Haraka of the bench target `haraka` (npm), pinned by bench/haraka/package-lock.json and
# installed into bench/haraka/node_modules (git-ignored); its optional plugins are left out.
HARAKA_VERSION=3.3.4

ensure_haraka() {
    local installed
    installed="$(cd bench/haraka && node -p 'require("Haraka/package.json").version' 2>/dev/null || true)"
    if [ "$installed" != "$HARAKA_VERSION" ]; then
        log "installing Haraka $HARAKA_VERSION into bench/haraka/node_modules"
        (cd bench/haraka && npm ci --omit=optional --no-audit --no-fund)
    fi
}

# The chart's Python environment (matplotlib from PyPI), outside the clone.
ensure_bench_venv() {
    if ! "$BENCH_VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
        log "creating $BENCH_VENV with matplotlib from PyPI"
        python3 -m venv "$BENCH_VENV"
        "$BENCH_VENV/bin/pip" install --quiet --disable-pip-version-check 'matplotlib>=3.7,<4'
    fi
}

cmd_bench() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "./build.sh bench needs root: it installs Postfix and starts a private instance" >&2
        exit 1
    fi
    install_packages bench
    ensure_bench_venv
    ensure_dkimpy
    ensure_haraka
    # Absolute: cargo runs the parse benchmark in the bench crate's directory.
    BENCH_OUT="$(realpath -m "$BENCH_OUT")"
    # Two builds: together, cargo would unify features with the bench crate's dependencies and
    # benchmark a different mxnode binary from the one `image` ships.
    log "cargo build --release -p mxnode; cargo build --release -p mxnode-bench"
    cargo build --release -p mxnode
    cargo build --release -p mxnode-bench --bins
    mkdir -p "$BENCH_OUT"
    # --quick also shortens the parse benchmark (seconds per cell; MXNODE_BENCH_SECONDS wins).
    local parse_seconds=2 arg
    for arg in "$@"; do
        if [ "$arg" = --quick ]; then parse_seconds=0.5; fi
    done
    log "MIME to payload: cargo bench -p mxnode-bench --bench parse"
    MXNODE_BENCH_OUT="$BENCH_OUT" MXNODE_BENCH_SECONDS="${MXNODE_BENCH_SECONDS:-$parse_seconds}" \
        cargo bench -p mxnode-bench --bench parse >"$BENCH_OUT/parse.md"
    cat "$BENCH_OUT/parse.md"
    log "end to end: limit, postfix, haraka, mxnode, mxnode + 20 ms receiver, mxnode + sender authentication (minutes)"
    "$CARGO_TARGET_DIR/release/mxnode-bench" --out "$BENCH_OUT" --work "$BENCH_WORK" \
        --mxnode "$CARGO_TARGET_DIR/release/mxnode" \
        --sink "$CARGO_TARGET_DIR/release/webhook-sink" --haraka "$PWD/bench/haraka" "$@"
    "$BENCH_VENV/bin/python" bench/plot.py "$BENCH_OUT/results.json" "$BENCH_OUT/throughput.png"
    log "written: $BENCH_OUT/{results.md,results.json,parse.md,parse.json,throughput.png}"
}

# Fuzzing (daemon/fuzz, its own workspace): cargo-fuzz builds with nightly-only
# instrumentation flags, which RUSTC_BOOTSTRAP=1 lets the stable toolchain accept.
FUZZ_DIR=daemon/fuzz
FUZZ_TARGETS=(smtp_session mime_payload config update_manifest auth_headers)
# Seconds per target in `./build.sh test`: a smoke run that catches a regression on the seeds
# and their first mutations; campaigns (`./build.sh fuzz`) run for minutes.
FUZZ_SMOKE_SECONDS="${FUZZ_SMOKE_SECONDS:-20}"

ensure_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        log "installing cargo-fuzz"
        cargo install --locked cargo-fuzz
    fi
}

# libFuzzer options per target: its dictionary and the largest input worth trying.
fuzz_options() {
    case "$1" in
        smtp_session) echo "-dict=$FUZZ_DIR/dict/smtp.dict -max_len=4096" ;;
        mime_payload) echo "-dict=$FUZZ_DIR/dict/mime.dict -max_len=65536" ;;
        config) echo "-dict=$FUZZ_DIR/dict/config.dict -max_len=4096" ;;
        update_manifest) echo "-dict=$FUZZ_DIR/dict/update.dict -max_len=4096" ;;
        auth_headers) echo "-dict=$FUZZ_DIR/dict/auth.dict -max_len=16384" ;;
    esac
}

# Runs fuzz target $1 for $2 seconds from the seeds in the repository and the corpus in
# $3/corpus/$1, where new inputs go (outside the clone: the seeds in git stay small). A crash
# leaves its input in $3/artifacts/$1/ and fails.
run_fuzz_target() {
    local target=$1 seconds=$2 work=$3
    mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
    # shellcheck disable=SC2046 # the options are separate words
    RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir "$FUZZ_DIR" "$target" \
        "$work/corpus/$target" "$FUZZ_DIR/corpus/$target" -- \
        $(fuzz_options "$target") -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$work/artifacts/$target/"
}

# One line from a libFuzzer log: executions and the last coverage figures.
fuzz_summary() {
    local execs cov
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$1")
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*/[0-9a-zA-Z]*' "$1" | tail -n 1 || true)
    echo "${execs:-?} executions, ${cov:-no coverage line}"
}

# The CI smoke run: every target briefly, quietly unless it fails.
fuzz_smoke() {
    ensure_cargo_fuzz
    log "cargo fuzz build ($FUZZ_DIR)"
    RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir "$FUZZ_DIR"
    local work target
    work=$(mktemp -d "${TMPDIR:-/tmp}/mxnode-fuzz-smoke.XXXXXX")
    for target in "${FUZZ_TARGETS[@]}"; do
        if ! run_fuzz_target "$target" "$FUZZ_SMOKE_SECONDS" "$work" >"$work/$target.log" 2>&1; then
            tail -n 80 "$work/$target.log" >&2
            echo "fuzz target $target failed; its input is in $work/artifacts/$target/" >&2
            exit 1
        fi
        log "fuzz $target (${FUZZ_SMOKE_SECONDS} s): $(fuzz_summary "$work/$target.log")"
    done
    rm -rf "$work"
}

# A campaign: `./build.sh fuzz [TARGET] [SECONDS]`; the corpus grows in /var/tmp/mxnode-fuzz.
cmd_fuzz() {
    ensure_cargo_fuzz
    local targets=("${FUZZ_TARGETS[@]}") seconds=600 work=/var/tmp/mxnode-fuzz target
    if [ -n "${1:-}" ]; then targets=("$1"); fi
    if [ -n "${2:-}" ]; then seconds=$2; fi
    mkdir -p "$work"
    for target in "${targets[@]}"; do
        log "fuzzing $target for $seconds s (corpus: $work/corpus/$target)"
        run_fuzz_target "$target" "$seconds" "$work" >"$work/$target.log" 2>&1 || {
            tail -n 80 "$work/$target.log" >&2
            exit 1
        }
        log "fuzz $target: $(fuzz_summary "$work/$target.log")"
    done
}

cmd_test() {
    log "requirements on this machine before installing (./build.sh doctor)"
    cmd_doctor >&2
    install_packages test
    ensure_rust_tools
    ensure_s3_server
    ensure_schemathesis
    ensure_dkimpy
    ensure_playwright
    log "cargo fmt --check"
    cargo fmt --all -- --check
    log "cargo clippy"
    cargo clippy --workspace --all-targets -- -D warnings
    audit_dependencies
    log "cargo build -p mxnode"
    cargo build -p mxnode
    fuzz_smoke
    # The end-to-end tests start this binary (see tests/src/node.rs).
    export MXNODE_BIN="$CARGO_TARGET_DIR/debug/mxnode"
    log "cargo nextest run"
    # Last, and exec'd: the output ends with nextest's summary.
    exec cargo nextest run --workspace --no-fail-fast --profile ci
}

case "${1:-}" in
    run)
        shift
        install_packages run
        ensure_rust_tools run
        exec cargo run -p mxnode --release -- dev "$@"
        ;;
    doctor)
        cmd_doctor
        ;;
    test)
        cmd_test
        ;;
    image)
        shift
        cmd_image "$@"
        # Exit here, inside the parsed case: bash reads a script as it runs, and an edit to
        # this file during a long image build must not be read half-way after it.
        exit 0
        ;;
    vm)
        shift
        cmd_image
        exec image/vm.sh "$IMAGE_OUT" "$@"
        ;;
    fuzz)
        shift
        cmd_fuzz "$@"
        ;;
    bench)
        shift
        cmd_bench "$@"
        # As for image: the sweep takes minutes, and bash must not read an edited script on.
        exit 0
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        exit 64
        ;;
esac
