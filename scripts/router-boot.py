#!/usr/bin/env python3
"""Boot the example appliance on a 32-bit router architecture in QEMU and check it end to end.

  scripts/router-boot.py ARCH [--config DIR] [--mem MIB]     ARCH: armv7, mipsel or aarch64

Standalone on purpose: the QEMU harness (qemu-tests/) covers x86_64 and aarch64; this proves the
32-bit targets until they are added there (the README lists what that needs). It expects brig
already built by scripts/cross-build.sh for the architecture's target.

The guest is an initramfs: brig as /init (and /sbin/init), Debian's static BusyBox with its
applet links, the kernel modules system.toml asks for, the appliance directory (default config/)
on top, and one extra service, `test-poweroff`, that starts after every appliance service, prints
PID 1's resident memory and the free memory, and runs BusyBox `poweroff`. The check passes when,
in this order, brig starts as PID 1, every appliance service is running or done, the status page
answers through a forwarded port, the flaky service is restarted, `poweroff` is requested, and
the kernel powers down, all within the RAM given (64 MiB by default).

Debian packages are fetched with `apt-get download` into $BRIG_CACHE (default
/var/cache/brig-qemu, shared with the harness) and unpacked there once.
"""

import argparse
import dataclasses
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("BRIG_CACHE", "/var/cache/brig-qemu")


@dataclasses.dataclass(frozen=True)
class Arch:
    triple: str
    deb_arch: str
    kernel_meta: str  # resolved through apt-cache to the current ABI...
    kernel_pinned: str  # ...or this when apt's lists cannot answer
    console: str
    qemu: tuple


ARCHES = {
    # highmem=off: with the default high PCIe ECAM window the 32-bit armmp kernel cannot claim
    # the PCI host bridge ("can't claim ECAM area ... address conflict"), so no NIC appears.
    "armv7": Arch(
        "armv7-unknown-linux-musleabihf", "armhf",
        "linux-image-armmp:armhf", "linux-image-6.1.0-57-armmp:armhf", "ttyAMA0",
        ("qemu-system-arm", "-M", "virt,highmem=off", "-cpu", "cortex-a15", "-accel", "tcg"),
    ),
    # The 64-bit size build (scripts/cross-build.sh aarch64-unknown-linux-musl --build-std) on the
    # same small machine; the harness in qemu-tests/ covers the stable aarch64 build.
    "aarch64": Arch(
        "aarch64-unknown-linux-musl", "arm64",
        "linux-image-arm64:arm64", "linux-image-6.1.0-57-arm64:arm64", "ttyAMA0",
        ("qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-accel", "tcg"),
    ),
    "mipsel": Arch(
        "mipsel-unknown-linux-musl", "mipsel",
        "linux-image-4kc-malta:mipsel", "linux-image-6.1.0-50-4kc-malta:mipsel", "ttyS0",
        ("qemu-system-mipsel", "-M", "malta", "-cpu", "24Kc", "-accel", "tcg"),
    ),
}

FATAL = re.compile(r"Kernel panic|Attempted to kill init|Unable to handle kernel|\bOops\b")

TRIGGER = """#!/bin/sh
# Test only: let the appliance run a while (the flaky service fails and is restarted), report
# memory, then power off through BusyBox like an operator would.
sleep 12
/init status
echo "memory: pid1 $(awk '/^Rss:/ {print $2}' /proc/1/smaps_rollup) kB rss," \
     "$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) kB available of" \
     "$(awk '/^MemTotal:/ {print $2}' /proc/meminfo) kB"
poweroff
"""


class Failed(Exception):
    pass


def run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res.stdout


# --- Debian packages ------------------------------------------------------------------------------

def fetch_deb(package):
    name, _, deb_arch = package.partition(":")
    os.makedirs(CACHE, exist_ok=True)
    pattern = os.path.join(CACHE, f"{name}_*_{deb_arch}.deb")
    if not glob.glob(pattern):
        run(["apt-get", "download", "-q", package], cwd=CACHE)
    found = sorted(glob.glob(pattern))
    if not found:
        raise RuntimeError(f"apt-get download {package} left no {pattern}")
    return found[-1]


def unpack_deb(deb):
    dest = os.path.join(CACHE, "unpacked", os.path.basename(deb)[: -len(".deb")])
    if not os.path.exists(dest + ".done"):
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        run(["dpkg-deb", "-x", deb, dest])
        open(dest + ".done", "w").close()
    return dest


def kernel(arch):
    """(version, image path, unpacked tree with a modules.dep)."""
    try:
        depends = run(["apt-cache", "depends", arch.kernel_meta])
        m = re.search(r"Depends: (linux-image-\d\S*)", depends)
        package = m.group(1) if m else arch.kernel_pinned
    except RuntimeError:
        package = arch.kernel_pinned
    tree = unpack_deb(fetch_deb(package))
    # armmp ships a zImage as vmlinuz-*, 4kc-malta an ELF vmlinux-*: QEMU loads either.
    (image,) = glob.glob(os.path.join(tree, "boot", "vmlinu[xz]-*"))
    version = re.sub(r"^vmlinu[xz]-", "", os.path.basename(image))
    if not os.path.exists(os.path.join(tree, "lib", "modules", version, "modules.dep")):
        run(["depmod", "-b", tree, version])
    return version, image, tree


