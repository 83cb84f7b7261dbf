"""The inits that bench.py compares, and how each is put into the guest.

Every init supervises the same services: /opt/svc.sh, which writes `bench: up NAME` to /dev/kmsg
(the kernel timestamps it), records its PID, and execs `sleep`. One of them, `victim`, is killed
by the probe to time a restart. The probe (bench_probe.sh) is started by the init too, the way
that init starts anything once; bench.py leaves it, and its supervisor, out of every figure.

Peers come from Debian's packages (fetched with apt-get download into the brig-qemu cache, never
installed on the host); their shared libraries and the loader are found with ldd and copied into
the guest at the same paths. brig is the release build from this tree.
"""

import dataclasses
import glob
import os
import re

import brigvm

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = "export PATH=/sbin:/usr/sbin:/bin:/usr/bin\n"

# The service: its name is the argument, or (for s6 and runit, whose `run` is a symlink to this
# file, started in the service directory) the directory's name. Forks only the first mkdir.
SVC = """#!/bin/sh
name=${1:-${PWD##*/}}
echo "<6>bench: up $name" >/dev/kmsg
echo $$ >/run/pid.$name
[ -d /run/up ] || mkdir -p /run/up
: >/run/up/$name
exec sleep 999999
"""


@dataclasses.dataclass
class Init:
    name: str
    version: str
    pid1: str            # guest path of the PID 1 executable (after any exec in a wrapper)
    rdinit: str          # what the kernel runs, with arguments ("" for brig's /init)
    services: bool       # False for tini: it runs a single child, the probe
    binaries: list       # guest path -> host path of every executable to copy
    files: dict          # guest path -> text, for brigvm.write_files
    links: dict          # guest path -> symlink target


def service_names(n):
    return [f"s{i:04}" for i in range(1, n + 1)] + ["victim"]


def unpacked(package):
    return brigvm.unpack_deb(brigvm.fetch_deb(package))


def common_files():
    with open(os.path.join(HERE, "bench_probe.sh")) as f:
        probe = f.read()
    with open(os.path.join(HERE, "bench_crun.sh")) as f:
        crun = f.read()
    return {"/opt/svc.sh": brigvm.Mode(SVC, 0o755), "/opt/probe.sh": brigvm.Mode(probe, 0o755),
            "/opt/bench-crun.sh": brigvm.Mode(crun, 0o755)}


# --- one function per init ------------------------------------------------------------------------

def brig(arch, n):
    files = {"/etc/brig/system.toml": 'hostname = "bench"\n',
             "/etc/brig/services/probe.toml": 'exec = ["/opt/probe.sh"]\nrestart = "never"\n'}
    for name in service_names(n):
        files[f"/etc/brig/services/{name}.toml"] = f'exec = ["/opt/svc.sh", "{name}"]\n'
    return Init("brig", "0.1.0 (this tree)", "/init", "", True,
                {"/init": brigvm.brig_binary(arch)}, files, {})


def brig_no_delay(arch, n):
    """brig with the victim's restart_delay at 0 instead of the default 100 ms: what is left of
    the restart is PID 1's own latency plus the fork and exec of the service."""
    init = brig(arch, n)
    init.name = "brig, restart_delay 0"
    init.files["/etc/brig/services/victim.toml"] += 'restart_delay = "0ms"\n'
    return init


# The same service as a container: its own mount, PID, UTS, IPC, network and cgroup namespaces
# over an overlay root of a BusyBox image, memory and pids limits. It reaches the host's /dev/kmsg
# and /run/up through binds (brig binds directories only).
CTR_IMAGE = "/var/lib/bench/svc-image"
CTR_SVC = """#!/bin/sh
echo "<6>bench: up $1" >/hostdev/kmsg
mkdir -p /hostrun/up
: >/hostrun/up/$1
exec sleep 999999
"""


def brig_containers(arch, n):
    """brig with every service (and the victim) a `[container]` service."""
    init = brig(arch, n)
    init.name = "brig, containerized services"
    # Loaded at boot, as an appliance with containers would: not on the first container's mount.
    init.files["/etc/brig/system.toml"] += 'modules = ["overlay"]\n'
    for name in service_names(n):
        init.files[f"/etc/brig/services/{name}.toml"] = f"""exec = ["/bin/sh", "/svc.sh", "{name}"]

[limits]
memory_max = "16M"
pids_max = 16

[container]
image = "{CTR_IMAGE}"
volumes = [{{ target = "/hostdev", bind = "/dev" }}, {{ target = "/hostrun", bind = "/run" }}]
"""
    init.files[f"{CTR_IMAGE}/svc.sh"] = CTR_SVC
    init.binaries[f"{CTR_IMAGE}/bin/busybox"] = brigvm.fetch_busybox(arch)
    for applet in ("sh", "mkdir", "sleep"):
        init.links[f"{CTR_IMAGE}/bin/{applet}"] = "busybox"
    return init


