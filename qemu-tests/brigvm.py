"""Boot brig in QEMU: fetch Debian kernels and BusyBox, build an initramfs, drive the console.

The guest is an initramfs only (no disk): brig as /init, a static BusyBox with its applet links,
the kernel modules that system.toml asks for (with depmod's index), and a rootfs overlay: the
example appliance in config/ and/or a scenario's own files. Everything from Debian is fetched with
`apt-get download` into a cache outside the source tree ($BRIG_CACHE, default /var/cache/brig-qemu),
so the boot tests need no network once the cache is warm.

An image is two gzipped newc cpio archives laid end to end: a base per architecture (built once) and
a small overlay per scenario. The kernel unpacks them in order and later files replace earlier ones,
which keeps each scenario's setup to a few milliseconds.
"""

import contextlib
import dataclasses
import fcntl
import glob
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import tomllib
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("BRIG_CACHE", "/var/cache/brig-qemu")
# Another directory lets two harness runs share the tree without rebuilding each other's images.
WORK = os.environ.get("BRIG_QEMU_WORK", os.path.join(REPO, "target", "qemu"))
APPLIANCE = os.path.join(REPO, "config")


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str
    triple: str
    deb_arch: str
    # The meta package tracks Debian's current kernel ABI; the pinned name is the fallback for
    # when apt's lists cannot answer (no `apt-get update` yet, mirror down).
    kernel_meta: str
    kernel_pinned: str
    console: str
    qemu: tuple
    # Waits for markers (and each scenario's hard timeout) are multiplied by this: the 32-bit
    # guests boot and run several times slower under TCG. Checks of timing between two guest
    # events use guest timestamps and are not scaled.
    slowness: float = 1.0
    # (meta, pinned) of a kernel with a driver for QEMU's i6300esb watchdog, where the default
    # kernel lacks one (Debian's x86_64 cloud kernel); None: the default kernel has it.
    watchdog_kernel: tuple = None


ARCHES = {
    "x86_64": Arch(
        "x86_64", "x86_64-unknown-linux-musl", "amd64",
        "linux-image-cloud-amd64", "linux-image-6.1.0-57-cloud-amd64", "ttyS0",
        ("qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "256"),
        watchdog_kernel=("linux-image-amd64", "linux-image-6.1.0-57-amd64"),
    ),
    "aarch64": Arch(
        "aarch64", "aarch64-unknown-linux-musl", "arm64",
        "linux-image-arm64:arm64", "linux-image-6.1.0-57-arm64:arm64", "ttyAMA0",
        ("qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-accel", "tcg", "-m", "256"),
    ),
    # The 32-bit router targets, with the RAM of a small router. Their brig comes from
    # scripts/cross-build.sh (nightly, build-std, Debian's musl). highmem=off: with the default
    # high PCIe ECAM window the armmp kernel cannot claim the PCI host bridge, so no NIC appears.
    "armv7": Arch(
        "armv7", "armv7-unknown-linux-musleabihf", "armhf",
        "linux-image-armmp:armhf", "linux-image-6.1.0-57-armmp:armhf", "ttyAMA0",
        ("qemu-system-arm", "-M", "virt,highmem=off", "-cpu", "cortex-a15", "-accel", "tcg",
         "-m", "64"),
        slowness=3.0,
    ),
    # MIPS32 24Kc little-endian: the class of core many routers run.
    "mipsel": Arch(
        "mipsel", "mipsel-unknown-linux-musl", "mipsel",
        "linux-image-4kc-malta:mipsel", "linux-image-6.1.0-50-4kc-malta:mipsel", "ttyS0",
        ("qemu-system-mipsel", "-M", "malta", "-cpu", "24Kc", "-accel", "tcg", "-m", "64"),
        slowness=3.0,
    ),
}

# Lines that mean the kernel lost PID 1 or crashed: every scenario fails on sight of them.
# Terminal control sequences (SeaBIOS clears the screen): kept out of the logs we print.
ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|[A-Za-z])")

