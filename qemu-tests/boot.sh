#!/usr/bin/env bash
# Boot the example appliance (config/) with the serial console on this terminal and the status
# page on http://127.0.0.1:8080/ (PORT=... to change). Quit QEMU with Ctrl-A X.
#   qemu-tests/boot.sh [x86_64|aarch64]
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-x86_64}
case $arch in
    x86_64 | aarch64) ;;
    *)
        echo "usage: $0 [x86_64|aarch64]" >&2
        exit 2
        ;;
esac

qemu-tests/setup.sh
cargo build --release --target "$arch-unknown-linux-musl"
exec python3 qemu-tests/run.py boot "$arch" --port "${PORT:-8080}"
