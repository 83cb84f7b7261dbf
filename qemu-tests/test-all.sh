#!/usr/bin/env bash
# Run every test brig has: setup, formatting, lints, unit and namespace tests, release builds for
# each target (with their size), then the QEMU boot scenarios on every architecture.
#
# A failing check (fmt, clippy, tests, scenarios) does not stop the later ones, so one run shows
# every problem; the script still exits non-zero. Setup and the release builds do stop it: without
# them the later steps would test nothing, or a stale binary.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
ROUTER_TARGETS=(armv7-unknown-linux-musleabihf mipsel-unknown-linux-musl)
failed=()

step() {
    printf '\n=== %s\n' "$*"
}

# check NAME CMD...: run a check, remember it if it fails, go on.
check() {
    local name=$1
    shift
    step "$name"
    if ! "$@"; then
        failed+=("$name")
        printf '=== FAILED: %s\n' "$name"
    fi
}

step "setup: packages, Rust targets, kernel cache"
qemu-tests/setup.sh

check "cargo fmt --check" cargo fmt --check
check "cargo clippy --all-targets -- -D warnings" cargo clippy --all-targets -- -D warnings
check "cargo test (unit and privileged namespace tests)" cargo test

step "release builds (stable: x86_64, aarch64; nightly build-std: armv7, mipsel)"
# cross-build.sh prints each stripped size with the profile that made it.
for target in "${TARGETS[@]}" "${ROUTER_TARGETS[@]}"; do
    scripts/cross-build.sh "$target"
done
# The test build with `brig fault ...` for the watchdog and fatal-error scenarios.
for target in "${TARGETS[@]}"; do
    cargo build --release --features fault-injection --target-dir target/fault --target "$target"
done

check "QEMU boot scenarios (x86_64, aarch64, armv7, mipsel; two guests at a time)" \
    python3 qemu-tests/run.py test

# Not a test: the benchmark once in its quick mode (N=10, one boot, brig and BusyBox init, about a
# minute), so that the harness cannot rot. It fails only when a guest does not complete its probe.
check "benchmark harness, quick mode" python3 qemu-tests/bench.py --quick

if ((${#failed[@]})); then
    printf '\n=== %d step(s) failed:\n' "${#failed[@]}"
    printf '  %s\n' "${failed[@]}"
    exit 1
fi
printf '\n=== all steps passed\n'
