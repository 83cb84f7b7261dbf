//! Shared helpers of the privileged tests: boot brig as PID 1 of throwaway namespaces.
//!
//! Each test writes a config under the cargo target directory (brig mounts a fresh /tmp in its
//! namespace), starts `unshare ... brig init --config DIR`, and reads brig's log from stderr.
//! The namespaces end when brig calls reboot(2), so nothing outlives a test and the host's own
//! mounts and processes are never touched. These tests need root; they fail, not skip, without.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The brig binary under test, run from the host side (as PID 1 and as the client).
pub const BRIG: &str = env!("CARGO_BIN_EXE_brig");

/// Where tests keep their files. Not under the cargo target directory: brig mounts fresh
/// tmpfs on /tmp and /run in its namespace, and a checkout under /tmp (a CI clone) would
/// vanish from the services' view.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new("/var/tmp/brig-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the brig binary that services inside the namespace can run (see `scratch`).
pub fn brig_inside() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let path = scratch("bin").join("brig");
        std::fs::copy(BRIG, &path).unwrap();
        path
    })
    .clone()
}

pub struct Run {
    pub log: String,
    pub signal: Option<i32>,
    pub elapsed: Duration,
    /// The test's cgroup, removed when the run is dropped.
    pub cgroup: Option<TestCgroup>,
}

impl Run {
    pub fn has(&self, needle: &str) -> bool {
        self.log.contains(needle)
    }

    pub fn assert_has(&self, needle: &str) {
        assert!(self.has(needle), "missing {needle:?} in brig's log:\n{}", self.log);
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log.matches(needle).count()
    }
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "namespace tests need root (unshare of pid/mount/uts namespaces)");
}

/// A brig running as PID 1 of fresh namespaces, with its control socket in the test's
/// directory so the test can act as a client from the host side.
pub struct Booted {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    start: Instant,
    /// Handed to the `Run`, dropped after the namespace ended: kills what is left and removes
    /// the groups.
    cgroup: Option<TestCgroup>,
}

/// Writes the config under the target directory and starts brig in new namespaces.
pub fn start(test: &str, system: &str, services: &[(&str, &str)]) -> Booted {
    start_in(test, &scratch(&format!("ns-{test}")), system, services, false)
}

/// Writes the config into `dir` and starts brig in new namespaces; with `cgroupns`, also in a
/// cgroup namespace rooted at the test's cgroup.
pub fn start_in(
    test: &str,
    dir: &Path,
    system: &str,
    services: &[(&str, &str)],
    cgroupns: bool,
) -> Booted {
    start_with(test, dir, system, services, cgroupns, || Ok(()))
}

/// start_in, with `pre_exec` run in the forked child before it execs `unshare` (to install a
/// seccomp filter that plays an older kernel, say).
pub fn start_with(
    test: &str,
    dir: &Path,
    system: &str,
    services: &[(&str, &str)],
    cgroupns: bool,
    pre_exec: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> Booted {
    require_root();
    let dir = dir.to_path_buf();
    std::fs::create_dir_all(dir.join("services")).unwrap();
    std::fs::write(dir.join("system.toml"), system).unwrap();
    for (name, text) in services {
        std::fs::write(dir.join("services").join(format!("{name}.toml")), text).unwrap();
    }
    let socket = dir.join("brig.sock");
    // Its own cgroup, so that brig's groups never meet another test's (or the host's).
    let cgroup = TestCgroup::new(test);
    let argv =
        [BRIG, "init", "--config", dir.to_str().unwrap(), "--socket", socket.to_str().unwrap()];
    let brig = cgroup.wrap(&argv, cgroupns);
    let start = Instant::now();
    let mut command = Command::new("unshare");
    // SAFETY: the hook only makes system calls on data prepared before the fork.
    unsafe { command.pre_exec(pre_exec) };
    let mut child = command
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--propagation",
            "private",
        ])
        .arg("--")
        .args(&brig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run unshare");
    let mut stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Booted { child, log, reader: Some(reader), dir, socket, start, cgroup: Some(cgroup) }
}

impl Booted {
    /// CPU time brig (PID 1 of the namespace, in its `brig` leaf) has used so far.
    pub fn pid1_cpu(&self) -> Duration {
        let dir = self.cgroup.as_ref().unwrap().dir.join("brig");
        let stat = std::fs::read_to_string(dir.join("cpu.stat")).unwrap();
        let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).unwrap();
        Duration::from_micros(usec.trim().parse().unwrap())
    }

    /// The pids in service `name`'s cgroup and the zombies among their children (zombies
    /// have left the cgroup already, so they are found through their parents).
    pub fn service_procs(&self, name: &str) -> (Vec<u32>, usize) {
        let group = self.cgroup.as_ref().unwrap().dir.join("services").join(name);
        let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<u32> = procs.lines().filter_map(|p| p.trim().parse().ok()).collect();
        let state = |pid: &str| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next())
        };
        let zombies = pids
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).ok())
            .flat_map(|c| c.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter(|child| state(child) == Some('Z'))
            .count();
        (pids, zombies)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until brig's log contains `needle`.
    pub fn wait_for(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} within {limit:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `brig ARGS --socket SOCKET` from the host side: (exit code, stdout, stderr).
    pub fn client(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BRIG)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    /// Waits for the namespace to end (or `limit` to pass, which fails the test).
    pub fn wait(mut self, limit: Duration) -> Run {
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if self.start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("namespace did not end within {limit:?}; brig's log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.start.elapsed();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        Run { log: self.log(), signal: status.signal(), elapsed, cgroup: self.cgroup.take() }
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        // A failed assertion must not leave a namespace behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Boots brig in new namespaces with the given system.toml and services, and waits for the
/// namespace to end (or `limit` to pass, which fails the test).
pub fn boot(test: &str, system: &str, services: &[(&str, &str)], limit: Duration) -> Run {
    start(test, system, services).wait(limit)
}

/// A service that waits until the others had time to act, then runs `script`.
pub fn probe(delay: &str, script: &str) -> String {
    format!(
        "exec = [\"/bin/sh\", \"-c\", \"sleep {delay}; {}\"]\nrestart = \"never\"\n",
        script.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

// ---- a throwaway cgroup per test --------------------------------------------------------
//
// brig as PID 1 moves itself into `BASE/brig` and creates `BASE/services/NAME`, where BASE is
// the cgroup it starts in. Started straight from the test, BASE would be the test runner's
// own cgroup, shared by every test running in parallel (and on a host at the root cgroup, the
// host's). So each test gets `TEST_CGROUP/brig-test-NAME-PID`, brig enters it before it execs
// (through a tiny shell step, which keeps the `unshare` parent outside, so BASE holds no
// process), and the directory tree is removed after the test.

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
