#!/usr/bin/env bash
# Make this machine able to run every test: Debian packages, Rust targets and components, and the
# kernel/BusyBox cache. Idempotent; anything that cannot be installed fails the run (never a skip).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
PACKAGES=(qemu-system-x86 qemu-system-arm qemu-system-mips busybox-static cpio kmod gzip findutils
    python3 file squashfs-tools e2fsprogs iproute2 util-linux binutils)
TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
            echo "$pkg"
    done
}

need_update=false
# The aarch64, armv7 and mipsel guests need Debian's kernels and BusyBox of those ports (fetched
# with apt-get download), and the 32-bit builds Debian's musl.
for foreign in arm64 armhf mipsel; do
    if ! dpkg --print-foreign-architectures | grep -qx "$foreign"; then
        dpkg --add-architecture "$foreign"
        need_update=true
    fi
done

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