FATAL = re.compile(r"Kernel panic|Attempted to kill init|Unable to handle kernel|\bOops\b")


class ScenarioFailed(Exception):
    pass


def run(cmd, **kw):
    """Run a command, raising with its output when it fails (loud setup, never a silent skip)."""
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res.stdout


# --- Debian packages ------------------------------------------------------------------------------

def kernel_package(meta, pinned):
    """The versioned kernel package the meta package depends on, else the pinned one."""
    try:
        out = run(["apt-cache", "depends", meta])
    except RuntimeError:
        return pinned
    m = re.search(r"Depends: (linux-image-\d\S*)", out)
    return m.group(1) if m else pinned


_cache_mutex = threading.RLock()
_cache_depth = 0


@contextlib.contextmanager
def cache_lock():
    """Holds the cache's lock file: two harness runs (two clones, or a developer run beside CI)
    share the cache, and one must not see the other's half-downloaded .deb or half-unpacked
    tree. Re-entrant within one run (an image build fetches packages while holding it)."""
    global _cache_depth
    with _cache_mutex:
        if _cache_depth:
            _cache_depth += 1
            try:
                yield
            finally:
                _cache_depth -= 1
            return
        os.makedirs(CACHE, exist_ok=True)
        with open(os.path.join(CACHE, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _cache_depth = 1
            try:
                yield
            finally:
                _cache_depth = 0


def fetch_deb(package):
    """Path of the cached .deb of `package` (name or name:arch), downloading it when absent."""
    name, _, deb_arch = package.partition(":")
    pattern = os.path.join(CACHE, f"{name}_*_{deb_arch or '*'}.deb")
    with cache_lock():
        found = sorted(glob.glob(pattern))
        if not found:
            run(["apt-get", "download", package], cwd=CACHE)
            found = sorted(glob.glob(pattern))
    if not found:
        raise RuntimeError(f"apt-get download {package} left no {pattern}")
    return found[-1]


def unpack_deb(deb):
    """Unpack a .deb once into the cache; returns the directory. The tree is unpacked beside
    its final name and renamed into place, so it is either whole or absent."""
    dest = os.path.join(CACHE, "unpacked", os.path.basename(deb)[: -len(".deb")])
    with cache_lock():
        if not os.path.exists(dest + ".done"):
            partial = dest + ".partial"
            for stale in (dest, partial):
                shutil.rmtree(stale, ignore_errors=True)
            os.makedirs(partial)
            run(["dpkg-deb", "-x", deb, partial])
            os.rename(partial, dest)
            open(dest + ".done", "w").close()
    return dest


@dataclasses.dataclass
class Kernel:
    version: str
    vmlinuz: str
    tree: str  # unpacked package root, with lib/modules/<version>/ and a full modules.dep


def fetch_kernel(arch, watchdog=False):
    """The default kernel, or with `watchdog` the one with an i6300esb driver."""
    meta, pinned = (arch.kernel_meta, arch.kernel_pinned)
    if watchdog and arch.watchdog_kernel:
        meta, pinned = arch.watchdog_kernel
    tree = unpack_deb(fetch_deb(kernel_package(meta, pinned)))
    found = glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))
    if len(found) != 1:
        raise RuntimeError(f"{tree}/boot holds {len(found)} vmlinuz files, want 1")
    (vmlinuz,) = found
    version = os.path.basename(vmlinuz)[len("vmlinuz-"):]
    # Debian's package ships no modules.dep; index the whole tree once to resolve dependencies.
    with cache_lock():
        if not os.path.exists(os.path.join(tree, "lib", "modules", version, "modules.dep")):
            run(["depmod", "-b", tree, version])
    return Kernel(version, vmlinuz, tree)


def fetch_busybox(arch):
    return os.path.join(unpack_deb(fetch_deb(f"busybox-static:{arch.deb_arch}")), "bin", "busybox")


def fetch_all(arch):
    """Warm the cache for one architecture (the setup step of test-all.sh)."""
    fetch_kernel(arch)
    fetch_busybox(arch)


