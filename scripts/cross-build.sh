#!/usr/bin/env bash
# Build a static, stripped brig for a router target and print its size.
#   scripts/cross-build.sh TARGET [--build-std]
# TARGET is one of:
#   x86_64-unknown-linux-musl aarch64-unknown-linux-musl    stable, rustup's own std;
#                                  --build-std: nightly, std rebuilt, immediate-abort panics
#   armv7-unknown-linux-musleabihf mipsel-unknown-linux-musl always nightly and -Z build-std
#
# rustup has no prebuilt std for the two 32-bit targets here, so they are built with nightly's
# build-std against Debian's musl (musl-dev:armhf / musl-dev:mipsel, fetched with apt-get download
# and unpacked into $BRIG_CROSS_CACHE, default /var/cache/brig-cross, outside the source tree) and
# linked with rust-lld: no cross gcc is needed. The binary ends up in
# target/TARGET/release/brig, where the x86_64/aarch64 builds put theirs too.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${BRIG_CROSS_CACHE:-/var/cache/brig-cross}
export DEBIAN_FRONTEND=noninteractive

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

(($# == 1 || $# == 2)) || usage
target=$1
build_std=false
if (($# == 2)); then
    [[ $2 == --build-std ]] || usage
    build_std=true
fi
nightly=${BRIG_NIGHTLY:-nightly}

# Both flags make every panic a trap instruction: no message, no unwinding code, no formatting
# machinery (about 265 KiB of the aarch64 binary). brig's code denies unwrap/expect/panic, and its
# crash handler turns the trap into the configured fatal-error policy (src/boot/fatal.rs); what is
# lost is the panic's message on the console.
# With nothing left that unwinds, the unwind tables rustc still emits by default (.eh_frame and
# its index, 135 KiB of the aarch64 binary) are dead weight: force-unwind-tables=no drops them.
immediate_abort=(-Z unstable-options -C panic=immediate-abort -C force-unwind-tables=no)
# optimize_for_size: std picks its smaller implementations (sorting, formatting, ...).
build_std_args=(-Z "build-std=std,panic_abort" -Z "build-std-features=optimize_for_size")

case $target in
    x86_64-unknown-linux-musl | aarch64-unknown-linux-musl)
        if $build_std; then
            # rustup's musl target supplies the self-contained crt objects and libc.a.
            rustup toolchain install "$nightly" --profile minimal
            rustup component add rust-src --toolchain "$nightly"
            rustup target add "$target" --toolchain "$nightly"
            env_name=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$target")_RUSTFLAGS
            env "$env_name=${immediate_abort[*]}" cargo "+$nightly" build --release \
                --target "$target" "${build_std_args[@]}"
        else
            rustup target add "$target"
            cargo build --release --target "$target"
        fi
        ;;
    armv7-unknown-linux-musleabihf)
        deb_arch=armhf
        multiarch=arm-linux-musleabihf
        # The Rust target links -lunwind; nothing in it is used (see stub_archives below).
        stubs=(unwind)
        # The armv7 target generates 32-bit ARM instructions; Thumb-2 (what Debian's armhf
        # userland and this musl use) is a third smaller for brig: 694012 -> 477700 bytes.
        extra_flags=(-C target-feature=+thumb-mode)
        drop_sections=()
        ;;
    mipsel-unknown-linux-musl)
        deb_arch=mipsel
        multiarch=mipsel-linux-musl
        # The MIPS musl target spec also asks for -lgcc_s.
        stubs=(unwind gcc_s)
        # Rust's mipsel musl target is soft-float, Debian's musl is built hard-float with -mfpxx:
        # the object files must agree or rust-lld refuses to link them.
        # Static-PIE (the target's default) dies with SIGSEGV in musl's early self-relocation on
        # MIPS; a position-dependent static binary starts fine.
        extra_flags=(-C "target-feature=-soft-float,+fpxx" -C relocation-model=static)
        # LLVM writes a .pdr section (MIPS procedure descriptors, 32 bytes per function) that no
        # loader reads: not allocated, and not a debug section, so strip=true keeps it: 93 KiB.
        drop_sections=(.pdr)
        ;;
    *)
        echo "unknown target: $target" >&2
        usage
        ;;
