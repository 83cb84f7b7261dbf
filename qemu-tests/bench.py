#!/usr/bin/env python3
"""Benchmark brig against BusyBox init, tini, s6, runit and finit (and crun for containers).

  bench.py                 everything: N=10 and N=200, 3 boots each, containers, 1000-service scale
  bench.py --quick         what CI runs: N=10, 1 boot, brig and BusyBox init only
  bench.py --readme        also write the table into README.md and the plot into docs/

Each init boots the same QEMU x86_64 guest (Debian's cloud kernel, an initramfs) as PID 1 and
supervises the same services (see bench_inits.py); the probe (bench_probe.sh) measures from inside
and prints `BENCH` lines, parsed here. Timing columns come from kernel timestamps under
`-icount shift=3`, where guest time follows the instruction count, so a busy host does not move
them. Boots run one after another: the machine's two cores are shared.

This is a benchmark, not a test: it fails only when a boot does not complete.
"""

import argparse
import dataclasses
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys

import bench_inits
import brigvm
from brigvm import ARCHES

ARCH = ARCHES["x86_64"]
OUT = os.path.join(brigvm.WORK, "bench")
README = os.path.join(brigvm.REPO, "README.md")
PLOT = os.path.join(brigvm.REPO, "docs", "bench.png")
# README sections the harness rewrites: the side-by-side table, and containers plus scale.
SECTIONS = {"table": "bench", "extras": "bench-extras"}

# The probe's settings per kind of boot (see bench_probe.sh).
FULL = dict(RESTART=1, IDLE=10, ORPHANS=100, CONTAINERS=0)
SCALE = dict(RESTART=0, IDLE=0, ORPHANS=0, CONTAINERS=0, READY_WAIT=60)
CRUN = dict(RESTART=0, IDLE=0, ORPHANS=0, CONTAINERS=5)


# --- the image ------------------------------------------------------------------------------------

