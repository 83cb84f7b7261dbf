"""Scenarios for the appliance host (issue 5): the overlay root on disks, power cuts, the hardware
watchdog, and never-brick recovery.

Storage scenarios boot from two virtio disks, as a device boots from flash: /dev/vda is a squashfs
with the real root (BusyBox, brig as /sbin/init, the scenario's config) and /dev/vdb an ext4 data
partition. The initramfs holds only brig, the modules to reach the disks and a system.toml with
`[storage]`; the same system.toml is in the squashfs, so the second brig sees `[storage]` too and
shows the first stage's notes. Such scenarios get a brigvm.Lab and boot the guest themselves,
several times from the same disk images.

Watchdog scenarios need a kernel driver for QEMU's i6300esb: Debian's arm64 kernel has one, the
x86_64 cloud kernel does not, so on x86_64 they boot Debian's generic amd64 kernel. They and the
fatal-error scenario use the fault-injection build of brig (`brig fault stall|stall-shutdown|
panic`).
"""

import os
import random
import re
import shutil
import subprocess
import time

import brigvm
from brigvm import ScenarioFailed
from scenarios import expect_true, scenario as any_arch_scenario, svc

# On the two 64-bit guests only: they need the fault-injection build (x86_64 and aarch64) or
# disks, and the 32-bit guests' share of CI time goes to the supervision scenarios.
SIXTY_FOUR_BIT = ("x86_64", "aarch64")


def scenario(**kw):
    kw.setdefault("arches", SIXTY_FOUR_BIT)
    return any_arch_scenario(**kw)

# crc32c_generic: ext4 asks the crypto API for crc32c at mount time, which modules.dep does not
# list; without it the mount fails with ENOENT ("Cannot load crc32c driver") on arm64.
STORAGE_MODULES = ["virtio_pci", "virtio_blk", "squashfs", "crc32c_generic", "ext4", "overlay"]

STORAGE_TOML = f"""hostname = "box"
modules = {STORAGE_MODULES!r}

[storage]
base = "/dev/vda"
data = "/dev/vdb"
device_wait = "3s"

[boot]
good_after = "1s"
""".replace("'", '"')


def storage_images(lab, files):
    """Builds the initramfs (first stage) and the squashfs root for `lab`; returns
    (initrd, squashfs path). `files` go into the squashfs root."""
    arch, kernel = lab.arch, lab.kernel
    initramfs = os.path.join(lab.dir, "initramfs.root")
    rootfs = os.path.join(lab.dir, "squashfs.root")
    for root, extra in ((initramfs, {}), (rootfs, files)):
        os.makedirs(root)
        brigvm.stage_base(root, arch, kernel, brigvm.brig_binary(arch), STORAGE_MODULES)
        for name in ("passwd", "group"):
            shutil.copy(os.path.join(brigvm.APPLIANCE, "etc", name), os.path.join(root, "etc"))
        brigvm.write_files(root, {"/etc/brig/system.toml": STORAGE_TOML, **extra})
    initrd = os.path.join(lab.dir, "initramfs.cpio.gz")
    brigvm.pack_cpio(initramfs, initrd)
    return initrd, brigvm.make_squashfs(rootfs, os.path.join(lab.dir, "root.squashfs"))


def console_probe(script, kind="simple"):
    """A console service running /opt/probe.sh once `writer` is up. A `simple` probe does not
    hold up `system ready`, so the boot can become good while it waits."""
    return {
        svc("probe"): f'exec = ["/opt/probe.sh"]\ntype = "{kind}"\nrestart = "never"\n'
                      'console = true\nafter = ["writer"]\n',
        "/opt/probe.sh": "#!/bin/sh\n" + script,
    }


# --- the data partition ---------------------------------------------------------------------------

# Counts its boots in a file on the data partition.
WRITER = ('exec = ["/bin/sh", "-c", "mkdir -p /var/lib/app; n=$(cat /var/lib/app/boots);'
          ' echo $((n + 1)) > /var/lib/app/boots; sync; exec sleep 3600"]\ncritical = true\n')