# --- initramfs ------------------------------------------------------------------------------------

def stage_modules(root, version, tree, names):
    src = os.path.join(tree, "lib", "modules", version)
    deps = {}
    with open(os.path.join(src, "modules.dep")) as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
    by_name = {os.path.basename(p)[: -len(".ko")].replace("-", "_"): p for p in deps}
    wanted = set()
    for name in names:
        path = by_name.get(name.replace("-", "_"))
        if path is not None:  # None: built into this kernel
            wanted.update([path, *deps[path]])
    dst = os.path.join(root, "lib", "modules", version)
    for rel in wanted:
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy(os.path.join(src, rel), os.path.join(dst, rel))
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if os.path.exists(os.path.join(src, meta)):
            shutil.copy(os.path.join(src, meta), dst)
    run(["depmod", "-b", root, version])
    return sorted(os.path.basename(p) for p in wanted)


def build_initramfs(arch, config, brig, work):
    version, image, tree = kernel(arch)
    busybox = os.path.join(unpack_deb(fetch_deb(f"busybox-static:{arch.deb_arch}")), "bin",
                           "busybox")
    root = os.path.join(work, "root")
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "var/log",
              "root", "mnt", "etc/brig/services"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.mknod(os.path.join(root, "dev", "console"), 0o20600, os.makedev(5, 1))
    shutil.copy(brig, os.path.join(root, "init"))
    os.symlink("/init", os.path.join(root, "sbin", "init"))
    shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
    # The foreign BusyBox cannot run here; the host's is built by Debian from the same config.
    for applet in run(["busybox", "--list-full"]).split():
        if os.path.basename(applet) in ("init", "linuxrc"):
            continue  # brig is init
        link = os.path.join(root, applet)
        if not os.path.lexists(link):
            os.symlink("/bin/busybox", link)
    shutil.copytree(config, root, symlinks=True, dirs_exist_ok=True)

    services = sorted(os.path.basename(p)[: -len(".toml")]
                      for p in glob.glob(os.path.join(root, "etc/brig/services/*.toml")))
    with open(os.path.join(root, "etc/brig/system.toml"), "rb") as f:
        modules = tomllib.load(f).get("modules", [])
    staged = stage_modules(root, version, tree, modules)
    with open(os.path.join(root, "usr/libexec/test-poweroff"), "w") as f:
        f.write(TRIGGER)
    os.chmod(os.path.join(root, "usr/libexec/test-poweroff"), 0o755)
    with open(os.path.join(root, "etc/brig/services/test-poweroff.toml"), "w") as f:
        f.write('exec = ["/usr/libexec/test-poweroff"]\nrestart = "never"\n'
                f"after = [{', '.join(repr(s).replace(chr(39), chr(34)) for s in services)}]\n")

    initrd = os.path.join(work, "initrd.cpio.gz")
    with open(initrd, "wb") as out:
        find = subprocess.Popen(["find", ".", "-print0"], cwd=root, stdout=subprocess.PIPE)
        cpio = subprocess.Popen(["cpio", "--null", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
                                cwd=root, stdin=find.stdout, stdout=subprocess.PIPE)
        gz = subprocess.Popen(["gzip", "-9"], stdin=cpio.stdout, stdout=out)
        find.stdout.close()
        cpio.stdout.close()
        if gz.wait() or cpio.wait() or find.wait():
            raise RuntimeError(f"packing {root} failed")
    print(f"kernel {version}, modules {staged}, services {services} + test-poweroff, "
          f"initramfs {os.path.getsize(initrd) // 1024} KiB", flush=True)
    return image, initrd, services


# --- the console ----------------------------------------------------------------------------------

class Console:
    """QEMU's serial console read into a growing buffer; expect() moves a cursor past each
    match, so consecutive expect() calls check order."""

    def __init__(self, cmd, log_path):
        self.text = ""
        self.cursor = 0
        self.cond = threading.Condition()
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            text = chunk.decode("utf-8", "replace").replace("\r", "")
            with self.cond:
                self.text += text
                self.log.write(text)
                self.log.flush()
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def expect(self, pattern, timeout):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                fatal = FATAL.search(self.text)
                if fatal:
                    raise Failed(f"kernel reported {fatal.group(0)!r}")
                m = rx.search(self.text, self.cursor)
                if m:
                    self.cursor = m.end()
                    return m
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    why = "QEMU exited" if self.proc.poll() is not None else f"{timeout} s passed"
                    raise Failed(f"{why} before /{pattern}/ appeared")
                self.cond.wait(0.5)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def brig(message):
    """A brig log line, via /dev/kmsg (`brig: MSG`) or syslogd (`brig[1]: MSG`)."""
    return r"\bbrig(?:\[\d+\])?: " + message


def http_get(port, path):
    """GET through the forwarded port. "running" means httpd was exec'd, not that it listens
    yet, so connection errors are retried for a while."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def check(con, port, services, started):
    con.expect(brig(r"brig 0\.1\.0 starting as PID 1"), 60)
    booted = time.monotonic() - started
    m = con.expect(brig(r"system ready: (\d+) running, (\d+) done, (\d+) not started"), 60)
    ready = time.monotonic() - started
    if m.group(3) != "0":
        raise Failed(f"not every service started: {m.group(0)}")
    # Every service, the trigger included, must be running or done. The counts are the proof:
    # the kernel's copy of brig's early lines can miss some on the console when a console
    # service (the shell) opens the serial port at the same moment.
    running, done = int(m.group(1)), int(m.group(2))
    if running + done != len(services) + 1:
        raise Failed(f"{m.group(0)!r} for {len(services)} services and the trigger")

    status, page = http_get(port, "/")
    if status != 200 or "brig appliance" not in page:
        raise Failed(f"front page answered {status}: {page[:200]!r}")
    status, cgi = http_get(port, "/cgi-bin/status")
    if status != 200 or "hostname: gateway" not in cgi:
        raise Failed(f"status CGI answered {status}: {cgi[:200]!r}")

    con.expect(brig(r"service flaky: restarting in 500 ms \(failure 1 of 5\)"), 30)
    table = con.expect(r"test-poweroff\[\d+\]: ((?:.|\n)*?)\n[^\n]*memory:", 60)
    con.cursor = table.start()
    # backoff: the flaky service between its deliberate failures, still supervised.
    for name in services:
        if not re.search(rf"test-poweroff\[\d+\]: {re.escape(name)}\s+(running|done|backoff)",
                         table.group(0)):
            raise Failed(f"brig status shows {name} neither running, done nor restarting:\n"
                         f"{table.group(0)}")
    mem = con.expect(r"memory: pid1 (\d+) kB rss, (\d+) kB available of (\d+) kB", 60)
    con.expect(brig(r"shutdown: poweroff requested \(SIGUSR2\)"), 30)
    asked = time.monotonic()
    con.expect(r"reboot: Power down", 60)
    try:
        code = con.proc.wait(20)
    except subprocess.TimeoutExpired:
        raise Failed("QEMU still running 20 s after the power down") from None
    return {
        "brig started after": f"{booted:.1f} s",
        "system ready after": f"{ready:.1f} s ({m.group(1)} running, {m.group(2)} done)",
        "services": ", ".join(services),
        "memory": f"PID 1 Rss {mem.group(1)} kB, MemAvailable {mem.group(2)} of "
                  f"{mem.group(3)} kB",
        "poweroff took": f"{time.monotonic() - asked:.1f} s, QEMU exit status {code}",
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arch", choices=sorted(ARCHES))
    ap.add_argument("--config", default=os.path.join(REPO, "config"),
                    help="appliance overlay (default: config/ of this tree)")
    ap.add_argument("--mem", type=int, default=64, help="guest RAM in MiB (default 64)")
    args = ap.parse_args()
    arch = ARCHES[args.arch]

    if not os.path.isfile(os.path.join(args.config, "etc", "brig", "system.toml")):
        sys.exit(f"{args.config}: no etc/brig/system.toml; pass the appliance with --config")
    binary = os.path.join(REPO, "target", arch.triple, "release", "brig")
    if not os.path.isfile(binary):
        sys.exit(f"{binary} missing: run scripts/cross-build.sh {arch.triple} first")
    if shutil.which(arch.qemu[0]) is None:
        sys.exit(f"{arch.qemu[0]} missing: apt-get install -y --no-install-recommends "
                 + ("qemu-system-mips" if args.arch == "mipsel" else "qemu-system-arm"))

    work = os.path.join(REPO, "target", "router-boot", args.arch)
    os.makedirs(work, exist_ok=True)
    image, initrd, services = build_initramfs(arch, args.config, binary, work)
    port = free_port()
    cmd = [*arch.qemu, "-m", str(args.mem), "-nographic", "-no-reboot", "-kernel", image,
           "-initrd", initrd, "-append", f"console={arch.console} panic=-1",
           "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:80",
           "-device", "virtio-net-pci,netdev=n0"]
    print(" ".join(cmd), flush=True)
    log_path = os.path.join(work, "console.log")
    con = Console(cmd, log_path)
    try:
        results = check(con, port, services, time.monotonic())
    except (Failed, OSError) as err:
        con.close()
        print(f"----- console ({log_path}):\n{con.text}\n-----")
        sys.exit(f"FAIL {args.arch} ({args.mem} MiB): {err}")
    con.close()
    print(f"PASS {args.arch} in {args.mem} MiB ({log_path})")
    for key, value in results.items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
