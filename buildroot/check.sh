#!/usr/bin/env bash
# Check this BR2_EXTERNAL tree with Buildroot's own tools, offline.
#   buildroot/check.sh BUILDROOT_DIR
# BUILDROOT_DIR is a Buildroot source tree outside this repository (tested: 2026.02.3).
#  1. utils/check-package on every file of the tree.
#  2. Each configs/*_defconfig is loaded with the external tree (make O=tmp BR2_EXTERNAL=...):
#     every line of it must survive into .config (an option whose dependencies are unmet is
#     dropped silently by Kconfig), the paths it names must exist, and savedefconfig must give
#     the file back unchanged.
#  3. board/brig/post-build.sh runs against a staged root filesystem (the appliance and the
#     host's BusyBox applets) with a host build of brig: it must pass, link /sbin/init, and fail
#     for a broken service file and for a service whose program is missing.
# Not covered: downloads (Buildroot, crates, kernel), the toolchain, compiling brig with
# Buildroot's cargo infrastructure, and booting the image; those need the network and hours.
# The example appliance is ../config; BRIG_APPLIANCE=DIR points elsewhere.
set -euo pipefail

TESTED_RELEASE=2026.02.3

if (($# != 1)); then
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
br=$(cd "$1" && pwd)
ext=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$ext")
appliance=${BRIG_APPLIANCE:-$repo/config}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

[[ -f $br/Makefile && -x $br/utils/check-package ]] || fail "$br is not a Buildroot tree"
[[ -f $appliance/etc/brig/system.toml ]] ||
    fail "$appliance has no etc/brig/system.toml (set BRIG_APPLIANCE=DIR)"
version=$(make -s --no-print-directory -C "$br" print-version)
echo "Buildroot $version at $br (tested release: $TESTED_RELEASE)"
[[ $version == "$TESTED_RELEASE" ]] ||
    echo "warning: not the tested release; results may differ" >&2

# check-package needs python3 with the magic and flake8 modules (Debian: python3-magic, flake8);
# a pyenv or venv python3 first in PATH often lacks them, so try Debian's too.
python=
for candidate in python3 /usr/bin/python3; do
    if "$candidate" -c 'import magic, flake8' 2>/dev/null; then
        python=$candidate
        break
    fi
done
[[ -n $python ]] ||
    fail "no python3 with the magic and flake8 modules (apt-get install python3-magic flake8)"
command -v shellcheck >/dev/null ||
    fail "shellcheck missing: check-package runs it on post-build.sh"

echo "== 1. check-package"
cd "$ext"
mapfile -t files < <(find . -type f ! -name check.sh ! -name '*.txt' | sed 's|^\./||' | sort)
# ForceCheckHash is left out on purpose: the brig package is a git revision of this very
# repository with vendored crates, so a hash file would have to change with every commit.
out=$("$python" "$br/utils/check-package" -b --exclude ForceCheckHash "${files[@]}" 2>&1)
echo "$out"
grep -q '^0 warnings generated$' <<<"$out" || fail "check-package warnings"

echo "== 2. defconfigs"
for defconfig in "$ext"/configs/*_defconfig; do
    name=$(basename "$defconfig")
    out_dir=$work/$name
    make -s --no-print-directory -C "$br" O="$out_dir" BR2_EXTERNAL="$ext" "$name" \
        >"$work/log" 2>&1 ||
        fail "$name did not load: $(cat "$work/log")"
    while IFS= read -r line; do
        grep -qxF -- "$line" "$out_dir/.config" ||
            fail "$name: '$line' is not in .config (unmet dependency?)"
    done <"$defconfig"
    for key in BR2_ROOTFS_OVERLAY BR2_ROOTFS_POST_BUILD_SCRIPT \
        BR2_PACKAGE_BUSYBOX_CONFIG_FRAGMENT_FILES; do
        value=$(sed -n "s/^$key=\"\\(.*\\)\"$/\\1/p" "$out_dir/.config")
        path=${value//\$(BR2_EXTERNAL_BRIG_PATH)/$ext}
        [[ -e $path ]] || {
            # The overlay is the appliance; BRIG_APPLIANCE stands in while config/ is elsewhere.
            [[ $key == BR2_ROOTFS_OVERLAY && -n ${BRIG_APPLIANCE:-} ]] ||
                fail "$name: $key=$value: $path does not exist"
        }
    done
    grep -qx 'BR2_INIT_NONE=y' "$out_dir/.config" || fail "$name: init is not BR2_INIT_NONE"
    make -s --no-print-directory -C "$br" O="$out_dir" BR2_DEFCONFIG="$work/$name.saved" \
        savedefconfig >"$work/log" 2>&1 || fail "$name: savedefconfig failed: $(cat "$work/log")"
    diff -u "$defconfig" "$work/$name.saved" || fail "$name: savedefconfig round-trip differs"
    echo "ok $name"
done

echo "== 3. post-build script"
cargo build -q --release --manifest-path "$repo/Cargo.toml"
host_dir=$work/host
mkdir -p "$host_dir/bin"
ln -s "$repo/target/release/brig" "$host_dir/bin/brig"
command -v busybox >/dev/null || fail "busybox missing on the host (apt-get install busybox-static)"

# A root filesystem as Buildroot would leave it: BusyBox with relative applet links, brig in
# /usr/bin, the appliance overlay on top.
stage() {
    local root=$1 applet dots
    rm -rf "$root"
    mkdir -p "$root/bin" "$root/usr/bin"
    cp "$(command -v busybox)" "$root/bin/busybox"
    for applet in $(busybox --list-full); do
        [[ $applet == bin/busybox || -e $root/$applet ]] && continue
        mkdir -p "$root/$(dirname "$applet")"
        dots=$(dirname "$applet" | sed 's|[^/]*|..|g')
        ln -s "$dots/bin/busybox" "$root/$applet"
    done
    cp "$repo/target/release/brig" "$root/usr/bin/brig"
    cp -a "$appliance/." "$root/"
}

post_build() {
    HOST_DIR=$host_dir "$ext/board/brig/post-build.sh" "$1" >"$work/log" 2>&1
}

stage "$work/root"
post_build "$work/root" || fail "post-build rejected the example appliance: $(cat "$work/log")"
[[ $(readlink "$work/root/sbin/init") == ../usr/bin/brig ]] ||
    fail "/sbin/init is not linked to brig"
echo "ok example appliance passes, /sbin/init -> ../usr/bin/brig"

stage "$work/root"
printf 'exec = ["/usr/sbin/httpd"]\nrestrat = "always"\n' >"$work/root/etc/brig/services/typo.toml"
if post_build "$work/root"; then fail "post-build accepted a service file with an unknown key"; fi
grep -q 'typo.toml:2:' "$work/log" ||
    fail "no file:line error for the unknown key: $(cat "$work/log")"
echo "ok unknown key fails the build: $(grep -m1 'typo.toml' "$work/log")"

stage "$work/root"
printf 'exec = ["/usr/sbin/dnsd"]\n' >"$work/root/etc/brig/services/dns.toml"
rm -f "$work/root/usr/sbin/dnsd"
if post_build "$work/root"; then fail "post-build accepted a service whose program is missing"; fi
echo "ok missing program fails the build: $(grep -m1 'dnsd' "$work/log")"

echo "all checks passed"
