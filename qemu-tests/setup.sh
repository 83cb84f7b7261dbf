#!/usr/bin/env bash
# Make this machine able to run every test: Debian packages, Rust targets and components, and the
# kernel/BusyBox cache. Idempotent; anything that cannot be installed fails the run (never a skip).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
PACKAGES=(qemu-system-x86 qemu-system-arm busybox-static cpio kmod gzip findutils python3)
TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
            echo "$pkg"
    done
}

# The aarch64 guest needs Debian's arm64 kernel and BusyBox, fetched with apt-get download.
need_update=false
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    need_update=true
fi

mapfile -t missing < <(missing_packages)
if ((${#missing[@]})); then
    need_update=true
fi
if $need_update; then
    apt-get update -q
fi
if ((${#missing[@]})); then
    # --no-install-recommends: the recommended qemu-utils conflicts with the one on these machines.
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

rustup target add "${TARGETS[@]}"
rustup component add clippy rustfmt

if ! python3 qemu-tests/run.py fetch; then
    # The meta packages resolve only with fresh lists: refresh once and retry.
    apt-get update -q
    python3 qemu-tests/run.py fetch
fi