PERSIST_PROBE = """
i=0
while [ ! -d /var/lib/brig/last-good ] && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
sleep 1
echo "STATE boots=$(cat /var/lib/app/boots) since=$(cat /var/lib/brig/boots-since-good)" \
     "lkg=$(ls /var/lib/brig/last-good/services | tr '\\n' ,)"
brig status | sed 's/^/ST /'
if [ "$(cat /var/lib/app/boots)" = 1 ]; then
    # A bad update: a service file that fails validation, kept on the data partition.
    printf 'exec = ["/bin/sleep", "3600"]\\nrestrat = "always"\\n' > /etc/brig/services/broken.toml
    echo "BROKE the config"
fi
echo PROBE-DONE
poweroff
"""


def boot_state(vm):
    m = vm.expect_line(r"STATE boots=(\d*) since=(\d*) lkg=(\S*)", timeout=90)
    end = vm.expect(r"PROBE-DONE", 30).start()
    status = vm.text[m.end():end]
    vm.expect("reboot: Power down", 30)
    vm.wait_exit(10)
    return m.group(1), m.group(2), m.group(3), status


@scenario(lab=True, timeout=400)
def data_partition_keeps_files_and_last_good_config_until_factory_reset(lab):
    initrd, base = storage_images(lab, {svc("writer"): WRITER, **console_probe(PERSIST_PROBE)})
    data = brigvm.make_ext4(os.path.join(lab.dir, "data.ext4"))
    disks = (base, data)

    # 1: first boot, empty data partition; the boot becomes good, the config is saved.
    vm = lab.boot(initrd=initrd, disks=disks)
    vm.expect_brig(r"storage: switched into the merged root")
    vm.expect_brig(r"brig 0\.1\.0 starting as PID 1")
    vm.expect_brig(r"boot is good: every critical service up for 1s")
    vm.expect_brig(r"saved /etc/brig as the last-known-good configuration")
    boots, since, lkg, status = boot_state(vm)
    expect_true(boots == "1", f"first boot counted {boots!r}")
    expect_true(since == "0" and "writer.toml" in lkg,
                f"after a good boot: since={since} lkg={lkg}")
    expect_true("BROKE" in vm.text, "probe did not break the config")

    # 2: the file survived; the broken config falls back to the last-known-good copy.
    vm = lab.boot(initrd=initrd, disks=disks)
    vm.expect_brig(r"config: /etc/brig/services/broken\.toml:2:\d+: ")
    vm.expect_brig(r"config: /etc/brig has 1 error: booted the last-known-good configuration")
    boots, since, lkg, status = boot_state(vm)
    expect_true(boots == "2", f"second boot counted {boots!r}: the file did not survive")
    expect_true(re.search(r"^ST ! /etc/brig has 1 error: booted the last-known-good", status,
                          re.M), f"status lacks the last-known-good note:\n{status}")
    expect_true("broken.toml" not in lkg, f"the last-known-good copy now holds the broken "
                                          f"file: {lkg}")

    # 3: still the last-known-good copy: a good boot on it must not have saved the broken one.
    vm = lab.boot(initrd=initrd, disks=disks)
    vm.expect_brig(r"config: /etc/brig has 1 error: booted the last-known-good configuration")
    boots, _, lkg, _ = boot_state(vm)
    expect_true(boots == "3", f"third boot counted {boots!r}")

    # 4: factory reset: the upper layer is gone, so are the file and the broken service.
    vm = lab.boot(initrd=initrd, disks=disks, cmdline="brig.factory_reset")
    vm.expect_brig(r"storage: factory reset: discarding every change")
    boots, _, _, status = boot_state(vm)
    expect_true(boots == "1", f"after a factory reset the counter file says {boots!r}")
    expect_true(re.search(r"^ST ! factory reset done at this boot", status, re.M),
                f"status lacks the factory reset note:\n{status}")
    expect_true("broken.toml" not in vm.text, "the broken service file survived the reset")


TMPFS_PROBE = """
sleep 1
echo "STATE boots=$(cat /var/lib/app/boots) since=$(cat /var/lib/brig/boots-since-good) lkg=-"
brig status | sed 's/^/ST /'
echo "UPPER $(grep ' /overlay ' /proc/mounts | cut -d' ' -f3)"
echo PROBE-DONE
poweroff
"""


