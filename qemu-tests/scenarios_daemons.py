"""Scenarios with real daemons from Debian's packages, run as brig containers.

The image is built from the package files and their libraries for the guest's architecture
(debimage.py) and placed in the guest's image store. QEMU's user-mode network forwards only to
the guest's address, so the guest bridges eth0 into br0, takes 10.0.2.16 itself and leaves
10.0.2.15, where QEMU's forwards go, to the container's veth.
"""

import random
import re
import socket
import struct
import time

import debimage
from brigvm import Tree
from scenarios import expect_true, scenario, svc
from brigvm import ScenarioFailed

DNSMASQ_FORWARD = "udp:10.0.2.15:53"

# Modules for containers on a bridge; bridge brings stp and llc along through modules.dep.
DNSMASQ_SYSTEM = """hostname = "brig-test"
modules = ["virtio_pci", "virtio_net", "overlay", "bridge", "veth"]
"""

# eth0 joins br0 and loses nothing: it never had an address, br0 takes the guest's.
BRIDGE_SH = """#!/bin/sh
set -e
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
ip link set lo up
ip link add br0 type bridge
ip link set eth0 master br0
ip link set eth0 up
ip link set br0 up
ip addr add 10.0.2.16/24 dev br0
"""

# dnsmasq drops root for nobody and keeps only the capabilities it asks for (dnsmasq.c: capset
# of NET_ADMIN, NET_RAW, SETUID and NET_BIND_SERVICE before the setuid, then setgroups/setgid):
# those must be in its bounding set, which a container otherwise empties.
DNSMASQ_SERVICE = """description = "dnsmasq from Debian's dnsmasq-base, in a container on br0"
exec = ["/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file",
        "--log-facility=-", "--log-queries", "--no-resolv", "--no-hosts",
        "--address=/brig.test/10.1.2.3", "--listen-address=10.0.2.15", "--bind-interfaces",
        "--port=53"]
requires = ["bridge"]
capabilities = ["CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID",
                "CAP_SETGID"]
stop_timeout = "5s"

[limits]
memory_max = "32M"
pids_max = 16

[container]
image = "dnsmasq"
network = "bridge"
bridge = "br0"
address = "10.0.2.15/24"
gateway = "10.0.2.2"
"""

# In the guest: wait until dnsmasq has logged the host's last query (done.brig.test, sent once
# brig.test was answered), show brig status, power off. Gives up after two minutes so a lost
# query still ends in a clean poweroff.
DNSMASQ_PROBE = """#!/bin/sh
i=0
until brig logs -n 200 dnsmasq | grep -q 'query.A. done.brig.test'; do
    i=$((i + 1))
    if [ $i -ge 120 ]; then echo "PROBE no query seen"; break; fi
    sleep 1
done
echo "PROBE status:"
brig status
poweroff
"""

IMAGE_FILES = {
    "/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:"
                   "/usr/sbin/nologin\n",
    "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
}


def dnsmasq_image(arch, dest):
    debimage.build_image(arch, dest, "dnsmasq-base", ["/usr/sbin/dnsmasq"], IMAGE_FILES)


def dns_query(name, qid):
    """A recursive query for the A record of `name` (RFC 1035 4.1)."""
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return header + labels + b"\0" + struct.pack("!HH", 1, 1)


def skip_name(msg, pos):
    while True:
        n = msg[pos]
        if n & 0xC0 == 0xC0:  # a compression pointer ends the name
            return pos + 2
        if n == 0:
            return pos + 1
        pos += 1 + n