def busybox(arch, n):
    # BusyBox picks the applet from argv[0]'s basename, so PID 1 is a link named `init`.
    lines = [f"::respawn:/opt/svc.sh {name}" for name in service_names(n)]
    lines.append("::once:/opt/probe.sh")
    return Init("BusyBox init", "1.35.0", "/bin/busybox", "/bb/init", True,
                {"/bin/busybox": brigvm.fetch_busybox(arch)},
                {"/etc/inittab": "\n".join(lines) + "\n"}, {"/bb/init": "/bin/busybox"})


def tini(arch, n):
    # tini runs one child and reaps orphans; it has no notion of services, so only memory,
    # wakeups and zombies apply (the kernel passes what follows `--` on its command line).
    root = unpacked("tini")
    return Init("tini", "0.19.0", "/sbin/tini", "/sbin/tini -- /opt/probe.sh", False,
                {"/sbin/tini": os.path.join(root, "usr/bin/tini-static")}, {}, {})


def s6(arch, n):
    root = unpacked("s6")
    bins = {f"/usr/bin/{b}": os.path.join(root, "usr/bin", b)
            for b in ("s6-svscan", "s6-supervise")}
    # s6-svscan finds s6-supervise on PATH, which the kernel does not set: a wrapper execs it.
    files = {"/opt/init-s6": brigvm.Mode("#!/bin/sh\n" + PATH + "exec s6-svscan /etc/s6\n", 0o755)}
    links = {f"/etc/s6/{name}/run": "/opt/svc.sh" for name in service_names(n)}
    links["/etc/s6/probe/run"] = "/opt/probe.sh"
    return Init("s6", "2.11.3.2", "/usr/bin/s6-svscan", "/opt/init-s6", True, bins, files, links)


def runit(arch, n):
    root = unpacked("runit")
    bins = {"/sbin/runit": os.path.join(root, "sbin/runit")}
    bins.update({f"/usr/bin/{b}": os.path.join(root, "usr/bin", b) for b in ("runsvdir", "runsv")})
    # runit as PID 1: stage 1 has nothing to do here, stage 2 is the supervision tree.
    files = {"/opt/init-runit": brigvm.Mode("#!/bin/sh\n" + PATH + "exec runit\n", 0o755),
             "/etc/runit/1": brigvm.Mode("#!/bin/sh\nexit 0\n", 0o755),
             "/etc/runit/2": brigvm.Mode("#!/bin/sh\n" + PATH + "exec runsvdir -P /etc/service\n",
                                         0o755),
             "/etc/runit/3": brigvm.Mode("#!/bin/sh\nexit 0\n", 0o755)}
    links = {f"/etc/service/{name}/run": "/opt/svc.sh" for name in service_names(n)}
    links["/etc/service/probe/run"] = "/opt/probe.sh"
    return Init("runit", "2.1.2", "/sbin/runit", "/opt/init-runit", True, bins, files, links)


def finit(arch, n):
    root = unpacked("finit")
    # finit tells apart several services of one command by their `:ID`.
    lines = [f"service :{i} [2345] /opt/svc.sh {name} -- {name}"
             for i, name in enumerate(service_names(n), 1)]
    lines.append("task name:probe [2345] /opt/probe.sh -- probe")
    return Init("finit", "4.2", "/sbin/finit", "/sbin/finit", True,
                {"/sbin/finit": os.path.join(root, "sbin/finit")},
                {"/etc/finit.conf": "\n".join(lines) + "\n"}, {})


INITS = {"brig": brig, "busybox": busybox, "tini": tini, "s6": s6, "runit": runit, "finit": finit}
# Variants measured among the extras, not in the side-by-side table.
VARIANTS = {"brig0": brig_no_delay, "brigctr": brig_containers}
# Where each peer's libraries come from when the host does not have them.
LIB_PACKAGES = ["libs6-2.11", "libskarnet2.13", "libexecline2.9", "libite5", "libuev3", "libyajl2"]


# --- shared libraries -----------------------------------------------------------------------------

def lib_dirs():
    return [d for pkg in LIB_PACKAGES
            for d in glob.glob(os.path.join(unpacked(pkg), "usr/lib/x86_64-linux-gnu"))]


def shared_libs(binary):
    """{guest path: host file} of the libraries and loader `binary` needs (none when static).
    ldd runs the host's loader on it, with the unpacked Debian libraries searched first."""
    dirs = lib_dirs()
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(dirs))
    res = brigvm.subprocess.run(["ldd", binary], capture_output=True, text=True, env=env)
    if "not a dynamic executable" in res.stdout + res.stderr:
        return {}
    if res.returncode != 0:
        raise RuntimeError(f"ldd {binary}: {res.stdout}{res.stderr}")
    libs = {}
    for line in res.stdout.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+) \(0x", line)
        if not m:
            if "not found" in line:
                raise RuntimeError(f"ldd {binary}: {line.strip()}")
            continue
        host = m.group(1)
        guest = host
        for d in dirs:
            if host.startswith(d + "/"):
                guest = "/usr/lib/x86_64-linux-gnu/" + os.path.basename(host)
        libs[guest] = host
    return libs


def size_of(files):
    return sum(os.path.getsize(os.path.realpath(f)) for f in files)