@scenario(lab=True, timeout=300)
def missing_or_corrupt_data_partition_boots_on_tmpfs_and_status_says_so(lab):
    initrd, base = storage_images(lab, {svc("writer"): WRITER, **console_probe(TMPFS_PROBE)})
    garbage = os.path.join(lab.dir, "garbage.img")
    with open(garbage, "wb") as f:
        f.write(random.Random(5).randbytes(8 * 1024 * 1024))
    for what, disks in (("missing", (base,)), ("corrupt", (base, garbage))):
        vm = lab.boot(initrd=initrd, disks=disks)
        vm.expect_brig(r"storage: data partition unusable \(mount data /dev/vdb: ")
        boots, _, _, status = boot_state(vm)
        expect_true(boots == "1", f"{what}: boots={boots!r}")
        expect_true(re.search(r"^ST ! data partition unusable \(mount data /dev/vdb: [^\n]*\); "
                              r"changes are kept in RAM", status, re.M),
                    f"{what}: status lacks the note:\n{status}")
        expect_true(re.search(r"UPPER tmpfs", vm.text), f"{what}: /overlay is not a tmpfs")


# --- power cuts -----------------------------------------------------------------------------------

POWER_CUTS = int(os.environ.get("BRIG_POWER_CUTS", "5"))

# Writes and fsyncs files as fast as it can, so the cut lands in the middle of writes.
BUSY_WRITER = ('exec = ["/bin/sh", "-c", "mkdir -p /var/lib/app; i=0; while :; do'
               ' echo $i > /var/lib/app/f.$((i % 8)); i=$((i + 1));'
               ' [ $((i % 16)) = 0 ] && sync; done"]\ncritical = true\n')

CUT_PROBE = """
since=$(cat /var/lib/brig/boots-since-good)
check=none
if [ -d /var/lib/brig/last-good ]; then
    brig check --config /var/lib/brig/last-good >/dev/null 2>&1
    check=$?
fi
echo "CUTSTATE since=[$since] lastgood=$check"
"""


@scenario(lab=True, timeout=60 + 30 * POWER_CUTS)
def power_cuts_while_writing_never_corrupt_brig_state(lab):
    """BRIG_POWER_CUTS (default 5) boots, each killed with SIGKILL at a random moment around
    the time the boot becomes good (good_after 1s), when brig rewrites its own state."""
    initrd, base = storage_images(lab, {svc("writer"): BUSY_WRITER,
                                        **console_probe(CUT_PROBE, kind="oneshot")})
    data = brigvm.make_ext4(os.path.join(lab.dir, "data.ext4"))
    rng = random.Random(20261203)
    previous = None
    for n in range(1, POWER_CUTS + 1):
        vm = lab.boot(initrd=initrd, disks=(base, data))
        try:
            m = vm.expect_line(r"CUTSTATE since=\[([^\]]*)\] lastgood=(\S+)", timeout=90)
        except ScenarioFailed as err:
            raise ScenarioFailed(f"boot {n} after {n - 1} power cuts: {err}") from None
        since, lastgood = m.group(1), m.group(2)
        expect_true(since.isdigit(), f"boot {n}: boots-since-good is {since!r}")
        expect_true(previous is None or int(since) in (1, previous + 1),
                    f"boot {n}: boots-since-good {since} after {previous}")
        expect_true(lastgood in ("none", "0"), f"boot {n}: last-good fails brig check ({lastgood})")
        expect_true(n == 1 or lastgood == "0", f"boot {n}: no last-good copy after a good boot")
        bad = re.search(r"brig: config: [^\n]*|EXT4-fs error[^\n]*", vm.text)
        expect_true(not bad, f"boot {n}: {bad and bad.group(0)}")
        previous = int(since)
        # The cut: between just before and well after the moment the boot becomes good.
        vm.expect_brig(r"system ready", 30)
        time.sleep(rng.uniform(0.0, 2.5))
        lab.kill()


# A service that ignores SIGTERM with a file open for writing on the data partition, and a
# background child that does the same.
HOLDER = ('exec = ["/bin/sh", "-c", "trap \'\' TERM; mkdir -p /var/lib/app; '
          '(trap \'\' TERM; exec 4>>/var/lib/app/child; while :; do echo c >&4; sleep 0.1; done) & '
          'exec 3>>/var/lib/app/held; while :; do echo x >&3; sleep 0.1; done"]\n'
          'stop_timeout = "2s"\ncritical = true\n')
