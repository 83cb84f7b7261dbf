//! cgroup v2: the tree brig manages, and each service's group (limits, kill, events, OOM).
//!
//! Layout (documented in the README), under `BASE`, the cgroup brig starts in (the root of
//! the hierarchy on a real boot, the namespace root or a test's group when nested):
//!
//! - `BASE/brig`: PID 1 itself, a leaf, so that `BASE` holds no process and may enable
//!   controllers for its children (the no-internal-processes rule of cgroup-v2.rst);
//! - `BASE/services/NAME`: one group per service, created when it starts, removed when empty.
//!
//! Every controller the kernel offers in this hierarchy (memory, cpu, pids, io, ...) is
//! enabled in `BASE` and `BASE/services` only, never in a group that holds processes.
//! Every path is derived from the mount point given to [`Tree::setup`], so the unit tests run
//! on plain directories.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where the unified hierarchy is mounted at boot.
pub const ROOT: &str = "/sys/fs/cgroup";

/// A failed cgroup operation: what, on which file (and the value written), and the errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupError {
    pub op: &'static str,
    pub path: PathBuf,
    pub value: Option<String>,
    pub errno: Errno,
}

impl std::fmt::Display for CgroupError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} {}", self.op, self.path.display())?;
        if let Some(v) = &self.value {
            write!(f, " ({v:?})")?;
        }
        write!(f, ": {} ({:?})", self.errno.desc(), self.errno)
    }
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let err = |e: io::Error| CgroupError {
        op: "write",
        path: path.to_path_buf(),
        value: Some(value.to_string()),
        errno: errno_of(&e),
    };
    // One write(2) per value: cgroup files act on each write, and a value must not be split.
    // O_TRUNC as a shell's `>` does: cgroupfs ignores it, plain files in tests need it.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => {
            Err(CgroupError { op: "mkdir", path: path.into(), value: None, errno: errno_of(&e) })
        }
    }
}

/// The cgroup path of this process in the unified hierarchy, from `/proc/self/cgroup`.
pub fn own_path(proc_self_cgroup: &Path) -> Option<String> {
    let text = fs::read_to_string(proc_self_cgroup).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim().to_string())
}

/// How many enclosing groups an OOM kill is traced through (brig nested deep in a host tree).
const MAX_OOM_DEPTH: usize = 16;

/// Whose memory limit an OOM kill answered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomScope {
    /// The service's own memory.max (or memory.swap.max).
    Own,
    /// The limit of a group that holds the service's: the services tree, or a group above
    /// brig when it runs nested.
    Enclosing,
    /// No group's limit was hit: the system as a whole ran out of memory.
    System,
}

impl OomScope {
    pub fn describe(self) -> &'static str {
        match self {
            OomScope::Own => "memory.max reached",
            OomScope::Enclosing => "the memory limit of an enclosing cgroup reached",
            OomScope::System => "the system ran out of memory",
        }
    }
}

/// The memory.events counters of a group and its enclosing groups at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OomCounters {
    oom_kill: u64,
    /// `oom` of the group itself first, then of each enclosing group, nearest first.
    ooms: Vec<(PathBuf, u64)>,
}

/// OOM kills in a group since its counters were taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKill {
    pub kills: u64,
    pub scope: OomScope,
    /// The group whose limit was hit (None for a system-wide OOM).
    pub limit: Option<PathBuf>,
}

/// The tree brig manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub base: PathBuf,
}

impl Tree {
    /// Moves this process into `BASE/brig` and enables the available controllers for
    /// `BASE/services`. `mount` is where cgroup2 is mounted, `proc_self_cgroup` the file that
    /// says where this process is. Fails only when there is no usable cgroup2 hierarchy;
    /// problems that leave the tree usable (a controller that cannot be enabled) come back as
    /// warnings for the caller to log.
    pub fn setup(
        mount: &Path,
        proc_self_cgroup: &Path,
    ) -> Result<(Tree, Vec<CgroupError>), CgroupError> {
        let own = own_path(proc_self_cgroup).ok_or(CgroupError {
            op: "find the unified hierarchy in",
            path: proc_self_cgroup.into(),
            value: None,
            errno: Errno::ENOENT,
        })?;
        let rel = own.trim_start_matches('/');
        let base = if rel.is_empty() { mount.to_path_buf() } else { mount.join(rel) };
        if !base.join("cgroup.procs").exists() {
            return Err(CgroupError {
                op: "find cgroup2 at",
                path: base,
                value: None,
                errno: Errno::ENOENT,
            });
        }
        let mut warnings = Vec::new();

        // PID 1 into its leaf, so that the base holds no process.
        let leaf = base.join("brig");
        mkdir(&leaf)?;
        write_file(&leaf.join("cgroup.procs"), "0")?;

        // Controllers for the services, on the ancestors only.
        let services = base.join("services");
        mkdir(&services)?;
        // Every controller offered: memory, cpu, pids and io for the [limits] keys, the others
        // for files passed through verbatim.
        let offered = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        for c in offered.split_whitespace() {
            for dir in [&base, &services] {
                if let Err(e) = write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}")) {
                    warnings.push(e);
                }
            }
        }
        Ok((Tree { base }, warnings))
    }

    /// The group of service `name` (not created).
    pub fn group(&self, name: &str) -> Group {
        Group { dir: service_dir(&self.base, name) }
    }
}

