#!/usr/bin/env bash
# Buildroot post-build script for images that boot brig as init.
#   BR2_ROOTFS_POST_BUILD_SCRIPT="$(BR2_EXTERNAL_BRIG_PATH)/board/brig/post-build.sh"
# Buildroot runs it with the target directory as $1 and HOST_DIR in the environment.
#  1. /sbin/init becomes a link to brig (BR2_INIT_NONE installs no init of its own).
#  2. "brig check --root" validates /etc/brig of the image with the host build of brig: a
#     broken service file or an exec missing from the image fails the firmware build.
set -euo pipefail

target=${1:?usage: $0 TARGET_DIR}
host_brig=${HOST_DIR:?HOST_DIR not set: run from Buildroot}/bin/brig

if [[ ! -x $target/usr/bin/brig ]]; then
    echo "post-build: $target/usr/bin/brig missing: enable BR2_PACKAGE_BRIG" >&2
    exit 1
fi
if [[ ! -x $host_brig ]]; then
    echo "post-build: $host_brig missing: host-brig was not built" >&2
    exit 1
fi

# Anything but our link at /sbin/init (BusyBox's applet, another init) would be a
# misconfiguration that boots the wrong init: replace it, and say so.
current=$(readlink "$target/sbin/init" || true)
if [[ -e $target/sbin/init || -L $target/sbin/init ]] && [[ $current != ../usr/bin/brig ]]; then
    echo "post-build: replacing /sbin/init (was ${current:-a regular file}) with brig" >&2
fi
mkdir -p "$target/sbin"
ln -sfn ../usr/bin/brig "$target/sbin/init"

"$host_brig" check --root "$target"