HOLDER_PROBE = """
sleep 2
echo "HELD $(wc -c < /var/lib/app/held)"
poweroff
"""


@scenario(lab=True, timeout=240)
def poweroff_with_a_sigterm_ignoring_writer_on_ext4_leaves_the_filesystem_clean(lab):
    initrd, base = storage_images(lab, {svc("writer"): HOLDER, **console_probe(HOLDER_PROBE)})
    data = brigvm.make_ext4(os.path.join(lab.dir, "data.ext4"))
    vm = lab.boot(initrd=initrd, disks=(base, data))
    vm.expect_line(r"HELD \d+", timeout=90)
    requested = vm.expect_brig(r"shutdown: poweroff requested", timeout=30)
    vm.expect_brig(r"service writer: did not stop within 2s, sending SIGKILL", timeout=30)
    off = vm.expect("reboot: Power down", timeout=30)
    vm.wait_exit(10)
    # Guest time, from the kernel's timestamps: stop_timeout plus a few seconds.
    stamps = [float(t) for t in re.findall(r"^\[\s*(\d+\.\d+)\]",
                                           vm.text[requested.start() - 200:off.end()], re.M)]
    took = stamps[-1] - stamps[0] if len(stamps) >= 2 else 0.0
    expect_true(took < 2 + 5, f"poweroff took {took:.1f} s of guest time")
    bad = re.search(r"EXT4-fs error[^\n]*|busy[^\n]*unmount[^\n]*", vm.text)
    expect_true(not bad, f"shutdown: {bad and bad.group(0)}")
    # The filesystem was unmounted (or remounted read-only) cleanly: no journal to replay.
    header = brigvm.run(["dumpe2fs", "-h", data])
    features = re.search(r"^Filesystem features:(.*)$", header, re.M).group(1)
    expect_true("needs_recovery" not in features, f"the journal needs recovery: {features}")
    state = re.search(r"^Filesystem state:\s*(.*)$", header, re.M).group(1).strip()
    expect_true(state == "clean", f"filesystem state {state!r}")
    fsck = subprocess.run(["e2fsck", "-fn", data], capture_output=True, text=True)
    expect_true(fsck.returncode == 0, f"e2fsck -fn: {fsck.returncode}\n{fsck.stdout}{fsck.stderr}")
    # And the next boot finds it so too.
    vm = lab.boot(initrd=initrd, disks=(base, data))
    vm.expect_line(r"HELD \d+", timeout=90)
    vm.expect("reboot: Power down", timeout=40)
    vm.wait_exit(10)
    expect_true("recovery complete" not in vm.text and "orphan cleanup" not in vm.text,
                "the second boot replayed the journal")


# --- never brick ----------------------------------------------------------------------------------

@scenario(cmdline="brig.rescue", files={svc("sleeper"): 'exec = ["/bin/sleep", "3600"]\n'})
def brig_rescue_gives_a_shell_on_the_console(vm):
    vm.expect_brig(r"starting a rescue shell on the console: brig\.rescue on the kernel command")
    vm.expect_brig(r"service sleeper: running")
    deadline = time.monotonic() + 60
    while True:
        vm.send("echo RESCUE-$((6 * 7))\n")
        try:
            vm.expect(r"RESCUE-42", 3)
            return
        except ScenarioFailed:
            if time.monotonic() > deadline:
                raise ScenarioFailed("the rescue shell never answered") from None


def fault_probe(command, after=("sleeper",)):
    return {
        svc("sleeper"): 'exec = ["/bin/sleep", "3600"]\n',
        svc("probe"): 'exec = ["/opt/probe.sh"]\ntype = "oneshot"\nconsole = true\n'
                      f'after = {list(after)!r}\n'.replace("'", '"'),
        "/opt/probe.sh": f"#!/bin/sh\nsleep 1\necho FAULT-NOW\n{command}\n",
    }