# --- initramfs ------------------------------------------------------------------------------------

def module_closure(kernel, names):
    """Module files (relative to lib/modules/VER) for `names` plus everything they depend on.
    A name that is neither a module nor built in is a typo in system.toml: fail the build."""
    moddir = os.path.join(kernel.tree, "lib", "modules", kernel.version)
    deps = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
    with open(os.path.join(moddir, "modules.builtin")) as f:
        builtin = {module_name(line.strip()) for line in f}
    by_name = {module_name(p): p for p in deps}
    wanted = set()
    for name in map(module_name, names):
        if name in by_name:
            wanted.add(by_name[name])
            wanted.update(deps[by_name[name]])
        elif name not in builtin:
            raise RuntimeError(f"module {name}: neither a module nor built into {kernel.version}")
    return sorted(wanted)


def has_module(kernel, name):
    try:
        module_closure(kernel, [name])
        return True
    except RuntimeError:
        return False


def module_name(path):
    """kernel/drivers/net/virtio_net.ko -> virtio_net (modprobe treats - and _ alike)."""
    return os.path.basename(path).removesuffix(".ko").replace("-", "_")


def appliance_modules():
    """The modules the appliance's system.toml names; none when it is missing or broken (brig
    then boots with defaults, which is worth booting to see)."""
    try:
        with open(os.path.join(APPLIANCE, "etc", "brig", "system.toml"), "rb") as f:
            modules = tomllib.load(f).get("modules", [])
    except (OSError, tomllib.TOMLDecodeError):
        return []
    return modules if isinstance(modules, list) else []


def busybox_applets():
    """Applet paths (bin/sh, usr/sbin/httpd, ...), read from the host's BusyBox: the foreign-arch
    binary cannot run here, and Debian builds both from the same config."""
    applets = run(["busybox", "--list-full"]).split()
    # brig is PID 1: BusyBox's own init must not shadow /sbin/init.
    return [a for a in applets if os.path.basename(a) not in ("init", "linuxrc")]


def stage_base(root, arch, kernel, brig, modules=None):
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "etc/brig",
              "var/log", "root", "mnt"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.mknod(os.path.join(root, "dev", "console"), 0o20600, os.makedev(5, 1))
    shutil.copy(brig, os.path.join(root, "init"))
    os.symlink("/init", os.path.join(root, "sbin", "init"))
    # The same binary is the client: `brig status` on the console or in a probe.
    os.symlink("/init", os.path.join(root, "usr", "bin", "brig"))
    shutil.copy(fetch_busybox(arch), os.path.join(root, "bin", "busybox"))
    for applet in busybox_applets():
        link = os.path.join(root, applet)
        if not os.path.lexists(link):
            os.symlink("/bin/busybox", link)
    stage_modules(root, kernel, appliance_modules() if modules is None else modules)


def stage_modules(root, kernel, names):
    src = os.path.join(kernel.tree, "lib", "modules", kernel.version)
    dst = os.path.join(root, "lib", "modules", kernel.version)
    # Also with no module at all (an empty system.toml): depmod wants the directory.
    os.makedirs(dst, exist_ok=True)
    for rel in module_closure(kernel, names):
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy(os.path.join(src, rel), os.path.join(dst, rel))
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if os.path.exists(os.path.join(src, meta)):
            shutil.copy(os.path.join(src, meta), dst)
    run(["depmod", "-b", root, kernel.version])


