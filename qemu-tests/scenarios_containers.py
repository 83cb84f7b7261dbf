"""Container scenarios in a guest with no disk at all: the host root is the initramfs, where
pivot_root is impossible, and the image is a squashfs file on a loop device.

Two containers run the same check script from the image: `box` with an ephemeral upper and
`keep` with a persistent one. Each reports what it sees from inside (its PID, hostname,
processes, capabilities, mounts), writes a marker into its root and exits 7 once; brig
restarts it and the second run reports whether the marker survived. A host volume counts the
runs. A probe on the host compares the host's mount table before the containers and while they
run, and (where the host root was made shared first) unmounts a mount under the volume, which
must vanish inside the container too.
"""

import os
import re
import shutil

import brigvm
from brigvm import Mode, Tree
from scenarios import expect_true, scenario, svc

SYSTEM = """hostname = "brig-test"
modules = ["virtio_pci", "virtio_net", "overlay", "loop", "squashfs"]
"""

# Runs inside the container, from the image. $1 is the label its lines carry.
CHECK_SH = """#!/bin/sh
label=$1
runs=$(cat /vol/runs-$label 2>/dev/null || echo 0)
runs=$((runs + 1))
echo $runs > /vol/runs-$label
echo "IN $label run=$runs marker=$(cat /marker 2>/dev/null || echo none)"
echo written > /marker
if [ $runs -gt 1 ]; then
    echo "IN $label second run up"
    exec sleep 3600
fi
echo "IN $label pid=$$ hostname=$(hostname)"
echo "IN $label procs=$(cat /proc/[0-9]*/comm | sort | tr '\\n' ' ')"
echo "IN $label $(grep -E '^Cap(Eff|Bnd)' /proc/self/status | tr -s '\\t' ' ' | tr '\\n' ' ')"
echo "IN $label mounts=$(cut -d' ' -f2 /proc/self/mounts | tr '\\n' ' ')"
echo "IN $label ready"
if [ "$label" = box ] && [ -e /vol/expect-unmount ]; then
    i=0
    while grep -q ' /vol/sub ' /proc/self/mounts && [ $i -lt 300 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if grep -q ' /vol/sub ' /proc/self/mounts; then
        echo "IN $label vol/sub still mounted"
    else
        echo "IN $label vol/sub gone"
    fi
fi
exit 7
"""

# A host oneshot before the containers: a mount under the volume, the host's mount table.
PREPARE_SH = """#!/bin/sh
set -e
[ "$1" = shared ] && mount --make-rshared /
mkdir -p /srv/vol/sub
mount -t tmpfs -o size=64k sub /srv/vol/sub
[ "$1" = shared ] && touch /srv/vol/expect-unmount
cut -d' ' -f5 /proc/self/mountinfo | sort > /run/host-mounts.before
"""

# The host side, once both containers report: the mount table again, the unmount, the second
# runs, status, poweroff.
PROBE_SH = """#!/bin/sh
wait_for() {
    i=0
    until brig logs -n 100 "$1" | grep -q "$2"; do
        i=$((i + 1))
        if [ $i -ge 120 ]; then echo "PROBE gave up waiting for $1: $2"; return 1; fi
        sleep 0.5
    done
}
wait_for box "IN box ready"
wait_for keep "IN keep ready"
cut -d' ' -f5 /proc/self/mountinfo | sort > /run/host-mounts.during
if cmp -s /run/host-mounts.before /run/host-mounts.during; then
    echo "PROBE host mounts unchanged"
else
    echo "PROBE host mounts changed: $(diff /run/host-mounts.before /run/host-mounts.during \\
        | grep '^[-+]/' | tr '\\n' ' ')"
fi
umount /srv/vol/sub
wait_for box "IN box second run up"
wait_for keep "IN keep second run up"
brig status box keep | sed 's/^/ST /'
echo PROBE-DONE
poweroff
"""

CONTAINER = """exec = ["/bin/sh", "/check.sh", "{name}"]
requires = ["prepare"]
restart_delay = "200ms"
capabilities = ["CAP_NET_BIND_SERVICE", "CAP_KILL"]

[container]
image = "box"
hostname = "{name}-host"
upper = "{upper}"
network = "none"
volumes = [{{ target = "/vol", bind = "/srv/vol" }}]
"""

# CAP_KILL is bit 5, CAP_NET_BIND_SERVICE bit 10: both sets hold exactly these two.
CAPS = "0000000000000420"


def box_squashfs(arch, dest):
    """A BusyBox root with the check script, packed as the squashfs image at `dest`."""
    root = dest + ".root"
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc"):
        os.makedirs(os.path.join(root, d))
    shutil.copy(brigvm.fetch_busybox(arch), os.path.join(root, "bin", "busybox"))
    for applet in ("sh", "cat", "cut", "echo", "grep", "hostname", "sleep", "sort", "tr"):
        os.symlink("busybox", os.path.join(root, "bin", applet))
    brigvm.write_files(root, {
        "/check.sh": Mode(CHECK_SH, 0o755),
        "/etc/passwd": "root:x:0:0:root:/:/bin/sh\n",
        "/etc/group": "root:x:0:\n",
    })
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    brigvm.make_squashfs(root, dest)
    shutil.rmtree(root)


