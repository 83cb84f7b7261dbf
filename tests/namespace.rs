//! Privileged tests: brig as PID 1 of throwaway namespaces (pid, mount, uts, ipc, net):
//! boot, reaping, exec errors, crash loops, broken config, signals and shutdown.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{boot, probe};

/// Counts zombies in /proc of the namespace and prints the figure, then asks for poweroff.
const COUNT_ZOMBIES: &str = "z=0; for s in /proc/[0-9]*/stat; do \
     read -r line < $s 2>/dev/null || continue; \
     case ${line##*) } in Z*) z=$((z+1));; esac; done; \
     echo zombies=$z; kill -USR2 1";

#[test]
fn orphans_from_double_forks_and_bursts_are_reaped() {
    let orphans = "exec = [\"/bin/sh\", \"-c\", \"for i in $(seq 100); do (sleep 0.2 &) ; done; \
                   (sleep 0.5 &); exec sleep 1000\"]\n";
    let burst = "exec = [\"/bin/sh\", \"-c\", \"for i in $(seq 300); do /bin/true & done; \
                 wait; exec sleep 1000\"]\n";
    let run = boot(
        "orphans",
        "",
        &[("orphans", orphans), ("burst", burst), ("probe", &probe("2", COUNT_ZOMBIES))],
        Duration::from_secs(20),
    );
    run.assert_has("probe[");
    run.assert_has("]: zombies=0");
    run.assert_has("shutdown: poweroff requested (SIGUSR2)");
    // reboot(2) in a PID namespace kills its init with SIGINT for poweroff.
    assert_eq!(run.signal, Some(libc::SIGINT), "{}", run.log);
}

#[test]
fn service_ignoring_sigterm_is_killed_after_its_stop_timeout() {
    let stubborn = "exec = [\"/bin/sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.1; done\"]\n\
                    stop_timeout = \"1s\"\n";
    let polite = "exec = [\"/bin/sleep\", \"1000\"]\n";
    let run = boot(
        "stubborn",
        "shutdown_grace = \"1s\"\n",
        &[("stubborn", stubborn), ("polite", polite), ("probe", &probe("0.5", "kill -TERM 1"))],
        Duration::from_secs(20),
    );
    run.assert_has("shutdown: reboot requested (SIGTERM)");
    run.assert_has("service stubborn: did not stop within 1s, sending SIGKILL");
    run.assert_has("service polite: stopped (killed by signal SIGTERM)");
    assert!(!run.has("service polite: did not stop"), "{}", run.log);
    assert_eq!(run.signal, Some(libc::SIGHUP), "reboot ends the namespace with SIGHUP");
    // 0.5 s probe delay + 1 s stop timeout + grace at most; generous for a loaded machine.
    assert!(run.elapsed < Duration::from_secs(6), "took {:?}\n{}", run.elapsed, run.log);
}

#[test]
fn setsid_escapee_is_killed_with_its_service_cgroup() {
    // The escapee left the service's process group but not its cgroup: stopping the service
    // kills it, so the final sweep finds nothing left (before cgroups, only the sweep did).
    let escapee = "exec = [\"/bin/sh\", \"-c\", \"setsid sh -c 'trap \\\"\\\" TERM; \
                   while :; do sleep 0.1; done' & exec sleep 1000\"]\n";
    let run = boot(
        "escapee",
        "shutdown_grace = \"1s\"\n",
        &[("escapee", escapee), ("probe", &probe("0.5", "kill -USR1 1"))],
        Duration::from_secs(20),
    );
    run.assert_has("shutdown: halt requested (SIGUSR1)");
    run.assert_has("service escapee: stopped");
    run.assert_has("shutdown: sending SIGTERM to remaining processes");
    assert!(!run.has("processes left after"), "{}", run.log);
    assert_eq!(run.signal, Some(libc::SIGINT), "{}", run.log);
}