def stage(init, n, conf, name):
    """Overlay archive for one init: its binaries and libraries, config, probe and services."""
    root = os.path.join(OUT, "roots", name)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "dev"))
    # devtmpfs is mounted by brig and finit only; the others see the initramfs's /dev.
    os.mknod(os.path.join(root, "dev", "kmsg"), 0o20644, os.makedev(1, 11))
    os.mknod(os.path.join(root, "dev", "null"), 0o20666, os.makedev(1, 3))
    services = len(bench_inits.service_names(n)) if init.services else 0
    settings = dict({"READY_WAIT": 120}, **conf, SERVICES=services)
    files = dict(bench_inits.common_files(), **init.files)
    files["/opt/bench.conf"] = "".join(f"{k}={v}\n" for k, v in settings.items())
    brigvm.write_files(root, files)
    for guest, host in init.binaries.items():
        copy(host, root, guest)
        for lib_guest, lib_host in bench_inits.shared_libs(host).items():
            copy(lib_host, root, lib_guest)
    for guest, target in init.links.items():
        dest = os.path.join(root, guest.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.symlink(target, dest)
    out = root + ".cpio.gz"
    brigvm.pack_cpio(root, out)
    return out


def copy(host, root, guest):
    dest = os.path.join(root, guest.lstrip("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copy(os.path.realpath(host), dest)


def pid1_size(init):
    """(binary bytes, library bytes) of the PID 1 executable."""
    host = init.binaries[init.pid1]
    return os.path.getsize(host), bench_inits.size_of(bench_inits.shared_libs(host).values())


# --- one boot -------------------------------------------------------------------------------------

def boot(kernel, base, overlay, init, name, memory, timeout):
    """Boot, wait for the probe's `BENCH DONE`, return the console text."""
    initrd = brigvm.concat([base, overlay], os.path.join(OUT, f"{name}.initrd"))
    append = "console=ttyS0 panic=-1 quiet printk.devkmsg=on log_buf_len=4M"
    if init.rdinit:
        path, _, args = init.rdinit.partition(" -- ")
        append += f" rdinit={path}" + (f" -- {args}" if args else "")
    cmd = ["qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-icount", "shift=3",
           "-m", str(memory), "-nographic", "-no-reboot", "-nic", "none",
           "-kernel", kernel.vmlinuz, "-initrd", initrd, "-append", append]
    vm = brigvm.Vm(cmd, None, os.path.join(OUT, f"{name}.console.log"))
    try:
        vm.expect(r"BENCH DONE", timeout=timeout)
        return vm.text
    finally:
        vm.kill()


# --- parsing --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Proc:
    pid: int
    ppid: int
    comm: str
    rss: int
    pss: int
    uss: int
    switches: int
    anon: int


def processes(text, tag):
    procs = {}
    rx = rf"BENCH P{tag} (\d+) (\d+) \S+ (\S+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)"
    for m in re.finditer(rx, text):
        pid, ppid, comm, rss, pss, uss, vol, nvol, anon = m.groups()
        procs[int(pid)] = Proc(int(pid), int(ppid), comm, int(rss), int(pss), int(uss),
                               int(vol) + int(nvol), int(anon))
    return procs


def supervision(procs, probe):
    """The init's own processes: all but the services (`sleep`), the probe and what it runs, and
    the probe's own supervisor (s6-supervise, runsv) unless that is PID 1."""
    excluded = {probe}
    if probe in procs and procs[probe].ppid != 1:
        excluded.add(procs[probe].ppid)
    changed = True
    while changed:
        before = len(excluded)
        excluded |= {p.pid for p in procs.values() if p.ppid in excluded and p.pid != 1}
        changed = len(excluded) != before
    return {pid: p for pid, p in procs.items() if pid not in excluded and p.comm != "sleep"}


def kmsg(text):
    """[(seconds, message)] of the kernel log lines the probe dumped."""
    return [(float(t), msg) for t, msg in re.findall(r"BENCH KMSG \[\s*(\d+\.\d+)\] (.*)", text)]


def boot_to_ready(events):
    """ms from the kernel's `Run X as init process` to the last service's first marker."""
    start = next(t for t, msg in events if re.match(r"Run \S+ as init process", msg))
    first = {}
    for t, msg in events:
        m = re.match(r"bench: up (\S+)", msg)
        if m:
            first.setdefault(m.group(1), t)
    return (max(first.values()) - start) * 1000 if first else None


def restart(events):
    """ms from the probe's SIGKILL of the victim to its replacement's marker."""
    kill = next((t for t, msg in events if msg.startswith("bench: kill victim")), None)
    if kill is None:
        return None
    up = next((t for t, msg in events if t >= kill and msg == "bench: up victim"), None)
    return (up - kill) * 1000 if up is not None else None


def container_starts(events, start_rx, up_rx):
    """ms from each start marker to the next container marker."""
    starts = [t for t, msg in events if re.match(start_rx, msg)]
    ups = [t for t, msg in events if re.match(up_rx, msg)]
    return [(min(u for u in ups if u >= s) - s) * 1000 for s in starts if any(u >= s for u in ups)]


def figures(text):
    """Every figure of one boot, from its console text."""
    probe = int(re.search(r"BENCH PROBE (\d+)", text).group(1))
    sup0 = supervision(processes(text, 0), probe)
    fig = {"pid1_rss": sup0[1].rss, "pid1_anon": sup0[1].anon,
           "rss": sum(p.rss for p in sup0.values()), "pss": sum(p.pss for p in sup0.values()),
           "uss": sum(p.uss for p in sup0.values()),
           "procs": len(sup0)}
    events = kmsg(text)
    up, expected = map(int, re.search(r"BENCH READY (\d+) of (\d+)", text).groups())
    fig["up"] = up
    # Not ready is not a time: the row shows how many came up instead.
    fig["ready"] = boot_to_ready(events) if up >= expected else None
    fig["emfile"] = len(re.findall(r"\(EMFILE\)", text))
    fig["restart"] = restart(events)
    t0, t1 = (re.search(rf"BENCH T{i} (\S+)", text) for i in (0, 1))
    if t1:
        sup1 = processes(text, 1)
        woke = sum(sup1[pid].switches - p.switches for pid, p in sup0.items() if pid in sup1)
        fig["wakeups"] = woke / (float(t1.group(1)) - float(t0.group(1)))
    zombies = re.search(r"BENCH ZOMBIES (\d+)", text)
    fig["zombies"] = int(zombies.group(1)) if zombies else None
    fig["crun"] = container_starts(events, r"bench: crun start", r"bench: ctr up")
    return fig


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --- runs -----------------------------------------------------------------------------------------

def run_init(kernel, base, key, n, boots, conf=FULL, memory=512, timeout=600):
    """Median figures of `boots` boots of one init supervising n services (+ the victim)."""
    init = {**bench_inits.INITS, **bench_inits.VARIANTS}[key](ARCH, n)
    name = f"{key}-n{n}" + ("" if conf is FULL else "-" + "-".join(f"{k}{v}" for k, v in
                                                                     sorted(conf.items())))
    overlay = stage(init, n, conf, name)
    runs = []
    for i in range(boots):
        text = boot(kernel, base, overlay, init, f"{name}-{i}", memory, timeout)
        runs.append(figures(text))
        print(f"  {init.name} N={n} boot {i + 1}/{boots}: {summary(runs[-1])}", flush=True)
    result = {k: median([r.get(k) for r in runs]) for k in runs[0] if k != "crun"}
    result["crun"] = [ms for r in runs for ms in r["crun"]]
    result["init"], result["n"], result["boots"] = init, n, boots
    result["size"] = pid1_size(init)
    return result


def summary(fig):
    return ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in fig.items() if k != "crun" or v)


# --- output ---------------------------------------------------------------------------------------

def kib(n):
    return f"{n / 1024:.0f} KiB" if n < 1024 * 1024 else f"{n / 1048576:.1f} MiB"


def ms(v):
    return "—" if v is None else f"{v:.0f} ms"


def table(results):
    rows = ["| init | N | PID 1 binary (+ libs) | PID 1 RSS | supervision RSS / PSS / USS "
            "(procs) | boot-to-ready | first restart | idle wakeups/s | zombies at +1 s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        binary, libs = r["size"]
        size = kib(binary) + (f" + {kib(libs)} libs" if libs else " static")
        ready = ms(r["ready"]) if r["init"].services else "—"
        wakeups = "—" if r.get("wakeups") is None else f"{r['wakeups']:.1f}"
        rows.append(f"| {r['init'].name} {r['init'].version} | {r['n']} | {size} | "
                    f"{r['pid1_rss']} KiB | {r['rss']} / {r['pss']} / {r['uss']} KiB "
                    f"({r['procs']:.0f}) | {ready} | {ms(r['restart'])} | {wakeups} | "
                    f"{r['zombies']} |")
    return "\n".join(rows)


def context(kernel, boots):
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Measured {date} by `qemu-tests/bench.py`: x86_64 guest, kernel {kernel.version}, "
            f"{qemu}, TCG with `-icount shift=3` (guest time follows the instruction count: the "
            f"timing columns are instruction-count time, not wall time), one vCPU, "
            f"median of {boots} boot(s) per row.")


def plot(results, path):
    """Boot-to-ready and first restart per init, one bar group per N."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("matplotlib is missing: run qemu-tests/bench-setup.sh (pip install matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "ready", "boot-to-ready (ms, icount)"),
                           (axes[1], "restart", "first restart after SIGKILL (ms, icount)")):
        rows = [r for r in results if r.get(key) is not None]
        labels = [f"{r['init'].name}\nN={r['n']}" for r in rows]
        ax.barh(labels, [r[key] for r in rows],
                color=["tab:red" if r["init"].name == "brig" else "tab:gray" for r in rows])
        ax.set_title(title)
        ax.invert_yaxis()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)


def update_readme(section, text):
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    with open(README) as f:
        readme = f.read()
    if begin not in readme:
        sys.exit(f"README.md has no {begin} ... {end} section to fill")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(README, "w") as f:
        f.write(f"{head}{begin}\n{text}\n{end}{tail}")


# --- main -----------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI: N=10, 1 boot, brig and BusyBox")
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--inits", default=",".join(bench_inits.INITS))
    parser.add_argument("-n", type=int, action="append", help="service counts (default 10, 200)")
    parser.add_argument("--no-extras", action="store_true", help="skip containers and scale")
    parser.add_argument("--extras-only", action="store_true", help="only containers and scale")
    parser.add_argument("--readme", action="store_true", help="write README.md and docs/bench.png")
    args = parser.parse_args()
    if args.quick:
        args.boots, args.inits, args.n, args.no_extras = 1, "brig,busybox", [10], True
    if not os.path.exists(brigvm.brig_binary(ARCH)):
        sys.exit(f"{brigvm.brig_binary(ARCH)} missing: cargo build --release --target "
                 f"{ARCH.triple}")
    os.makedirs(OUT, exist_ok=True)
    kernel, base = brigvm.build_base(ARCH, with_appliance=False)

    failed = []
    if not args.extras_only:
        side_by_side(args, kernel, base, failed)
    if not args.no_extras:
        text = "\n".join(extras(kernel, base, args.boots))
        print("\n" + text)
        save("extras", text, args.readme)
    if failed:
        print("failed:\n  " + "\n  ".join(failed))
    return 1 if failed else 0


def side_by_side(args, kernel, base, failed):
    """Every init at every N: the table, and with --readme the plot."""
    results = []
    for n in args.n or [10, 200]:
        for key in args.inits.split(","):
            try:
                results.append(run_init(kernel, base, key, n, args.boots))
            except brigvm.ScenarioFailed as err:
                # One init that does not come up must not cost the others' figures; the
                # table is then incomplete and the run fails at the end.
                failed.append(f"{key} N={n}: {err}")
                print(f"  {key} N={n} FAILED: {err}", flush=True)
    text = "\n".join([context(kernel, args.boots), "", table(results)])
    print("\n" + text)
    save("table", text, args.readme)
    if args.readme:
        plot(results, PLOT)


def save(section, text, readme):
    with open(os.path.join(OUT, f"{section}.md"), "w") as f:
        f.write(text + "\n")
    if readme:
        update_readme(SECTIONS[section], text)


def extras(kernel, base, boots):
    """Containers (crun, and brig once it has them) and brig with 1000 services."""
    import bench_extras  # it imports this module: import it only when needed

    return [*bench_extras.containers(kernel, base, boots), "",
            *bench_extras.scale(kernel, base, boots), "",
            *bench_extras.restart_without_delay(kernel, base, boots), "",
            *bench_extras.binary_sizes()]


if __name__ == "__main__":
    sys.exit(main())