esac

# Debian's musl for the target architecture: libc.a and the crt objects.
musl_sysroot() {
    local deb dest=$CACHE/$deb_arch/sysroot
    if [[ -e $dest.done ]]; then
        echo "$dest/usr/lib/$multiarch"
        return
    fi
    if ! dpkg --print-foreign-architectures | grep -qx "$deb_arch"; then
        dpkg --add-architecture "$deb_arch"
        apt-get update -q >&2
    fi
    mkdir -p "$CACHE/$deb_arch"
    if ! compgen -G "$CACHE/$deb_arch/musl-dev_*_$deb_arch.deb" >/dev/null; then
        # apt-get download writes to the current directory.
        (cd "$CACHE/$deb_arch" && apt-get download -q "musl-dev:$deb_arch") >&2
    fi
    deb=$(compgen -G "$CACHE/$deb_arch/musl-dev_*_$deb_arch.deb" | sort | tail -n 1)
    rm -rf "$dest"
    dpkg-deb -x "$deb" "$dest"
    for f in libc.a crt1.o crti.o crtn.o; do
        [[ -f $dest/usr/lib/$multiarch/$f ]] || {
            echo "$deb has no usr/lib/$multiarch/$f" >&2
            exit 1
        }
    done
    touch "$dest.done"
    echo "$dest/usr/lib/$multiarch"
}

# Empty archives named after the unwinder libraries the target spec links. They are only
# correct together with -C panic=immediate-abort: then no code in std or brig refers to an
# _Unwind_* symbol, so the linker needs the -l names to resolve and takes nothing from them. If a
# future change reintroduces a reference, the link fails with an undefined symbol; it cannot
# silently produce a broken binary.
stub_archives() {
    local dir=$CACHE/stubs/$target name
    mkdir -p "$dir"
    for name in "${stubs[@]}"; do
        printf '!<arch>\n' >"$dir/lib$name.a"
    done
    echo "$dir"
}

if [[ -n ${deb_arch:-} ]]; then
    rustup toolchain install "$nightly" --profile minimal
    rustup component add rust-src --toolchain "$nightly"
    libdir=$(musl_sysroot)
    stubdir=$(stub_archives)

    # crt1.o and crti.o must come before the program's objects and crtn.o after them (they wrap
    # _init/_fini); musl is linked from libdir, never from the host.
    flags=(
        -C linker=rust-lld -C link-self-contained=no
        -L "native=$libdir" -L "native=$stubdir"
        -Z "pre-link-arg=$libdir/crt1.o" -Z "pre-link-arg=$libdir/crti.o"
        -C "link-arg=$libdir/crtn.o"
        "${immediate_abort[@]}"
        "${extra_flags[@]}"
    )
    env_name=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$target")_RUSTFLAGS
    env "$env_name=${flags[*]}" cargo "+$nightly" build --release --target "$target" \
        "${build_std_args[@]}"
    build_std=true
    if ((${#drop_sections[@]})); then
        # rustc's own copy of llvm-objcopy, like rust-lld: no cross binutils needed.
        host=$(rustc "+$nightly" -vV | sed -n 's/^host: //p')
        objcopy=$(rustc "+$nightly" --print sysroot)/lib/rustlib/$host/bin/rust-objcopy
        "$objcopy" "${drop_sections[@]/#/--remove-section=}" "target/$target/release/brig"
    fi
fi

bin=target/$target/release/brig
file "$bin"
size=$(stat -c %s "$bin")
how="stable, rustup's std, panic=abort"
if $build_std; then
    how="$(rustc "+$nightly" --version | cut -d' ' -f2-), build-std, panic=immediate-abort"
fi
printf '%s: %d bytes (%d KiB); profile release (opt-level=z, lto, codegen-units=1, strip), %s\n' \
    "$target" "$size" $(((size + 1023) / 1024)) "$how"