def container_files(root_propagation):
    return {
        "/etc/brig/system.toml": SYSTEM,
        "/var/lib/brig/images/box.squashfs": Tree(box_squashfs),
        "/opt/prepare.sh": PREPARE_SH,
        svc("prepare"): f'exec = ["/opt/prepare.sh", "{root_propagation}"]\ntype = "oneshot"\n',
        svc("box"): CONTAINER.format(name="box", upper="ephemeral"),
        svc("keep"): CONTAINER.format(name="keep", upper="persistent"),
        "/opt/probe.sh": PROBE_SH,
        svc("probe"): 'exec = ["/opt/probe.sh"]\ntype = "oneshot"\nconsole = true\n'
                      'after = ["box", "keep"]\n',
    }


def inside(vm, label, what):
    """The value after `IN label what=` (the first run's line)."""
    m = re.search(rf"\b{label}\[\d+\]: IN {label} {what}=(.*)$", vm.text, re.M)
    expect_true(m is not None, f"{label} printed no {what}= line")
    return m.group(1).strip()


def check_containers(vm, shared):
    vm.expect_brig(r"module squashfs: loaded", timeout=60)
    vm.expect_brig(r"service box: pivot_root impossible \(root is the initramfs\): container "
                   r"root entered with move-mount \+ chroot", timeout=60)
    vm.cursor = 0
    vm.expect("PROBE-DONE", timeout=120)
    # Once per service, not at every restart.
    said = len(re.findall(r"service box: pivot_root impossible", vm.text))
    expect_true(said == 1, f"the root switch fallback was logged {said} times for box")
    expect_true("PROBE gave up" not in vm.text, "the probe gave up waiting for a container")

    for label in ("box", "keep"):
        pid_line = re.search(rf"IN {label} pid=(\d+) hostname=(\S+)", vm.text)
        expect_true(pid_line is not None, f"{label} printed no pid line")
        expect_true(pid_line.group(1) == "1", f"{label} is PID {pid_line.group(1)}, not 1")
        expect_true(pid_line.group(2) == f"{label}-host",
                    f"{label} has hostname {pid_line.group(2)}")
        # Only the check script and what it runs: no brig ("init"), no sibling container.
        procs = inside(vm, label, "procs").split()
        expect_true(set(procs) <= {"sh", "cat", "sort", "tr"} and len(procs) <= 6,
                    f"{label} sees processes that are not its own: {procs}")
        caps = re.search(rf"IN {label} CapEff: (\w+) CapBnd: (\w+)", vm.text)
        expect_true(caps is not None, f"{label} printed no capability line")
        expect_true(caps.groups() == (CAPS, CAPS),
                    f"{label} capabilities {caps.groups()}, want CapEff = CapBnd = {CAPS}")
        mounts = inside(vm, label, "mounts").split()
        strays = [m for m in mounts
                  if m not in ("/", "/vol", "/vol/sub")
                  and not re.match(r"/(proc|sys|dev)(/|$)", m)]
        expect_true(not strays, f"{label} sees host mounts: {strays}")
        expect_true(mounts[0] == "/" and "/vol" in mounts and "/proc" in mounts,
                    f"{label} mount table {mounts}")

    # Writes land in the upper: the ephemeral one starts empty again, the persistent one keeps.
    for label, second in (("box", "none"), ("keep", "written")):
        runs = re.findall(rf"IN {label} run=(\d+) marker=(\S+)", vm.text)
        expect_true(runs[:2] == [("1", "none"), ("2", second)],
                    f"{label} runs and markers {runs}, want 1/none then 2/{second}")

    expect_true("PROBE host mounts unchanged" in vm.text,
                re.search(r"PROBE host mounts[^\n]*", vm.text).group(0)
                if "PROBE host mounts" in vm.text else "the probe compared no mount tables")
    if shared:
        expect_true("IN box vol/sub gone" in vm.text,
                    "the host's unmount of /srv/vol/sub did not reach the container")
    rows = {line.split()[0]: line for line in re.findall(r"^ST (.*)$", vm.text, re.M)}
    for label in ("box", "keep"):
        expect_true("running" in rows.get(label, ""), f"{label} is not running: {rows}")
    vm.expect("reboot: Power down", timeout=60)


@scenario(arches=("x86_64", "aarch64"), timeout=180, files=container_files("private"))
def squashfs_container_on_initramfs_is_isolated_and_leaves_host_mounts_unchanged(vm):
    check_containers(vm, shared=False)


@scenario(arches=("x86_64", "aarch64"), timeout=180, files=container_files("shared"))
def container_under_a_shared_host_root_leaks_no_mounts_and_sees_host_unmounts(vm):
    check_containers(vm, shared=True)