#[test]
fn exec_failures_name_the_path_and_errno_without_delaying_siblings() {
    let dir = common::scratch("ns-exec-files");
    let noexec = dir.join("noexec.sh");
    let badinterp = dir.join("badinterp.sh");
    let empty = dir.join("empty");
    std::fs::write(&noexec, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(&badinterp, "#!/nonexistent/interpreter\necho hi\n").unwrap();
    std::fs::write(&empty, "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&badinterp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o755)).unwrap();
    let svc = |path: &std::path::Path| {
        format!("exec = [\"{}\"]\nrestart_limit = 3\nrestart_delay = \"500ms\"\n", path.display())
    };
    let run = boot(
        "exec",
        "",
        &[
            ("missing", &svc(std::path::Path::new("/nonexistent/daemon"))),
            ("noexec", &svc(&noexec)),
            ("badinterp", &svc(&badinterp)),
            ("empty", &svc(&empty)),
            ("healthy", "exec = [\"/bin/sleep\", \"1000\"]\n"),
            ("probe", &probe("3", "kill -USR2 1")),
        ],
        Duration::from_secs(20),
    );
    run.assert_has(
        "service missing: exec /nonexistent/daemon failed: No such file or directory (ENOENT)",
    );
    run.assert_has(&format!(
        "service noexec: exec {} failed: Permission denied (EACCES)",
        noexec.display()
    ));
    run.assert_has(&format!(
        "service badinterp: exec {} failed: interpreter /nonexistent/interpreter not found (ENOENT)",
        badinterp.display()
    ));
    run.assert_has(&format!(
        "service empty: exec {} failed: not an executable format",
        empty.display()
    ));
    // Bounded: three tries each, then failed, once.
    for name in ["missing", "noexec", "badinterp", "empty"] {
        assert_eq!(run.count(&format!("service {name}: exec ")), 3, "{name}\n{}", run.log);
        assert_eq!(run.count(&format!("service {name}: failed: 3 failures")), 1, "{}", run.log);
    }
    // The healthy sibling did not wait for the failing ones' backoff: it ran before any of
    // them was tried a second time.
    let healthy = run.log.find("service healthy: running").expect("healthy started");
    let second_round = run.log.find("(failure 2 of 3)").expect("a second failure");
    assert!(healthy < second_round, "{}", run.log);
}

#[test]
fn crash_loop_backs_off_with_doubling_delays_then_gives_up_once() {
    let crasher = "exec = [\"/bin/sh\", \"-c\", \"exit 3\"]\nrestart_delay = \"50ms\"\n\
                   restart_limit = 5\n";
    let run = boot(
        "crashloop",
        "",
        &[("crasher", crasher), ("probe", &probe("2", "kill -USR2 1"))],
        Duration::from_secs(20),
    );
    for (k, ms) in [(1, 50), (2, 100), (3, 200), (4, 400)] {
        run.assert_has(&format!("service crasher: restarting in {ms} ms (failure {k} of 5)"));
    }
    assert_eq!(run.count("service crasher: failed: 5 failures within 60s, giving up"), 1);
    assert_eq!(run.count("service crasher: exited with status 3"), 5, "{}", run.log);
}

#[test]
fn broken_files_are_reported_with_location_and_the_rest_boots() {
    let run = boot(
        "broken",
        "",
        &[
            ("syntax", "exec = [\"/bin/true\"\n"),
            ("typo", "exec = [\"/bin/true\"]\nrestrat = \"always\"\n"),
            ("duration", "exec = [\"/bin/true\"]\nstop_timeout = \"ten\"\n"),
            ("dependent", "exec = [\"/bin/sleep\", \"1000\"]\nrequires = [\"syntax\"]\n"),
            ("good", "exec = [\"/bin/sleep\", \"1000\"]\n"),
            ("probe", &probe("0.5", "kill -USR2 1")),
        ],
        Duration::from_secs(20),
    );
    run.assert_has("services/typo.toml:2:1: unknown field `restrat`");
    run.assert_has("services/duration.toml:2:16: stop_timeout: bad duration \"ten\"");
    run.assert_has("services/syntax.toml:");
    run.assert_has(
        "service dependent: not started: requires syntax, which has a configuration error",
    );
    run.assert_has("service good: running");
    run.assert_has("system ready: 2 running, 0 done, 4 not started");
}

#[test]
fn hostname_is_set_and_sigquit_changes_nothing() {
    let run = boot(
        "signals",
        "hostname = \"brig-test\"\n",
        &[("probe", &probe("0.3", "hostname; kill -QUIT 1; kill -HUP 1; sleep 0.3; kill -USR2 1"))],
        Duration::from_secs(20),
    );
    run.assert_has("probe[");
    run.assert_has("]: brig-test");
    run.assert_has("ignoring SIGQUIT");
    run.assert_has("shutdown: poweroff requested (SIGUSR2)");
}

#[test]
fn shutdown_does_not_wait_out_the_grace_period_when_nothing_is_left() {
    // Regression: the final sweep found no process left but the loop still slept until the
    // grace deadline before rebooting.
    let run = boot(
        "no-wait",
        "shutdown_grace = \"30s\"\n",
        &[
            ("sleeper", "exec = [\"/bin/sleep\", \"1000\"]\n"),
            ("probe", &probe("0.2", "kill -USR2 1")),
        ],
        Duration::from_secs(20),
    );
    run.assert_has("shutdown: sending SIGTERM to remaining processes");
    assert!(!run.has("processes left after"), "{}", run.log);
    assert!(run.elapsed < Duration::from_secs(10), "took {:?}", run.elapsed);
}

/// Counts processes whose command line is exactly `args` (NUL-separated in /proc).
const COUNT_CMDLINE: &str = "count() { n=0; for f in /proc/[0-9]*/cmdline; do \
     [ \"$(tr '\\0' ' ' < $f 2>/dev/null)\" = \"$1 \" ] && n=$((n+1)); done; echo $n; }";

#[test]
fn killing_the_main_process_takes_its_children_along() {
    // Regression: the old instance's child kept running beside the restarted one.
    let tree = "exec = [\"/bin/sh\", \"-c\", \"sleep 1000 & exec sleep 1001\"]\n\
                restart_delay = \"100ms\"\n";
    let script = format!(
        "{COUNT_CMDLINE}; for f in /proc/[0-9]*/cmdline; do \
         [ \"$(tr '\\0' ' ' < $f)\" = \"sleep 1001 \" ] && p=${{f#/proc/}} && kill -9 ${{p%/cmdline}}; \
         done; sleep 1; echo children=$(count 'sleep 1000') mains=$(count 'sleep 1001'); kill -USR2 1"
    );
    let run = boot(
        "group-kill",
        "",
        &[("tree", tree), ("probe", &probe("0.5", &script))],
        Duration::from_secs(20),
    );
    run.assert_has("service tree: killed by signal SIGKILL");
    run.assert_has("]: children=1 mains=1");
}

#[test]
fn system_ready_waits_for_running_oneshots() {
    // Regression: a oneshot counted as settled as soon as its exec succeeded.
    let slow = "exec = [\"/bin/sleep\", \"0.5\"]\ntype = \"oneshot\"\n";
    let run = boot(
        "ready-oneshot",
        "",
        &[
            ("slow", slow),
            ("web", "exec = [\"/bin/sleep\", \"1000\"]\n"),
            ("probe", &probe("1", "kill -USR2 1")),
        ],
        Duration::from_secs(20),
    );
    run.assert_has("system ready: 2 running, 1 done, 0 not started");
    let ready = run.log.find("system ready").unwrap();
    assert!(run.log.find("service slow: done").unwrap() < ready, "{}", run.log);
}

#[test]
fn services_keep_the_open_file_limit_brig_was_started_with() {
    // brig raises its own soft limit (hundreds of services need more than 1024 descriptors);
    // a service must not inherit that, select(2) users break above 1024.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one struct that lives for the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let run = boot(
        "nofile",
        "",
        &[("probe", &probe("0.2", "echo nofile=$(ulimit -n); kill -USR2 1"))],
        Duration::from_secs(20),
    );
    run.assert_has(&format!("]: nofile={}", limit.rlim_cur));
}