/// The cgroup directory of service `name` under the tree at `base`.
pub fn service_dir(base: &Path, name: &str) -> PathBuf {
    base.join("services").join(name)
}

/// One service's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub dir: PathBuf,
}

impl Group {
    /// Creates the group (a leftover from an earlier run is killed and reused) and writes the
    /// limits, in order. A limit that cannot be written fails the start: a service must not
    /// run without a limit its file asks for.
    pub fn create(&self, limits: &[(String, String)]) -> Result<(), CgroupError> {
        mkdir(&self.dir)?;
        if self.populated() {
            self.kill()?;
        }
        for (file, value) in limits {
            write_file(&self.dir.join(file), value)?;
        }
        Ok(())
    }

    /// Whether any process is left in the group (`populated 1` in cgroup.events). A group
    /// that does not exist is empty.
    pub fn populated(&self) -> bool {
        read_key(&self.dir.join("cgroup.events"), "populated").is_some_and(|v| v != 0)
    }

    /// The `oom_kill` counter of memory.events; None without the memory controller.
    pub fn oom_kills(&self) -> Option<u64> {
        read_key(&self.dir.join("memory.events"), "oom_kill")
    }

    /// The OOM counters of the group and of its enclosing groups, taken when a run starts so
    /// that a later kill can be traced to the limit it answered to.
    pub fn oom_counters(&self) -> OomCounters {
        let oom_kill = self.oom_kills().unwrap_or(0);
        let mut ooms = Vec::new();
        let mut dir = Some(self.dir.as_path());
        // The root group has no memory.events: the walk ends there, or where an ancestor's
        // parent does not give it the memory controller.
        while let Some(d) = dir.filter(|_| ooms.len() < MAX_OOM_DEPTH) {
            let Some(oom) = local_ooms(d) else { break };
            ooms.push((d.to_path_buf(), oom));
            dir = d.parent();
        }
        OomCounters { oom_kill, ooms }
    }

    /// The OOM kills among the group's processes since `before`, and whose limit they
    /// answered to. None: no process of the group was killed by the OOM killer.
    pub fn oom_since(&self, before: &OomCounters) -> Option<OomKill> {
        let kills = self.oom_kills()?.saturating_sub(before.oom_kill);
        if kills == 0 {
            return None;
        }
        // The local counters rise only in the group whose own limit was hit (a sibling that
        // hit its own memory.max leaves the parent's alone); where the kernel has only the
        // hierarchical ones, every ancestor rises too, and the nearest is the one.
        let hit =
            before.ooms.iter().position(|(dir, was)| local_ooms(dir).is_some_and(|now| now > *was));
        let (scope, limit) = match hit {
            Some(0) => (OomScope::Own, Some(self.dir.clone())),
            Some(n) => (OomScope::Enclosing, before.ooms.get(n).map(|(d, _)| d.clone())),
            None => (OomScope::System, None),
        };
        Some(OomKill { kills, scope, limit })
    }

