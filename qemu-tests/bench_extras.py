"""The benchmark's two extra measurements: container start (brig against `crun run`) and brig
with 1000 services. Both boot brig as PID 1 the way bench.py does and print markdown lines.

Containers: crun (Debian's) runs an OCI bundle over an overlay root with PID, mount, UTS, IPC and
cgroup namespaces and memory/pids limits, which is what a brig `[container]` service with the
same settings does. brig's side is measured only when the brig under test knows `[container]`
(asked with `brig check`, so no figure is ever assumed); a brig without it gets a row that says
so.
"""

import json
import os
import subprocess
import tempfile

import bench
import bench_inits
import brigvm

CRUN_RUNS = 5
IMAGE = "/var/lib/bench/image"
BUNDLE = "/var/lib/bench/bundle"
# The container reaches the host's /dev/kmsg through a bind of /dev on /hostdev: brig's volumes
# bind directories only.
MARK = "echo '<6>bench: {what}' >/hostdev/kmsg"

# The same container for both: one shell that writes a marker and exits.
CONTAINER_SERVICE = f"""exec = ["/bin/sh", "-c", "{MARK.format(what='brig ctr up')}"]
type = "oneshot"
after = ["ctr-trigger"]

[limits]
memory_max = "64M"
pids_max = 64

[container]
image = "{IMAGE}"
volumes = [{{ target = "/hostdev", bind = "/dev" }}]
"""
# The overlay module is loaded before the start marker, as bench_crun.sh does before its runs.
TRIGGER_SERVICE = f"""exec = ["/bin/sh", "-c",
        "modprobe overlay; echo '<6>bench: brig ctr start' >/dev/kmsg"]
type = "oneshot"
"""


def oci_config():
    """config.json of the crun bundle: the settings of CONTAINER_SERVICE, in OCI terms."""
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": "/",
                    "args": ["/bin/sh", "-c", MARK.format(what="ctr up")],
                    "env": ["PATH=/bin"], "noNewPrivileges": True},
        "root": {"path": "rootfs"},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "mode=755", "size=1024k"]},
            {"destination": "/hostdev", "type": "bind", "source": "/dev", "options": ["bind"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "mount", "uts", "ipc", "cgroup")],
            "resources": {"memory": {"limit": 64 << 20}, "pids": {"limit": 64}},
            "cgroupsPath": "/bench",
        },
    }


def brig_has_containers():
    """True when the brig under test accepts CONTAINER_SERVICE (`brig check` decides)."""
    with tempfile.TemporaryDirectory() as conf:
        os.makedirs(os.path.join(conf, "services"))
        for name, text in (("system.toml", ""), ("services/ctr.toml", CONTAINER_SERVICE),
                           ("services/ctr-trigger.toml", TRIGGER_SERVICE)):
            with open(os.path.join(conf, name), "w") as f:
                f.write(text)
        res = subprocess.run([brigvm.brig_binary(bench.ARCH), "check", "--config", conf],
                             capture_output=True, text=True)
    return res.returncode == 0


def container_init(with_brig):
    init = bench_inits.brig(bench.ARCH, 0)
    crun = bench_inits.unpacked("crun")
    init.binaries["/usr/bin/crun"] = os.path.join(crun, "usr/bin/crun")
    init.binaries[f"{IMAGE}/bin/busybox"] = brigvm.fetch_busybox(bench.ARCH)
    init.links[f"{IMAGE}/bin/sh"] = "busybox"
    init.files[f"{BUNDLE}/config.json"] = json.dumps(oci_config(), indent=1) + "\n"
    if with_brig:
        init.files["/etc/brig/services/ctr.toml"] = CONTAINER_SERVICE
        init.files["/etc/brig/services/ctr-trigger.toml"] = TRIGGER_SERVICE
    return init