def write_files(root, files, arch=None):
    """Write {guest path: text} into root; paths under a bin/ or ending in .sh, .cgi are made
    executable unless the text is wrapped in Mode(text, mode). A Tree(build) is a directory that
    build(arch, dest) makes, for content that depends on the architecture (container images)."""
    for path, content in files.items():
        mode = 0o644
        if isinstance(content, Tree):
            content.build(arch, os.path.join(root, path.lstrip("/")))
            continue
        if isinstance(content, Mode):
            content, mode = content.text, content.mode
        elif re.search(r"(/bin/|\.sh$|\.cgi$)", path):
            mode = 0o755
        dest = os.path.join(root, path.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as f:
            f.write(content)
        os.chmod(dest, mode)


@dataclasses.dataclass(frozen=True)
class Mode:
    text: str
    mode: int


@dataclasses.dataclass(frozen=True)
class Tree:
    build: object


def pack_cpio(root, out):
    """Pack root as a gzipped newc cpio, every file owned by root."""
    with open(out, "wb") as f:
        find = subprocess.Popen(["find", ".", "-print0"], cwd=root, stdout=subprocess.PIPE)
        cpio = subprocess.Popen(["cpio", "--null", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
                                cwd=root, stdin=find.stdout, stdout=subprocess.PIPE)
        gz = subprocess.Popen(["gzip", "-1"], stdin=cpio.stdout, stdout=f)
        find.stdout.close()
        cpio.stdout.close()
        if gz.wait() or cpio.wait() or find.wait():
            raise RuntimeError(f"packing {root} into {out} failed")


def brig_binary(arch, fault=False):
    """The release binary; `fault`: the test build with `brig fault` (--features
    fault-injection), kept in its own target directory so it never replaces the real one."""
    target = os.path.join(REPO, "target", "fault") if fault else os.path.join(REPO, "target")
    return os.path.join(target, arch.triple, "release", "brig")


def build_fault_brig(arch):
    subprocess.run(["cargo", "build", "--release", "--features", "fault-injection", "--target-dir",
                    os.path.join(REPO, "target", "fault"), "--target", arch.triple], cwd=REPO,
                   check=True)
    return brig_binary(arch, fault=True)


def build_brig(arch):
    subprocess.run(["cargo", "build", "--release", "--target", arch.triple], cwd=REPO, check=True)
    return brig_binary(arch)


def build_sockpest(arch):
    """The control-socket pest of the client scenarios (qemu-tests/sockpest, std only: seconds
    to build, nothing when fresh)."""
    target = os.path.join(REPO, "target", "sockpest")
    run(["cargo", "build", "-q", "--release", "--manifest-path",
         os.path.join(REPO, "qemu-tests", "sockpest", "Cargo.toml"), "--target-dir", target,
         "--target", arch.triple], cwd=REPO)
    return os.path.join(target, arch.triple, "release", "sockpest")


def build_base(arch, with_appliance, fault=False, watchdog_kernel=False):
    """The per-architecture base archive: BusyBox, brig (the fault-injection build if `fault`),
    modules (of the watchdog kernel if `watchdog_kernel`), and optionally config/."""
    kernel = fetch_kernel(arch, watchdog_kernel)
    kind = "appliance" if with_appliance else "fault" if fault else "bare"
    if watchdog_kernel:
        kind += "-watchdog"
    root = os.path.join(WORK, arch.name, f"{kind}.root")
    out = os.path.join(WORK, arch.name, f"{kind}.cpio.gz")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    modules = appliance_modules()
    if fault:
        # The watchdog scenarios' device, where this kernel has a driver for it.
        modules += [m for m in ("i6300esb",) if has_module(kernel, m)]
    stage_base(root, arch, kernel, brig_binary(arch, fault), modules)
    shutil.copy(os.path.join(APPLIANCE, "etc", "passwd"), os.path.join(root, "etc"))
    shutil.copy(os.path.join(APPLIANCE, "etc", "group"), os.path.join(root, "etc"))
    if with_appliance:
        shutil.copytree(APPLIANCE, root, symlinks=True, dirs_exist_ok=True)
    else:
        write_files(root, {"/etc/brig/system.toml": 'hostname = "brig-test"\n'})
        # The client scenarios that use it run on the 64-bit guests, whose std rustup ships;
        # the 32-bit targets have no prebuilt std to build it with.
        if arch.name in ("x86_64", "aarch64"):
            shutil.copy(build_sockpest(arch), os.path.join(root, "usr", "bin", "sockpest"))
    pack_cpio(root, out)
    return kernel, out


def build_overlay(arch, name, files, kernel=None):
    root = os.path.join(WORK, arch.name, "scenarios", name)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    write_files(root, files, arch)
    # Modules the scenario's own system.toml loads beyond the base's: staged with a modules.dep
    # for the union, which replaces the base's when the kernel unpacks the overlay.
    extra = [m for m in scenario_modules(files) if m not in appliance_modules()]
    if extra and kernel:
        stage_modules(root, kernel, appliance_modules() + extra)
    out = root + ".cpio.gz"
    pack_cpio(root, out)
    return out


def scenario_modules(files):
    text = files.get("/etc/brig/system.toml")
    try:
        return tomllib.loads(text).get("modules", []) if isinstance(text, str) else []
    except tomllib.TOMLDecodeError:
        return []  # a scenario about a broken system.toml


def concat(parts, out):
    with open(out, "wb") as f:
        for part in parts:
            with open(part, "rb") as p:
                shutil.copyfileobj(p, f)
    return out


# --- QEMU -----------------------------------------------------------------------------------------

def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_command(arch, kernel, initrd, port, cmdline="", extra=(), forwards=None):
    # restrict=on: the guest reaches nothing outside QEMU; only the forwarded ports come in. But
    # libslirp's udp_input drops every UDP datagram from a restricted guest (DHCP and TFTP
    # aside), replies to a UDP forward included: a scenario with one runs unrestricted.
    forwards = forwards or {}
    udp = any(rule.startswith("udp:") for rule in forwards)
    net = f"user,id=n0,restrict={'off' if udp else 'on'},hostfwd=tcp:127.0.0.1:{port}-:80"
    # A scenario's own forwards: {"udp:10.0.2.15:53": host port}.
    for rule, host_port in forwards.items():
        proto, _, guest = rule.partition(":")
        net += f",hostfwd={proto}:127.0.0.1:{host_port}-{guest}"
    if "brig.debug" in cmdline:
        # brig's debug lines go to /dev/kmsg at level 7, which the console shows only from 8 up.
        cmdline += " loglevel=8"
    append = f"console={arch.console} panic=-1 {cmdline}".strip()
    return [*arch.qemu, "-nographic", "-no-reboot", "-kernel", kernel.vmlinuz, "-initrd", initrd,
            "-append", append, "-netdev", net, "-device", "virtio-net-pci,netdev=n0", *extra]


# Every guest still running, so an interrupted run can take them all down (see kill_all).
LIVE = set()


class Vm:
    """A running guest whose serial console is read on a pipe into a growing text buffer.

    expect() searches from a cursor that moves past each match, so a list of expect() calls checks
    that markers appear in that order."""

    def __init__(self, cmd, port, log_path, slowness=1.0):
        self.port = port
        self.slowness = slowness
        self.forwards = {}  # a scenario's extra forwards: {"udp:10.0.2.15:53": host port}
        self.log_path = log_path
        self.text = ""
        self.cursor = 0
        self.started = time.monotonic()
        self._cond = threading.Condition()
        self._log = open(log_path, "w")
        # stdin is the serial console's input: send() types into a console shell.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        LIVE.add(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            # A chunk may end inside an escape sequence; rare, and only the log's looks suffer.
            text = ESCAPES.sub("", chunk.decode("utf-8", "replace").replace("\r", ""))
            with self._cond:
                self.text += text
                self._log.write(text)
                self._log.flush()
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _check_fatal(self):
        m = FATAL.search(self.text)
        if m:
            raise ScenarioFailed(f"kernel reported {m.group(0)!r}")

    def expect(self, pattern, timeout=30):
        """Wait for `pattern` (regex) after the cursor; returns the match, moves the cursor."""
        rx = re.compile(pattern)
        timeout *= self.slowness
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._check_fatal()
                m = rx.search(self.text, self.cursor)
                if m:
                    self.cursor = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    why = "QEMU exited" if self.proc.poll() is not None else f"{timeout} s passed"
                    raise ScenarioFailed(f"{why} before /{pattern}/ appeared")
                self._cond.wait(min(left, 0.5))

    def expect_line(self, pattern, timeout=30):
        """Like expect, but only once the matching line is complete: a pattern that captures a
        value (`lkg=(\\S*)`) would otherwise match half a line that is still arriving."""
        return self.expect(pattern + r"[^\n]*?(?=\r?\n)", timeout)

    def expect_brig(self, message, timeout=30):
        """Wait for a brig log line, whether it came via /dev/kmsg or syslogd."""
        return self.expect(brig_line(message), timeout)

    def quiet_for(self, pattern, seconds):
        """Fail if `pattern` shows up after the cursor within `seconds`."""
        try:
            m = self.expect(pattern, seconds / self.slowness)
        except ScenarioFailed:
            return
        raise ScenarioFailed(f"unexpected line: {line_of(self.text, m.start())!r}")

    def wait_exit(self, timeout):
        """QEMU's exit status; fails when it is still running after `timeout` s."""
        try:
            return self.proc.wait(timeout * self.slowness)
        except subprocess.TimeoutExpired:
            raise ScenarioFailed(f"QEMU still running {timeout} s later") from None

    def send(self, text):
        """Types `text` on the serial console."""
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def http_get(self, path, timeout=10):
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        self._log.close()
        LIVE.discard(self)


def kill_all():
    for vm in list(LIVE):
        if vm.proc.poll() is None:
            vm.proc.kill()


def brig_line(message):
    """Regex for a brig message: `[ 1.23] brig: MSG` (kmsg) or `... daemon.info brig[1]: MSG`."""
    return r"\bbrig(?:\[\d+\])?: " + message


def line_of(text, pos):
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start:end if end >= 0 else len(text)]


# --- disks and multi-boot scenarios ---------------------------------------------------------------

class Lab:
    """One scenario's guests, booted one after another from the same initrd (and disks): for
    what only shows across boots, such as a file kept on the data partition or a power cut.

    abort() (the hard timeout) kills the running guest and refuses further boots."""

    def __init__(self, arch, kernel, initrd, name, cmdline=""):
        self.arch = arch
        self.kernel = kernel
        self.initrd = initrd
        self.name = name
        self.cmdline = cmdline
        self.dir = os.path.join(WORK, arch.name, "scenarios", name + ".d")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.boots = 0
        self.vm = None
        self.aborted = False

    def boot(self, cmdline="", disks=(), extra=(), initrd=None):
        """Boots a guest with `disks` (image paths, /dev/vda first) and returns its Vm; the
        previous guest is killed first (a power cut, if it was still running)."""
        if self.aborted:
            raise ScenarioFailed("hard timeout reached")
        self.kill()
        self.boots += 1
        drives = []
        for disk in disks:
            drives += ["-drive", f"file={disk},if=virtio,format=raw"]
        port = free_port()
        log_path = os.path.join(self.dir, f"boot-{self.boots:02}.console.log")
        cmd = qemu_command(self.arch, self.kernel, initrd or self.initrd, port,
                           f"{self.cmdline} {cmdline}".strip(), (*drives, *extra))
        self.vm = Vm(cmd, port, log_path, self.arch.slowness)
        return self.vm

    def kill(self):
        if self.vm is not None:
            self.vm.kill()

    def abort(self):
        self.aborted = True
        if self.vm is not None and self.vm.proc.poll() is None:
            self.vm.proc.kill()

    def log_paths(self):
        return sorted(glob.glob(os.path.join(self.dir, "boot-*.console.log")))


def make_squashfs(root, out):
    if os.path.exists(out):
        os.unlink(out)
    run(["mksquashfs", root, out, "-noappend", "-all-root", "-quiet", "-comp", "gzip"])
    return out


def make_ext4(out, mib=16):
    """An empty ext4 image of `mib` MiB (journal included, as on a real data partition)."""
    with open(out, "wb") as f:
        f.truncate(mib * 1024 * 1024)
    run(["mkfs.ext4", "-q", "-F", "-L", "data", out])
    return out