    /// The pids in the group, as this process's pid namespace sees them.
    pub fn pids(&self) -> Vec<Pid> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|&p: &i32| p > 0)
            .map(Pid::from_raw)
            .collect()
    }

    /// Sends `sig` to every process in the group, however it forked or setsid'd. The pids
    /// come from the group itself: brig never signals a pid it has not found in the group
    /// (or reaped as its own child), so a recycled pid is never hit.
    pub fn signal(&self, sig: Signal) {
        for pid in self.pids() {
            match kill(pid, sig) {
                // ESRCH: it exited between the read and the kill.
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => log::warn!("kill -{} {pid}: {} ({e:?})", sig.as_str(), e.desc()),
            }
        }
    }

    /// SIGKILLs everything in the group: cgroup.kill (Linux 5.14), else freeze, kill each
    /// process, thaw (so nothing forks between the read and the kill).
    pub fn kill(&self) -> Result<(), CgroupError> {
        match write_file(&self.dir.join("cgroup.kill"), "1") {
            Ok(()) => return Ok(()),
            Err(e) if e.errno != Errno::ENOENT => return Err(e),
            Err(_) => log::debug!("{}: no cgroup.kill, freezing and killing", self.dir.display()),
        }
        let freeze = self.dir.join("cgroup.freeze");
        let frozen = write_file(&freeze, "1").is_ok();
        self.signal(Signal::SIGKILL);
        if frozen {
            // Killed tasks leave a frozen group: thawing only lets them die.
            write_file(&freeze, "0")?;
        }
        Ok(())
    }

    /// Removes the group once empty. EBUSY (a process is still there) and ENOENT are fine.
    pub fn remove(&self) {
        match fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if matches!(errno_of(&e), Errno::EBUSY | Errno::ENOENT) => {}
            Err(e) => log::debug!("rmdir {}: {e}", self.dir.display()),
        }
    }
}

/// The `oom` counter of a group alone (memory.events.local, Linux 5.2), else the
/// hierarchical one of memory.events.
fn local_ooms(dir: &Path) -> Option<u64> {
    read_key(&dir.join("memory.events.local"), "oom")
        .or_else(|| read_key(&dir.join("memory.events"), "oom"))
}