@scenario(base="fault", files=fault_probe("brig fault panic"))
def panic_in_pid1_reboots_instead_of_killing_init(vm):
    vm.expect("FAULT-NOW")
    vm.expect(r"brig: FATAL internal error: [^\n]*fault injected on request")
    vm.expect(r"brig: fatal error policy: syncing and rebooting")
    # -no-reboot: the reboot ends QEMU. FATAL (Attempted to kill init, panic) fails on sight.
    vm.wait_exit(30)
    vm.expect(r"reboot: Restarting system", 1)


# --- the hardware watchdog (i6300esb) -------------------------------------------------------------

WATCHDOG_TOML = ('hostname = "brig-test"\nmodules = ["i6300esb"]\n\n'
                 '[watchdog]\ndevice = "/dev/watchdog"\ntimeout = "5s"\n')
WATCHDOG = dict(base="fault", watchdog_kernel=True, qemu_args=("-device", "i6300esb"))


def expect_watchdog_armed(vm):
    vm.expect_brig(r"module i6300esb: loaded")
    vm.expect_brig(r"watchdog /dev/watchdog: timeout 5s, kicking every \d+ms")


def expect_reset_within(vm, since, limit):
    """QEMU exits (-no-reboot turns the watchdog's reset into an exit) within `limit` s of
    `since` (monotonic), with no orderly reboot or poweroff in between."""
    try:
        vm.wait_exit(limit + 15)
    except ScenarioFailed:
        raise ScenarioFailed(f"no reset within {limit + 15} s") from None
    took = time.monotonic() - since
    expect_true(took <= limit, f"reset {took:.1f} s after the stall, limit {limit} s")
    expect_true(not re.search(r"reboot: (Power down|Restarting)", vm.text),
                "the guest rebooted by itself: not a watchdog reset")
    return took


@scenario(files={"/etc/brig/system.toml": WATCHDOG_TOML,
                 **fault_probe("sleep 21; echo IDLE-OK; poweroff")}, timeout=120, **WATCHDOG)
def watchdog_idle_system_is_not_reset(vm):
    expect_watchdog_armed(vm)
    vm.expect("FAULT-NOW")
    vm.expect("IDLE-OK", 60)
    vm.expect("reboot: Power down", 30)


@scenario(files={"/etc/brig/system.toml": WATCHDOG_TOML,
                 **fault_probe("brig fault stall")}, **WATCHDOG)
def watchdog_resets_a_stalled_main_loop_within_the_timeout(vm):
    expect_watchdog_armed(vm)
    vm.expect_brig(r"fault: stalling the main loop on request")
    # Timeout 5 s, after the last kick at most interval (1.6 s) earlier; slack for TCG.
    expect_reset_within(vm, time.monotonic(), 5 + 3)


@scenario(files={"/etc/brig/system.toml": WATCHDOG_TOML,
                 **fault_probe("brig fault stall-shutdown; poweroff")}, **WATCHDOG)
def watchdog_resets_a_stalled_shutdown(vm):
    expect_watchdog_armed(vm)
    vm.expect_brig(r"shutdown: poweroff requested")
    vm.expect_brig(r"fault: shutdown stalled before reboot on request", 30)
    expect_reset_within(vm, time.monotonic(), 5 + 3)


HANDOVER = """
cat > /etc/brig/system.toml <<EOF
hostname = "brig-test"
EOF
cat > /etc/brig/services/wd.toml <<EOF
exec = ["/sbin/watchdog", "-F", "-T", "5", "-t", "1", "/dev/watchdog"]
EOF
brig reload; echo "RC reload=$?"
sleep 15
brig status wd | sed 's/^/ST /'
echo HANDOVER-DONE
"""


@scenario(files={"/etc/brig/system.toml": WATCHDOG_TOML + "magic_close = true\n",
                 **fault_probe(HANDOVER)}, timeout=120, **WATCHDOG)
def watchdog_reload_without_it_hands_the_device_to_another_daemon(vm):
    expect_watchdog_armed(vm)
    released = vm.expect_brig(r"watchdog /dev/watchdog: released \(magic close\)")
    vm.expect(r"RC reload=0")
    # The reload starts wd while the probe is still printing the reload's exit code.
    vm.cursor = released.end()
    vm.expect_brig(r"service wd: running")
    vm.expect(r"ST wd +running", 30)
    vm.expect("HANDOVER-DONE")
    expect_true(not re.search(r"service wd: exited", vm.text), "watchdog daemon exited")
