//! Shared by the privileged tests: a throwaway cgroup for each test's brig.
//!
//! brig as PID 1 moves itself into `BASE/brig` and creates `BASE/services/NAME`, where BASE is
//! the cgroup it starts in. Started straight from the test, BASE would be the test runner's
//! own cgroup, shared by every test running in parallel (and on a host at the root cgroup, the
//! host's). So each test gets `TEST_CGROUP/brig-test-NAME`, brig enters it before it execs
//! (through a tiny shell step, which keeps the `unshare` parent outside, so BASE holds no
//! process), and the directory tree is removed after the test.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A test's cgroup: created on `new`, removed (with everything brig made in it) on drop.
pub struct TestCgroup {
    pub dir: PathBuf,
}

/// Where cgroup2 is mounted in the test's mount namespace.
fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in text.lines() {
        let (left, right) = line.split_once(" - ").unwrap();
        if right.starts_with("cgroup2 ") {
            return PathBuf::from(left.split(' ').nth(4).unwrap());
        }
    }
    panic!("no cgroup2 mounted: the privileged tests need the unified hierarchy");
}

impl TestCgroup {
    pub fn new(test: &str) -> TestCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim().to_string();
        let dir = cgroup2_mount()
            .join(own.trim_start_matches('/'))
            .join(format!("brig-test-{test}-{}", std::process::id()));
        remove_tree(&dir);
        std::fs::create_dir(&dir).unwrap();
        TestCgroup { dir }
    }

    /// The program and arguments that join this cgroup, then exec `argv`; with `cgroupns`,
    /// in a new cgroup namespace rooted at this cgroup (brig nested as in a container).
    pub fn wrap(&self, argv: &[&str], cgroupns: bool) -> Vec<String> {
        let unshare = if cgroupns { "unshare --cgroup " } else { "" };
        let script =
            format!("echo 0 > {}/cgroup.procs && exec {unshare}\"$@\"", self.dir.display());
        let mut out = vec!["/bin/sh".to_string(), "-c".into(), script, "sh".into()];
        out.extend(argv.iter().map(|a| a.to_string()));
        out
    }

    /// Whether controller `name` can be used by brig's services here (cgroup v2 only).
    pub fn offers(&self, name: &str) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == name)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A test that timed out killed only `unshare`: end whatever is left of its brig.
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        remove_tree(&self.dir);
    }
}

/// rmdir of a cgroup and its children, deepest first; retried while the kernel still
/// releases the groups of processes that just died.
pub fn remove_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&e.path());
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