def containers(kernel, base, boots):
    """Markdown lines: median start latency of crun and of brig's container service, over
    `boots` boots (crun starts CRUN_RUNS times in each, brig's service once)."""
    with_brig = brig_has_containers()
    init = container_init(with_brig)
    overlay = bench.stage(init, 0, bench.CRUN, "containers")
    crun, ours, failed = [], [], 0
    for _ in range(boots):
        text = bench.boot(kernel, base, overlay, init, "containers", 512, 600)
        events = bench.kmsg(text)
        failed += text.count("BENCH CRUN FAILED")
        crun += bench.container_starts(events, r"bench: crun start", r"bench: ctr up")
        if with_brig:
            ours += bench.container_starts(events, r"bench: brig ctr start", r"bench: brig ctr up")
    print(f"  crun starts (ms): {[round(x, 1) for x in crun]}, failed runs: {failed}", flush=True)
    print(f"  brig container starts (ms): {[round(x, 1) for x in ours]}", flush=True)
    lines = ["| container start (icount) | median | runs |", "|---|---|---|",
             f"| `crun run` 1.8.1: overlay root, PID/mount/UTS/IPC/cgroup namespaces, memory and "
             f"pids limits | {bench.ms(bench.median(crun))} | {len(crun)} of "
             f"{CRUN_RUNS * boots} |"]
    if with_brig:
        lines.append(f"| brig `[container]` service, same settings (from its `after` "
                     f"trigger's marker) | {bench.ms(bench.median(ours))} | {len(ours)} of "
                     f"{boots} |")
    else:
        lines.append("| brig `[container]` service | not measured: this brig's `brig check` "
                     "rejects `[container]` | — |")
    return lines


def scale(kernel, base, boots):
    """Markdown lines: brig with 10 and 1000 services, boot-to-ready and PID 1 memory."""
    rows = {n: bench.run_init(kernel, base, "brig", n, boots, conf=bench.SCALE, memory=1024)
            for n in (10, 1000)}
    # Per running service: with too few file descriptors not all 1000 come up (see README).
    per_service = ((rows[1000]["pid1_rss"] - rows[10]["pid1_rss"])
                   / (rows[1000]["up"] - rows[10]["up"]))
    lines = ["| brig services | up | boot-to-ready (icount) | PID 1 RSS | starts failed with "
             "EMFILE |", "|---|---|---|---|---|"]
    for n, r in rows.items():
        lines.append(f"| {n} + victim | {r['up']:.0f} | {bench.ms(r['ready'])} | "
                     f"{r['pid1_rss']} KiB | {r['emfile']:.0f} |")
    if brig_has_containers():
        r = bench.run_init(kernel, base, "brigctr", 10, boots, conf=bench.SCALE, memory=1024)
        lines.append(f"| 10 + victim, each a `[container]` (own namespaces, overlay root, "
                     f"limits) | {r['up']:.0f} | {bench.ms(r['ready'])} | {r['pid1_rss']} KiB | "
                     f"{r['emfile']:.0f} |")
    lines.append("")
    lines.append(f"PID 1 memory per running service: {per_service:.2f} KiB ((RSS at 1000 − RSS "
                 f"at 10) / (services up at 1000 − at 10)). Of PID 1's RSS at 10 services, "
                 f"{rows[10]['pid1_anon']} KiB are anonymous (heap, stack, data), the rest "
                 f"file-backed pages of the binary itself.")
    return lines


def restart_without_delay(kernel, base, boots):
    """Markdown lines: brig's first restart with the victim's restart_delay at 0."""
    r = bench.run_init(kernel, base, "brig0", 10, boots)
    return [f"First restart of brig with `restart_delay = \"0ms\"` on the killed service "
            f"(N = 10, median of {boots} boot(s), icount): {bench.ms(r['restart'])}."]


def binary_sizes():
    """Markdown lines: the stripped release binaries of brig that are built, per target."""
    lines = []
    for arch in brigvm.ARCHES.values():
        path = brigvm.brig_binary(arch)
        if os.path.exists(path):
            lines.append(f"brig release binary (stripped), {arch.triple}: "
                         f"{os.path.getsize(path) / 1024:.0f} KiB.")
        else:
            lines.append(f"brig for {arch.triple}: not built, no size.")
    return lines
