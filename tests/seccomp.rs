//! Privileged tests of `[seccomp]`: brig as PID 1 of throwaway namespaces runs services under
//! deny and allow filters, with the errno and the kill action, and reports what happened.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// seccomp filters exist only where seccompiler has a backend.
#![cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]

mod common;

use std::time::Duration;

use common::{start, start_in};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn seccomp_denied_call_fails_with_eperm_while_the_service_keeps_running() {
    // The shell and the mkdir it forks both run under the filter, which exec does not lift.
    let denied = "exec = [\"/bin/sh\", \"-c\", \"mkdir /tmp/seccomp-denied; \
                  echo mkdir-exit=$?; exec sleep 1000\"]\n\
                  [seccomp]\ndeny = [\"mkdir\", \"mkdirat\"]\n";
    let b = start("seccomp-deny", "", &[("denied", denied)]);
    b.wait_for("]: mkdir-exit=1", LIMIT);
    let log = b.log();
    assert!(log.contains("Operation not permitted"), "{log}");
    assert!(log.contains("service denied: running"), "{log}");
    let (code, table, _) = b.client(&["status", "denied"]);
    assert_eq!(code, 0);
    assert!(table.contains("running"), "{table}");
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn seccomp_kill_is_reported_as_sigsys_and_the_restart_policy_applies() {
    let killed = "exec = [\"/bin/mkdir\", \"/tmp/seccomp-killed\"]\nrestart_delay = \"100ms\"\n\
                  restart_limit = 2\n\
                  [seccomp]\ndeny = [\"mkdir\", \"mkdirat\"]\naction = \"kill\"\n";
    let b = start("seccomp-kill", "", &[("killed", killed)]);
    b.wait_for("service killed: failed: 2 failures", LIMIT);
    let log = b.log();
    assert_eq!(
        log.matches("service killed: killed by SIGSYS (seccomp: a system call its filter forbids)")
            .count(),
        2,
        "{log}"
    );
    assert!(log.contains("service killed: restarting in 100 ms"), "{log}");
    let (code, table, _) = b.client(&["status", "killed"]);
    assert_eq!(code, 0);
    assert!(table.contains("signal SIGSYS (seccomp)"), "{table}");
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

/// What a static glibc BusyBox (Debian's busybox-static) calls to print a line, besides the
/// `write` and `exit_group` brig adds to every allow list. clock_gettime is normally answered by
/// the vDSO, without a system call, but not under every clocksource (QEMU guests early on).
#[cfg(target_arch = "x86_64")]
const BUSYBOX_ECHO: &str = "\"brk\", \"arch_prctl\", \"set_tid_address\", \"set_robust_list\", \
     \"rseq\", \"prlimit64\", \"readlink\", \"getrandom\", \"mprotect\", \"prctl\", \"getuid\", \
     \"clock_gettime\"";
#[cfg(target_arch = "aarch64")]
const BUSYBOX_ECHO: &str = "\"brk\", \"set_tid_address\", \"set_robust_list\", \"rseq\", \
     \"prlimit64\", \"readlinkat\", \"getrandom\", \"mprotect\", \"prctl\", \"getuid\", \
     \"clock_gettime\"";

#[test]
fn seccomp_allow_list_runs_a_program_that_needs_only_what_it_lists() {
    // action = "kill": any call missing from the list would end the program before it prints.
    let allowed = format!(
        "exec = [\"/bin/busybox\", \"echo\", \"allowed-ran\"]\ntype = \"oneshot\"\n\
         [seccomp]\nallow = [{BUSYBOX_ECHO}]\naction = \"kill\"\n"
    );
    // And one call too few: mkdir is not on the list, so busybox is killed at it.
    let short = format!(
        "exec = [\"/bin/busybox\", \"mkdir\", \"/tmp/seccomp-short\"]\ntype = \"oneshot\"\n\
         [seccomp]\nallow = [{BUSYBOX_ECHO}]\naction = \"kill\"\n"
    );
    let b = start("seccomp-allow", "", &[("allowed", &allowed), ("short", &short)]);
    b.wait_for("service allowed: done", LIMIT);
    b.wait_for("service short: killed by SIGSYS (seccomp", LIMIT);
    assert!(b.log().contains("]: allowed-ran"), "{}", b.log());
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn seccomp_filter_holds_inside_a_container_that_could_otherwise_make_the_call() {
    // CAP_SYS_ADMIN lets the container rename its own UTS namespace; the filter answers EACCES,
    // which no capability check gives, so the error is the filter's.
    let dir = common::scratch("seccomp-container");
    let image = dir.join("images/bb");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(image.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", image.join("bin/busybox")).expect("busybox-static installed");
    let script = "/bin/busybox hostname renamed; echo rc=$? host=$(/bin/busybox hostname); \
                  exec /bin/busybox sleep 1000";
    let boxed = format!(
        "exec = [\"/bin/busybox\", \"sh\", \"-c\", \"{script}\"]\n\
         capabilities = [\"CAP_SYS_ADMIN\"]\nstop_timeout = \"500ms\"\n\
         [seccomp]\ndeny = [\"sethostname\"]\nerrno = \"EACCES\"\n\
         [container]\nimage = \"bb\"\nhostname = \"boxy\"\nnetwork = \"none\"\n"
    );
    let system = format!(
        "image_store = \"{}\"\ncontainer_state = \"{}\"\n",
        dir.join("images").display(),
        dir.join("state").display()
    );
    let b =
        start_in("seccomp-container", &dir.join("config"), &system, &[("boxed", &boxed)], false);
    b.wait_for("]: rc=1 host=boxy", LIMIT);
    let log = b.log();
    assert!(log.contains("hostname: sethostname: Permission denied"), "{log}");
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

/// A filter for brig and everything it starts that answers clone3 with ENOSYS, as a kernel
/// before 5.3 does (or a sandbox whose seccomp profile hides clone3).
fn without_clone3() -> seccompiler::BpfProgram {
    without(&[libc::SYS_clone3])
}

/// A filter that answers `calls` with ENOSYS, as an older kernel would.
fn without(calls: &[i64]) -> seccompiler::BpfProgram {
    use seccompiler::{SeccompAction, SeccompFilter, SeccompRule};
    let arch = if cfg!(target_arch = "x86_64") {
        seccompiler::TargetArch::x86_64
    } else {
        seccompiler::TargetArch::aarch64
    };
    let rules = calls.iter().map(|&c| (c, Vec::<SeccompRule>::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .unwrap();
    filter.try_into().unwrap()
}

#[test]
fn services_and_containers_start_with_clone_where_the_kernel_has_no_clone3() {
    let dir = common::scratch("seccomp-noclone3");
    let image = dir.join("images/bb");
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(image.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", image.join("bin/busybox")).unwrap();
    let system = format!(
        "image_store = \"{}\"\ncontainer_state = \"{}\"\n",
        dir.join("images").display(),
        dir.join("state").display()
    );
    let plain = "exec = [\"/bin/sh\", \"-c\", \"echo plain-cgroup=$(cat /proc/self/cgroup); \
                 exec sleep 1000\"]\n";
    let boxed = "exec = [\"/bin/busybox\", \"sh\", \"-c\", \"echo boxed-pid=$$; \
                 exec /bin/busybox sleep 1000\"]\nstop_timeout = \"500ms\"\n[container]\nimage = \"bb\"\n";
    let filter = without_clone3();
    let b = common::start_with(
        "seccomp-noclone3",
        &dir.join("config"),
        &system,
        &[("plain", plain), ("boxed", boxed)],
        false,
        move || seccompiler::apply_filter(&filter).map_err(std::io::Error::other),
    );
    b.wait_for("]: boxed-pid=1", LIMIT);
    b.wait_for("]: plain-cgroup=", LIMIT);
    let log = b.log();
    assert_eq!(log.matches("clone3 failed: Function not implemented (ENOSYS)").count(), 1, "{log}");
    // Still placed in its own group before it ran anything.
    let cgroup = log.lines().find_map(|l| l.split("]: plain-cgroup=").nth(1)).unwrap();
    assert!(cgroup.trim().ends_with("/services/plain"), "{cgroup}");
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn without_close_range_services_still_inherit_no_descriptor_of_pid1() {
    // Plenty of descriptors in PID 1: several services, each with its pipes.
    let fds = "exec = [\"/bin/sh\", \"-c\", \"echo fds=$(ls /proc/self/fd | tr '\\\\n' ' '); \
               exec sleep 1000\"]\n";
    let services: Vec<(String, &str)> = (0..5).map(|i| (format!("s{i}"), fds)).collect();
    let services: Vec<(&str, &str)> = services.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let filter = without(&[libc::SYS_close_range]);
    let b = common::start_with(
        "seccomp-noclose-range",
        &common::scratch("seccomp-noclose-range"),
        "",
        &services,
        false,
        move || seccompiler::apply_filter(&filter).map_err(std::io::Error::other),
    );
    b.wait_for("system ready", LIMIT);
    for i in 0..5 {
        b.wait_for(&format!("s{i}["), LIMIT);
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = b.log();
    assert_eq!(log.matches("close_range: not in this kernel").count(), 1, "{log}");
    // 0, 1, 2 and the directory ls reads: nothing of brig's.
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("]: fds=")).collect();
    assert_eq!(lines.len(), 5, "{log}");
    for line in lines {
        let fds = line.split("fds=").nth(1).unwrap().split_whitespace().count();
        assert_eq!(fds, 4, "{line}");
    }
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}

#[test]
fn without_mount_setattr_read_only_volumes_stay_read_only_below_the_top() {
    let dir = common::scratch("seccomp-nosetattr");
    let image = dir.join("images/bb");
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(image.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", image.join("bin/busybox")).unwrap();
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let system = format!(
        "image_store = \"{}\"\ncontainer_state = \"{}\"\n",
        dir.join("images").display(),
        dir.join("state").display()
    );
    let prep = format!(
        "exec = [\"/bin/sh\", \"-c\", \"mount -t tmpfs t {}\"]\ntype = \"oneshot\"\n",
        src.join("sub").display()
    );
    let ro = format!(
        "exec = [\"/bin/busybox\", \"sh\", \"-c\", \"(echo x > /h/top) 2>/dev/null && echo top=rw \
         || echo top=ro; (echo x > /h/sub/f) 2>/dev/null && echo sub=rw || echo sub=ro; \
         exec /bin/busybox sleep 1000\"]\nrequires = [\"prep\"]\nstop_timeout = \"500ms\"\n\
         [container]\nimage = \"bb\"\nvolumes = [{{ target = \"/h\", bind = \"{}\", \
         read_only = true }}]\n",
        src.display()
    );
    let filter = without(&[libc::SYS_mount_setattr]);
    let b = common::start_with(
        "seccomp-nosetattr",
        &dir.join("config"),
        &system,
        &[("prep", &prep), ("ro", &ro)],
        false,
        move || seccompiler::apply_filter(&filter).map_err(std::io::Error::other),
    );
    b.wait_for("]: sub=", LIMIT);
    let log = b.log();
    assert_eq!(log.matches("mount_setattr: not in this kernel").count(), 1, "{log}");
    assert!(log.contains("]: top=ro") && log.contains("]: sub=ro"), "{log}");
    assert!(std::fs::read_dir(src.join("sub")).unwrap().next().is_none(), "written through");
    b.client(&["poweroff"]);
    b.wait(LIMIT);
}