/// The value of `key` in a flat-keyed cgroup file such as cgroup.events.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// memory.current and the usage_usec line of cpu.stat of a cgroup; None where the file is
/// absent (controller not enabled, or no group).
pub fn usage(dir: &Path) -> (Option<u64>, Option<u64>) {
    let memory =
        fs::read_to_string(dir.join("memory.current")).ok().and_then(|t| t.trim().parse().ok());
    let cpu = fs::read_to_string(dir.join("cpu.stat")).ok().and_then(|t| {
        t.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok())
    });
    (memory, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("brig-cg-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn usage_reads_memory_current_and_cpu_usage() {
        let dir = tempdir("usage");
        assert_eq!(usage(&dir), (None, None));
        fs::write(dir.join("memory.current"), "81920\n").unwrap();
        fs::write(dir.join("cpu.stat"), "usage_usec 1234\nuser_usec 1000\n").unwrap();
        assert_eq!(usage(&dir), (Some(81920), Some(1234)));
        fs::remove_dir_all(dir).unwrap();
    }

    /// A fake hierarchy: brig started in `/nested/test`, with memory and pids offered.
    fn fake_hierarchy(tag: &str) -> (PathBuf, PathBuf) {
        let mount = tempdir(tag);
        let base = mount.join("nested/test");
        fs::create_dir_all(base.join("brig")).unwrap();
        fs::create_dir_all(base.join("services")).unwrap();
        for f in ["cgroup.procs", "cgroup.subtree_control", "brig/cgroup.procs"] {
            fs::write(base.join(f), "").unwrap();
        }
        fs::write(base.join("services/cgroup.subtree_control"), "").unwrap();
        fs::write(base.join("cgroup.controllers"), "cpuset memory hugetlb pids\n").unwrap();
        let proc_file = mount.join("proc-self-cgroup");
        fs::write(&proc_file, "9:name=systemd:/\n4:memory:/x\n0::/nested/test\n").unwrap();
        (mount, proc_file)
    }

    #[test]
    fn setup_moves_pid1_into_a_leaf_and_enables_offered_controllers_on_ancestors() {
        let (mount, proc_file) = fake_hierarchy("setup");
        let (tree, warnings) = Tree::setup(&mount, &proc_file).unwrap();
        let base = mount.join("nested/test");
        assert_eq!(tree.base, base);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(fs::read_to_string(base.join("brig/cgroup.procs")).unwrap(), "0");
        // A plain file keeps the last write: the last controller offered.
        assert_eq!(fs::read_to_string(base.join("cgroup.subtree_control")).unwrap(), "+pids");
        assert_eq!(
            fs::read_to_string(base.join("services/cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        assert_eq!(tree.group("web").dir, base.join("services/web"));
        fs::remove_dir_all(mount).unwrap();
    }

    #[test]
    fn setup_without_unified_hierarchy_is_an_error_naming_the_file() {
        let mount = tempdir("no-v2");
        let proc_file = mount.join("proc-self-cgroup");
        fs::write(&proc_file, "4:memory:/\n").unwrap();
        let e = Tree::setup(&mount, &proc_file).unwrap_err();
        assert_eq!(e.path, proc_file);
        fs::write(&proc_file, "0::/\n").unwrap();
        let e = Tree::setup(&mount, &proc_file).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("find cgroup2 at {}: No such file or directory (ENOENT)", mount.display())
        );
        fs::remove_dir_all(mount).unwrap();
    }

    #[test]
    fn group_writes_limits_verbatim_and_reports_the_failing_file() {
        let dir = tempdir("limits");
        let group = Group { dir: dir.join("web") };
        fs::create_dir_all(&group.dir).unwrap();
        fs::write(group.dir.join("memory.max"), "").unwrap();
        fs::write(group.dir.join("cpu.max"), "").unwrap();
        let limits = vec![
            ("memory.max".to_string(), "67108864".to_string()),
            ("cpu.max".to_string(), "50000 100000".to_string()),
        ];
        group.create(&limits).unwrap();
        assert_eq!(fs::read_to_string(group.dir.join("cpu.max")).unwrap(), "50000 100000");
        // A file the kernel does not offer (controller missing): the start fails, naming it.
        fs::create_dir_all(group.dir.join("pids.max")).unwrap();
        let e = group.create(&[("pids.max".into(), "10".into())]).unwrap_err();
        assert_eq!(e.op, "write");
        assert_eq!(e.path, group.dir.join("pids.max"));
        assert_eq!(e.value.as_deref(), Some("10"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn oom_kill_is_traced_to_the_nearest_group_whose_limit_was_hit() {
        let top = tempdir("oom-scope");
        let parent = top.join("services");
        let group = Group { dir: parent.join("hog") };
        fs::create_dir_all(&group.dir).unwrap();
        let events = |dir: &Path, oom: u64, kills: u64| {
            fs::write(dir.join("memory.events"), format!("max 0\noom {oom}\noom_kill {kills}\n"))
                .unwrap()
        };
        // `top` plays the root group: no memory.events, the walk stops below it.
        events(&parent, 4, 4);
        events(&group.dir, 1, 1);
        let before = group.oom_counters();
        assert_eq!(group.oom_since(&before), None);

        // The group's own limit: its `oom` and its parent's rise together.
        events(&group.dir, 2, 2);
        events(&parent, 5, 5);
        let own = group.oom_since(&before).unwrap();
        assert_eq!((own.kills, own.scope), (1, OomScope::Own));
        assert_eq!(own.limit.as_deref(), Some(group.dir.as_path()));

        // The parent's limit: only the parent's `oom` rose, the kill is in the group.
        events(&group.dir, 1, 3);
        events(&parent, 6, 7);
        let enclosing = group.oom_since(&before).unwrap();
        assert_eq!((enclosing.kills, enclosing.scope), (2, OomScope::Enclosing));
        assert_eq!(enclosing.limit.as_deref(), Some(parent.as_path()));

        // No group hit a limit: the kernel's global OOM killer.
        events(&parent, 4, 5);
        events(&group.dir, 1, 2);
        let system = group.oom_since(&before).unwrap();
        assert_eq!((system.kills, system.scope, system.limit), (1, OomScope::System, None));

        // With local counters: a sibling's own OOM raised the parent's hierarchical `oom`
        // only; a later system-wide kill here is not blamed on the parent.
        let local = |dir: &Path, oom: u64| {
            fs::write(dir.join("memory.events.local"), format!("oom {oom}\noom_kill 0\n")).unwrap()
        };
        local(&parent, 0);
        local(&group.dir, 0);
        events(&parent, 4, 4);
        events(&group.dir, 1, 1);
        let before = group.oom_counters();
        events(&parent, 9, 9);
        events(&group.dir, 1, 2);
        assert_eq!(group.oom_since(&before).unwrap().scope, OomScope::System);
        local(&parent, 1);
        assert_eq!(group.oom_since(&before).unwrap().scope, OomScope::Enclosing);
        fs::remove_dir_all(top).unwrap();
    }

    #[test]
    fn populated_and_oom_counter_are_read_from_the_event_files() {
        let dir = tempdir("events");
        let group = Group { dir: dir.clone() };
        assert!(!group.populated());
        assert_eq!(group.oom_kills(), None);
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\n").unwrap();
        assert!(group.populated());
        assert_eq!(group.oom_kills(), Some(2));
        fs::write(dir.join("cgroup.procs"), "12\n0\n40\n").unwrap();
        assert_eq!(group.pids(), vec![Pid::from_raw(12), Pid::from_raw(40)]);
        fs::remove_dir_all(dir).unwrap();
    }
}
