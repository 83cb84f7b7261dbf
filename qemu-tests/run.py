#!/usr/bin/env python3
"""Command line of the QEMU harness.

  run.py fetch [ARCH...]            warm the kernel/BusyBox cache
  run.py test [-a ARCH]... [-k SUB] run the boot scenarios (architectures in parallel)
  run.py boot ARCH [--port 8080]    boot the example appliance on this terminal

`test` and `boot` use the brig release binary already built for the target
(target/<triple>/release/brig); boot.sh and test-all.sh build it first.
"""

import argparse
import os
import sys
import threading
import time

import brigvm
from brigvm import ARCHES, ScenarioFailed
from scenarios import SCENARIOS
# Registered into SCENARIOS on import: the client (issue 4) and the appliance host (issue 5).
import client_scenarios  # noqa: F401,E402
import host_scenarios  # noqa: F401,E402
import scenarios_containers  # noqa: F401,E402
import scenarios_daemons  # noqa: F401 - registers its scenarios in SCENARIOS


class Reporter:
    """Serialises output from the per-architecture threads and keeps the tally."""

    def __init__(self):
        self.lock = threading.Lock()
        self.passed = []
        self.failed = []

    def result(self, arch, sc, error, seconds, log_path):
        with self.lock:
            label = f"{arch.name} {sc.name} ({seconds:.1f} s)"
            if error is None:
                self.passed.append(label)
                print(f"PASS {label}", flush=True)
                return
            self.failed.append(label)
            print(f"\n===== FAIL {label}: {error}", flush=True)
            print(f"----- console of {arch.name} {sc.name} ({log_path}):")
            with open(log_path, errors="replace") as f:
                print(f.read())
            print(f"===== end of {arch.name} {sc.name}\n", flush=True)


def run_lab_scenario(arch, kernel, initrd, sc):
    """A scenario that boots guests itself (several boots, disks): it gets a Lab."""
    lab = brigvm.Lab(arch, kernel, initrd, sc.name, sc.cmdline)
    timer = threading.Timer(sc.timeout, lab.abort)
    timer.start()
    log_path = os.path.join(brigvm.WORK, arch.name, "scenarios", f"{sc.name}.console.log")
    try:
        sc.check(lab)
        error = None
    except ScenarioFailed as err:
        error = f"hard timeout of {sc.timeout} s: {err}" if lab.aborted else str(err)
    finally:
        timer.cancel()
        lab.kill()
        # One log for the report: every boot's console in order.
        with open(log_path, "w") as out:
            for path in lab.log_paths():
                out.write(f"\n----- {os.path.basename(path)}\n")
                with open(path, errors="replace") as f:
                    out.write(f.read())
    return error, log_path


def run_scenario(arch, kernel, bases, sc, base):
    """Boot one scenario; returns (error or None, log path). QEMU never outlives this call."""
    try:
        overlay = brigvm.build_overlay(arch, sc.name, sc.files, kernel)
    except Exception as err:  # noqa: BLE001 - a guest that cannot be built fails its scenario
        return f"overlay build failed: {err}", os.devnull
    initrd = brigvm.concat([bases[base], overlay], overlay.replace(".cpio.gz", ".initrd"))
    if sc.lab:
        return run_lab_scenario(arch, kernel, initrd, sc)
    port = brigvm.free_port()
    forwards = {rule: brigvm.free_port(brigvm.socket.SOCK_DGRAM if rule.startswith("udp:")
                                       else brigvm.socket.SOCK_STREAM) for rule in sc.hostfwd}
    log_path = os.path.join(brigvm.WORK, arch.name, "scenarios", f"{sc.name}.console.log")
    cmd = brigvm.qemu_command(arch, kernel, initrd, port, sc.cmdline, sc.qemu_args, forwards)
    vm = brigvm.Vm(cmd, port, log_path, arch.slowness)
    vm.forwards = forwards
    # The hard timeout: killing QEMU makes any pending expect() fail with "QEMU exited".
    timer = threading.Timer(sc.timeout * arch.slowness, vm.proc.kill)
    timer.start()
    try:
        sc.check(vm)
        return None, log_path
    except ScenarioFailed as err:
        if vm.proc.poll() is not None and not timer.is_alive():
            err = f"hard timeout of {sc.timeout * arch.slowness:.0f} s: {err}"
        return str(err), log_path
    finally:
        timer.cancel()
        vm.kill()