def dns_answer(msg, qid):
    """(rcode, [A addresses]) of a response to query `qid`."""
    rid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    expect_true(rid == qid and flags & 0x8000, f"not a response to query {qid}: {msg!r}")
    pos = 12
    for _ in range(qd):
        pos = skip_name(msg, pos) + 4
    addresses = []
    for _ in range(an):
        pos = skip_name(msg, pos)
        rtype, _, _, length = struct.unpack("!HHIH", msg[pos:pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(msg[pos:pos + 4]))
        pos += length
    return flags & 0xF, addresses


def resolve_through(port, name, seconds):
    """Ask 127.0.0.1:port until an answer comes: the first datagrams may be lost while QEMU's
    slirp learns the container's MAC address (ARP) or dnsmasq is not bound yet."""
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        sent = set()
        while time.monotonic() < deadline:
            qid = random.randrange(1, 0xFFFF)
            sent.add(qid)
            s.sendto(dns_query(name, qid), ("127.0.0.1", port))
            try:
                while True:
                    msg, _ = s.recvfrom(512)
                    # A late answer to an earlier try is as good.
                    rid = struct.unpack("!H", msg[:2])[0]
                    if rid in sent:
                        return dns_answer(msg, rid)
            except (socket.timeout, ConnectionRefusedError):
                time.sleep(1)
    raise ScenarioFailed(f"no DNS answer for {name} through UDP port {port} in {seconds} s")


def dnsmasq_files(service, probe):
    return {
        "/etc/brig/system.toml": DNSMASQ_SYSTEM,
        "/var/lib/brig/images/dnsmasq": Tree(dnsmasq_image),
        "/opt/bridge.sh": BRIDGE_SH,
        svc("bridge"): 'exec = ["/opt/bridge.sh"]\ntype = "oneshot"\n',
        svc("dnsmasq"): service,
        svc("steady"): 'exec = ["/bin/sleep", "3600"]\n',
        "/opt/dnsmasq-probe.sh": probe,
        svc("probe"): 'exec = ["/opt/dnsmasq-probe.sh"]\ntype = "oneshot"\nconsole = true\n'
                      'after = ["dnsmasq", "steady"]\n',
    }


# x86_64 and aarch64 only: the 32-bit guests have 64 MiB of RAM and the image alone is 11 MB
# (not tried there yet).
@scenario(hostfwd=(DNSMASQ_FORWARD,), arches=("x86_64", "aarch64"), timeout=240,
          files=dnsmasq_files(DNSMASQ_SERVICE, DNSMASQ_PROBE))
def dnsmasq_in_a_bridged_container_answers_the_host(vm):
    check_dnsmasq(vm)


# The same daemon with root in the container mapped to host uid 100000: it binds port 53
# without CAP_NET_BIND_SERVICE over its network namespace (brig opens the low ports there)
# and drops to nobody, which is host uid 165534.
DNSMASQ_USERNS_PROBE = DNSMASQ_PROBE.replace(
    'echo "PROBE status:"',
    "for p in $(cat /sys/fs/cgroup/services/dnsmasq/cgroup.procs); do\n"
    "    echo \"PROBE host $(grep '^Uid:' /proc/$p/status | tr -s '\\t' ' ')\"\n"
    "done\n"
    'echo "PROBE status:"')


@scenario(hostfwd=(DNSMASQ_FORWARD,), arches=("x86_64", "aarch64"), timeout=240,
          files=dnsmasq_files(DNSMASQ_SERVICE + 'uid_map = "0:100000:65536"\n',
                              DNSMASQ_USERNS_PROBE))
def dnsmasq_in_a_user_namespace_answers_the_host_as_an_unprivileged_uid(vm):
    check_dnsmasq(vm)
    expect_true("PROBE host Uid: 165534 165534 165534 165534" in vm.text,
                "dnsmasq does not run as host uid 165534 (nobody in the container)")


def check_dnsmasq(vm):
    for module in ("bridge", "veth"):
        vm.expect_brig(rf"module {module}: loaded", timeout=60)
    vm.expect_brig(r"service bridge: done", timeout=60)
    vm.expect_brig(r"service dnsmasq: running \(pid \d+\)", timeout=60)

    # The real query, from the host through QEMU's forward to the container's 10.0.2.15:53.
    rcode, addresses = resolve_through(vm.forwards[DNSMASQ_FORWARD], "brig.test", 90)
    expect_true(rcode == 0 and addresses == ["10.1.2.3"],
                f"brig.test answered rcode {rcode} with {addresses}, want 10.1.2.3")
    # dnsmasq saw it come in through the bridge from QEMU's gateway.
    vm.expect(r"dnsmasq(?:\[\d+\])?: [^\n]*query\[A\] brig\.test from 10\.0\.2\.2", timeout=30)
    # Tells the probe in the guest that the host is done (it answers too: a subdomain).
    resolve_through(vm.forwards[DNSMASQ_FORWARD], "done.brig.test", 60)

    vm.expect(r"PROBE status:", timeout=60)
    # Regression: `brig logs` of a service without output yet failed as if PID 1 were gone.
    expect_true("closed without answering" not in vm.text, "brig logs failed in the probe")
    vm.expect(r"\ndnsmasq +running +\d+ ", timeout=10)
    vm.cursor = vm.text.index("PROBE status:")
    vm.expect(r"\nsteady +running +\d+ ", timeout=10)

    # poweroff stops the container on its SIGTERM, without the SIGKILL of stop_timeout.
    requested = vm.expect_brig(r"shutdown: poweroff requested", timeout=30)
    vm.expect_brig(r"service dnsmasq: stopped", timeout=30)
    vm.expect("reboot: Power down", timeout=30)
    vm.wait_exit(10)
    after = vm.text[requested.end():]
    late = re.findall(r"service \S+: did not stop within", after)
    expect_true(not late, f"needed SIGKILL: {late}")
    ended = re.findall(r"service dnsmasq: (?:exited|killed|failed)[^\n]*",
                       vm.text[:requested.start()])
    expect_true(not ended, f"dnsmasq ended before the poweroff: {ended}")
