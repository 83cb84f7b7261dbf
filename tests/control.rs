//! Privileged tests of the control socket: brig as PID 1 of throwaway namespaces, driven by
//! the `brig` client from the host side through a socket in the test's directory.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::start;

const SLEEPER: &str = "exec = [\"/bin/sleep\", \"1000\"]\n";
const LIMIT: Duration = Duration::from_secs(30);

/// The line of a status table that starts with `name`.
fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name:?} in\n{table}"))
}

fn state(table: &str, name: &str) -> String {
    row(table, name).split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn status_shows_every_service_after_boot() {
    let b = start(
        "ctl-status",
        "",
        &[
            ("web", SLEEPER),
            ("setup", "exec = [\"/bin/true\"]\ntype = \"oneshot\"\n"),
            ("crasher", "exec = [\"/bin/false\"]\nrestart_limit = 2\nrestart_delay = \"10ms\"\n"),
            ("orphan", "exec = [\"/bin/true\"]\nrequires = [\"crasher\"]\n"),
        ],
    );
    b.wait_for("system ready", LIMIT);
    // Blocked before its first start or at a restart, depending on timing.
    b.wait_for("requires crasher, which has failed", LIMIT);
    let (code, table, _) = b.client(&["status"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("NAME "), "{table}");
    assert_eq!(state(&table, "web"), "running");
    assert_eq!(state(&table, "setup"), "done");
    assert_eq!(state(&table, "crasher"), "failed");
    assert!(row(&table, "crasher").contains("status 1"), "{table}");
    assert_eq!(state(&table, "orphan"), "blocked");
    let (code, json, _) = b.client(&["status", "--json", "web"]);
    assert_eq!(code, 0);
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed[0]["name"], "web");
    assert_eq!(parsed[0]["state"], "running");
    assert!(parsed[0]["pid"].as_i64().unwrap() > 1);
    let (code, out, err) = b.client(&["status", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("no service named \"nosuch\""), "{err}");
    assert_eq!(out, "");
    // A typo among known names still shows the known ones.
    let (code, table, err) = b.client(&["status", "web", "nosuch"]);
    assert_eq!(code, 1);
    assert_eq!(state(&table, "web"), "running");
    assert!(!table.contains("setup"), "{table}");
    assert!(err.contains("no service named \"nosuch\""), "{err}");
    assert_eq!(b.client(&["poweroff"]).0, 0);
    b.wait(LIMIT);
}

#[test]
fn stop_start_restart_round_trip_and_wait_for_the_result() {
    let stubborn = "exec = [\"/bin/sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.1; done\"]\n\
                    stop_timeout = \"500ms\"\n";
    let b = start("ctl-ops", "", &[("web", SLEEPER), ("stubborn", stubborn)]);
    b.wait_for("system ready", LIMIT);
    let (code, out, _) = b.client(&["stop", "web", "stubborn"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("web: stopped") && out.contains("stubborn: stopped"), "{out}");
    // The answer came after the stubborn one was killed, not before.
    assert!(b.log().contains("service stubborn: did not stop within 500ms, sending SIGKILL"));
    assert_eq!(state(&b.client(&["status"]).1, "web"), "stopped");
    let (code, out, _) = b.client(&["start", "web"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("web: running (pid "), "{out}");
    let before =
        row(&b.client(&["status"]).1, "web").split_whitespace().nth(2).unwrap().to_string();
    let (code, out, _) = b.client(&["restart", "web"]);
    assert_eq!(code, 0, "{out}");
    let after = row(&b.client(&["status"]).1, "web").split_whitespace().nth(2).unwrap().to_string();
    assert_ne!(before, after, "restart gave a new process");
    let (code, _, err) = b.client(&["stop"]);
    assert_eq!(code, 2, "usage error: {err}");
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn start_of_a_failing_service_reports_failure_and_restart_clears_the_count() {
    let b = start(
        "ctl-fail",
        "",
        &[("bad", "exec = [\"/nonexistent\"]\nrestart_limit = 2\nrestart_delay = \"10ms\"\n")],
    );
    b.wait_for("service bad: failed", LIMIT);
    let (code, out, _) = b.client(&["restart", "bad"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad: FAILED: failed: 2 failures"), "{out}");
    // A fresh budget: the restart tried twice more, not once.
    assert_eq!(b.log().matches("service bad: exec /nonexistent failed").count(), 4, "{}", b.log());
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn logs_show_service_output_and_follow_new_lines() {
    let chatty = "exec = [\"/bin/sh\", \"-c\", \"i=0; while :; do i=$((i+1)); echo tick $i; \
                  sleep 0.2; done\"]\n";
    let b = start("ctl-logs", "", &[("chatty", chatty), ("web", SLEEPER)]);
    b.wait_for("system ready", LIMIT);
    std::thread::sleep(Duration::from_millis(700));
    let (code, out, _) = b.client(&["logs", "-n", "2", "chatty"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| l.contains(" chatty[") && l.contains("]: tick ")), "{out}");
    let (_, all, _) = b.client(&["logs"]);
    assert!(all.contains(" brig: service web: running"), "{all}");
    // Follow: new lines arrive while connected.
    let mut follower = std::process::Command::new(common::BRIG)
        .args(["logs", "-f", "-n", "0", "chatty", "--socket"])
        .arg(&b.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(900));
    follower.kill().unwrap();
    let mut followed = String::new();
    follower.stdout.take().unwrap().read_to_string(&mut followed).unwrap();
    follower.wait().unwrap();
    assert!(followed.lines().count() >= 2, "followed:\n{followed}");
    assert!(followed.lines().all(|l| l.contains("]: tick ")), "{followed}");
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn client_whose_reader_goes_away_ends_quietly_without_a_panic() {
    let chatty = "exec = [\"/bin/sh\", \"-c\", \"i=0; while [ $i -lt 3000 ]; do i=$((i+1)); \
                  echo line $i; done; exec sleep 1000\"]\n";
    let b = start("ctl-pipe", "", &[("chatty", chatty)]);
    b.wait_for("system ready", LIMIT);
    std::thread::sleep(Duration::from_millis(500));
    // `brig logs | head -1`: the reader closes the pipe after the first line.
    let mut client = std::process::Command::new(common::BRIG)
        .args(["logs", "-n", "3000", "chatty", "--socket"])
        .arg(&b.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    client.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(client.stdout.take());
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn accept_failing_with_emfile_rests_the_listener_instead_of_spinning() {
    // 32 descriptors in all: a few dozen idle clients exhaust them.
    let limit = libc::rlimit { rlim_cur: 32, rlim_max: 32 };
    let dir = common::scratch("ns-ctl-emfile");
    let b = common::start_with("ctl-emfile", &dir, "", &[("web", SLEEPER)], false, move || {
        // SAFETY: setrlimit with a valid resource and a live struct.
        match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    });
    b.wait_for("system ready", LIMIT);
    let clients: Vec<_> =
        (0..40).map(|_| std::os::unix::net::UnixStream::connect(&b.socket).unwrap()).collect();
    b.wait_for("control: accept on", LIMIT);
    let before = b.pid1_cpu();
    std::thread::sleep(Duration::from_millis(1500));
    // A loop woken by the queued connection on every turn burns a whole CPU meanwhile.
    let used = b.pid1_cpu() - before;
    assert!(used < Duration::from_millis(300), "PID 1 used {used:?} of CPU in 1.5 s");
    let log = b.log();
    assert_eq!(log.matches("control: accept on").count(), 1, "{log}");
    assert!(log.contains("Too many open files"), "{log}");
    drop(clients);
    // The listener is back once descriptors are free again.
    let (code, table, err) = b.client(&["status", "web"]);
    assert_eq!(code, 0, "{table}{err}");
    assert!(table.contains("running"), "{table}");
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn reload_adds_removes_and_changes_services_and_rejects_a_broken_config() {
    let b = start("ctl-reload", "", &[("keep", SLEEPER), ("change", SLEEPER), ("remove", SLEEPER)]);
    b.wait_for("system ready", LIMIT);
    let pid_of =
        |table: &str, name: &str| row(table, name).split_whitespace().nth(2).unwrap().to_string();
    let before = b.client(&["status"]).1;
    let services = b.dir.join("services");
    std::fs::write(services.join("add.toml"), SLEEPER).unwrap();
    std::fs::write(services.join("change.toml"), "exec = [\"/bin/sleep\", \"2000\"]\n").unwrap();
    std::fs::remove_file(services.join("remove.toml")).unwrap();
    let (code, out, err) = b.client(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "reloaded: added add; removed remove; changed change");
    b.wait_for("service add: running", LIMIT);
    let after = b.client(&["status"]).1;
    assert_eq!(pid_of(&before, "keep"), pid_of(&after, "keep"), "unchanged service untouched");
    assert_ne!(pid_of(&before, "change"), pid_of(&after, "change"), "changed service restarted");
    assert!(!after.lines().any(|l| l.starts_with("remove ")), "{after}");

    // A broken file: rejected with every error, nothing changes.
    std::fs::write(services.join("broken.toml"), "exec = [\"/bin/true\"]\nbogus = 1\n").unwrap();
    std::fs::write(services.join("typo.toml"), "exec = \"/bin/true\"\n").unwrap();
    std::fs::remove_file(services.join("keep.toml")).unwrap();
    let (code, _, err) = b.client(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("configuration has 2 errors; nothing changed"), "{err}");
    assert!(err.contains("broken.toml:2:1: unknown field `bogus`"), "{err}");
    assert!(err.contains("typo.toml:1:8: exec: invalid type"), "{err}");
    let unchanged = b.client(&["status"]).1;
    assert_eq!(pid_of(&after, "keep"), pid_of(&unchanged, "keep"));
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn non_root_client_is_refused() {
    let b = start("ctl-nonroot", "", &[("web", SLEEPER)]);
    b.wait_for("system ready", LIMIT);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", common::BRIG, "stop", "web"])
        .arg("--socket")
        .arg(&b.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied (the control socket is for root only)"), "{err}");
    assert_eq!(state(&b.client(&["status"]).1, "web"), "running");
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn hundred_silent_or_garbage_clients_do_not_delay_status_or_restarts() {
    let crasher =
        "exec = [\"/bin/sh\", \"-c\", \"sleep 0.3; exit 1\"]\nrestart_delay = \"200ms\"\n\
                   restart_limit = 50\n";
    let b = start("ctl-flood", "", &[("crasher", crasher), ("web", SLEEPER)]);
    b.wait_for("system ready", LIMIT);
    let mut clients = Vec::new();
    for i in 0..100 {
        let mut s = UnixStream::connect(&b.socket).unwrap();
        match i % 4 {
            0 => {} // silent
            1 => s.write_all(b"\x00\xff\xfe garbage without newline").unwrap(),
            2 => s.write_all(b"{\"version\":1,\"request\":{\"command\":\"status\"").unwrap(),
            _ => s.write_all(&vec![b'x'; 70_000]).unwrap_or(()), // over the request limit
        }
        clients.push(s);
    }
    let t = Instant::now();
    let (code, table, _) = b.client(&["status"]);
    let took = t.elapsed();
    assert_eq!(code, 0);
    assert!(table.contains("crasher"), "{table}");
    assert!(took < Duration::from_secs(2), "status took {took:?} with 100 bad clients");
    // Restarts keep their schedule: every one is 200 ms (delay) + 300 ms (run) apart or so.
    let before = b.log().matches("service crasher: restarting in").count();
    std::thread::sleep(Duration::from_millis(2000));
    let after = b.log().matches("service crasher: restarting in").count();
    assert!(after - before >= 2, "only {} restarts in 2 s:\n{}", after - before, b.log());
    drop(clients);
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn daemon_that_forks_away_and_exits_0_is_exited_with_leftovers_and_stop_removes_them() {
    let forker = "exec = [\"/bin/sh\", \"-c\", \"sleep 1000 & echo forked; exit 0\"]\n\
                  restart = \"on-failure\"\n";
    let b = start("ctl-forker", "", &[("forker", forker), ("web", SLEEPER)]);
    b.wait_for("service forker: exited with status 0", LIMIT);
    let table = b.client(&["status", "forker"]).1;
    assert_eq!(state(&table, "forker"), "exited");
    assert!(row(&table, "forker").contains("1 processes left in its cgroup"), "{table}");
    let (code, out, _) = b.client(&["stop", "forker"]);
    assert_eq!(code, 0, "{out}");
    let table = b.client(&["status", "forker"]).1;
    assert!(!row(&table, "forker").contains("left in its cgroup"), "{table}");
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}