# Guests at once: each QEMU keeps a host core busy, and timing checks want one each.
SLOTS = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))


def run_arch(arch, scenarios, reporter):
    with SLOTS:
        run_arch_scenarios(arch, scenarios, reporter)


def run_arch_scenarios(arch, scenarios, reporter):
    scenarios = [sc for sc in scenarios if not sc.arches or arch.name in sc.arches]
    try:
        kernel, bare = brigvm.build_base(arch, with_appliance=False)
        _, appliance = brigvm.build_base(arch, with_appliance=True)
        bases = {"bare": bare, "appliance": appliance}
        kernels = {"bare": kernel, "appliance": kernel}
        if any(sc.base == "fault" and not sc.watchdog_kernel for sc in scenarios):
            _, bases["fault"] = brigvm.build_base(arch, with_appliance=False, fault=True)
            kernels["fault"] = kernel
        if any(sc.watchdog_kernel for sc in scenarios):
            kernels["fault-watchdog"], bases["fault-watchdog"] = brigvm.build_base(
                arch, with_appliance=False, fault=True, watchdog_kernel=True)
    except Exception as err:  # noqa: BLE001 - any setup failure fails every scenario, loudly
        for sc in scenarios:
            reporter.result(arch, sc, f"image build failed: {err}", 0, os.devnull)
        return
    for sc in scenarios:
        start = time.monotonic()
        key = sc.base + ("-watchdog" if sc.watchdog_kernel else "")
        error, log_path = run_scenario(arch, kernels[key], bases, sc, key)
        reporter.result(arch, sc, error, time.monotonic() - start, log_path)


def cmd_test(args):
    arches = [ARCHES[a] for a in (args.arch or ARCHES)]
    chosen = [sc for sc in SCENARIOS if not args.k or any(k in sc.name for k in args.k)]
    if not chosen:
        sys.exit(f"no scenario matches {args.k}")
    for arch in arches:
        need_fault = any(sc.base == "fault" and (not sc.arches or arch.name in sc.arches)
                         for sc in chosen)
        for fault in (False, True) if need_fault else (False,):
            if not os.path.exists(brigvm.brig_binary(arch, fault)):
                sys.exit(f"{brigvm.brig_binary(arch, fault)} missing: build brig for {arch.triple}"
                         f"{' with --features fault-injection' if fault else ''} first")
    reporter = Reporter()
    threads = [threading.Thread(target=run_arch, args=(arch, chosen, reporter), daemon=True)
               for arch in arches]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        brigvm.kill_all()
        print("interrupted: every guest killed", file=sys.stderr)
        return 130
    if reporter.failed:
        print("failed:\n  " + "\n  ".join(reporter.failed))
    print(f"{len(reporter.passed)} passed, {len(reporter.failed)} failed")
    return 1 if reporter.failed else 0


def cmd_fetch(args):
    for name in args.arch or ARCHES:
        if name not in ARCHES:
            sys.exit(f"unknown architecture {name}; known: {', '.join(ARCHES)}")
        brigvm.fetch_all(ARCHES[name])
        kernel = brigvm.fetch_kernel(ARCHES[name])
        print(f"{name}: kernel {kernel.version} cached in {brigvm.CACHE}")
    return 0


def cmd_boot(args):
    arch = ARCHES[args.arch]
    kernel, initrd = brigvm.build_base(arch, with_appliance=True)
    cmd = brigvm.qemu_command(arch, kernel, initrd, args.port, args.append)
    print(f"booting the example appliance ({arch.name}, kernel {kernel.version})")
    print(f"status page: http://127.0.0.1:{args.port}/  (cgi: /cgi-bin/status)")
    print("quit QEMU with Ctrl-A X; `poweroff` from a console shell also ends it\n", flush=True)
    os.execvp(cmd[0], cmd)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch")
    p.add_argument("arch", nargs="*", help=f"default: all of {', '.join(ARCHES)}")
    p.set_defaults(func=cmd_fetch)
    p = sub.add_parser("test")
    p.add_argument("-a", "--arch", action="append", choices=list(ARCHES))
    p.add_argument("-k", action="append", help="run scenarios whose name contains this")
    p.set_defaults(func=cmd_test)
    p = sub.add_parser("boot")
    p.add_argument("arch", choices=list(ARCHES))
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--append", default="", help="extra kernel command line, e.g. brig.debug")
    p.set_defaults(func=cmd_boot)
    args = parser.parse_args()
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
