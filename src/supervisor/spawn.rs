//! Starting one service process: clone into its cgroup, set up the child, exec, and report
//! setup failures.
//!
//! Everything that allocates (argv, environment, user lookup, the container plan) is prepared
//! before the clone, so the child only makes system calls. The child reports a failing step
//! through a close-on-exec pipe as (step, errno, detail); a successful exec closes the pipe,
//! which the parent sees as end-of-file in its event loop, never by waiting. This is how
//! `exec /x failed: ... (ENOENT)` is told apart from a program that ran and exited 127.
//!
//! The child is created with clone3(CLONE_INTO_CGROUP) where the kernel has it (5.7), so it
//! runs no instruction outside its service's cgroup; on older kernels it writes itself into
//! cgroup.procs first thing. Privileges are dropped in this order: the container's mounts and
//! root switch, resource limits (which a user namespace could no longer raise), the
//! container's user namespace, capability bounding set (needs CAP_SETPCAP, so while still
//! root), groups, gid, uid, the remaining capability sets, no_new_privs, chdir,
//! then the seccomp filter, the very last step before exec.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Group, Pid, Uid, User};

use crate::cgroup;
use crate::config::isolation::Rlimit;
use crate::config::{Ident, Service};
use crate::container::{self, Plan, Switch};

/// The steps of child setup, as reported through the status pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    Session = 1,
    Stdio = 2,
    Groups = 3,
    SetGid = 4,
    SetUid = 5,
    Workdir = 6,
    Exec = 7,
    Cgroup = 8,
    Container = 9,
    Rlimits = 10,
    CapBound = 11,
    Caps = 12,
    NoNewPrivs = 13,
    Seccomp = 14,
    /// The container's init (`[container] init`) could not fork the service.
    Init = 15,
    /// Not a failure: the container root was switched with pivot_root.
    PivotRoot = 20,
    /// Not a failure: pivot_root was impossible (initramfs root); move-mount + chroot used.
    MoveChroot = 21,
    /// Not a failure: under the container's init, the service has exec'd (the status pipe
    /// stays open for the records below).
    Running = 22,
    /// Not a failure: the service under the container's init exited; `detail` is its code.
    ServiceExited = 23,
    /// Not a failure: the service under the container's init was killed; `detail` is the
    /// signal.
    ServiceKilled = 24,
    /// Not a failure: the kernel has no close_range (Linux < 5.11), the slow way was taken.
    NoCloseRange = 25,
    /// Not a failure: no mount_setattr (Linux < 5.12): read-only volumes bind the top mount.
    NoMountSetattr = 26,
}

const STEPS: &[Step] = &[
    Step::Session,
    Step::Stdio,
    Step::Groups,
    Step::SetGid,
    Step::SetUid,
    Step::Workdir,
    Step::Exec,
    Step::Cgroup,
    Step::Container,
    Step::Rlimits,
    Step::CapBound,
    Step::Caps,
    Step::NoNewPrivs,
    Step::Seccomp,
    Step::PivotRoot,
    Step::MoveChroot,
    Step::Init,
    Step::Running,
    Step::ServiceExited,
    Step::ServiceKilled,
    Step::NoCloseRange,
    Step::NoMountSetattr,
];

impl Step {
    pub fn from_code(code: u32) -> Option<Step> {
        STEPS.iter().copied().find(|s| *s as u32 == code)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Step::Session => "setsid",
            Step::Stdio => "set up stdin/stdout/stderr",
            Step::Groups => "setgroups",
            Step::SetGid => "setgid",
            Step::SetUid => "setuid",
            Step::Workdir => "chdir to workdir",
            Step::Exec => "exec",
            Step::Cgroup => "join its cgroup",
            Step::Container => "container setup",
            Step::Rlimits => "setrlimit",
            Step::CapBound => "drop capabilities from the bounding set",
            Step::Caps => "set capabilities",
            Step::NoNewPrivs => "set no_new_privs",
            Step::Seccomp => "install the seccomp filter",
            Step::PivotRoot => "pivot_root",
            Step::MoveChroot => "move-mount + chroot",
            Step::Init => "fork the service under the container's init",
            Step::Running => "exec under the container's init",
            Step::ServiceExited => "exit under the container's init",
            Step::ServiceKilled => "death by a signal under the container's init",
            Step::NoCloseRange => "close_range",
            Step::NoMountSetattr => "mount_setattr",
        }
    }

    /// Whether this record only informs (the exec may still follow).
    pub fn is_note(self) -> bool {
        matches!(
            self,
            Step::PivotRoot
                | Step::MoveChroot
                | Step::Running
                | Step::ServiceExited
                | Step::ServiceKilled
                | Step::NoCloseRange
                | Step::NoMountSetattr
        )
    }
}

/// One record of the status pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub step: Option<Step>,
    pub errno: Errno,
    /// Step-specific: the index of the failed container operation.
    pub detail: u32,
}

const RECORD: usize = 12;

/// What the service needs from the supervisor to start.
pub struct Context<'a> {
    /// The service's cgroup, created and limited already; None without cgroup2.
    pub group: Option<&'a cgroup::Group>,
    pub containers: &'a container::Paths,
}

/// Why a service could not even be forked.
#[derive(Debug)]
pub enum SpawnError {
    /// The user or group named in the file does not exist (or the lookup failed).
    Credentials(String),
    /// An argument or variable that cannot be passed to execve.
    Argument(String),
    /// A system call in the parent failed: the operation, its object and the errno.
    Sys { op: &'static str, path: String, errno: Errno },
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            SpawnError::Credentials(m) | SpawnError::Argument(m) => f.write_str(m),
            SpawnError::Sys { op, path, errno } => {
                write!(f, "{op} {path}: {} ({errno:?})", errno.desc())
            }
        }
    }
}

/// A started child: its pid and the parent's ends of its pipes.
pub struct Child {
    pub pid: Pid,
    /// Labels of the container operations, to name a failed one in the log.
    pub labels: Vec<String>,
    /// Output of the service (stdout and stderr share it); None when on the console.
    pub output: Option<OwnedFd>,
    /// Reads (step, errno) on a failed setup, end-of-file after a successful exec.
    pub status: OwnedFd,
}

/// Everything the child needs, prepared before fork.
struct Prepared {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    workdir: CString,
    creds: Option<(Uid, Gid, Vec<Gid>)>,
    rlimits: Vec<Rlimit>,
    /// Capabilities to keep, as a mask; None: leave them alone.
    caps: Option<u64>,
    /// The highest capability number this kernel knows.
    last_cap: u32,
    no_new_privs: bool,
    /// Run a reaping init as PID 1 of the container, with the service as its child.
    init: bool,
    /// PID 1's soft open-file limit: no descriptor of it is at or above this.
    fd_limit: i32,
    /// Compiled here, so the child only calls seccomp(2).
    seccomp: Option<crate::seccomp::Program>,
    plan: Option<Plan>,
    /// cgroup.procs of the service's group, for kernels without CLONE_INTO_CGROUP.
    cgroup_procs: Option<OwnedFd>,
}

/// The soft open-file limit brig was started with, when [`raise_open_file_limit`] raised it.
/// (A OnceLock rather than an AtomicU64: 32-bit MIPS has no 64-bit atomics.)
static INHERITED_NOFILE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Raises PID 1's soft open-file limit to the hard one. Every service costs PID 1 two or three
/// descriptors (pipes, cgroup), and the kernel starts init with a soft limit of 1024, which
/// ran out at about 630 services. Services still get the original limit (programs using
/// select(2) break above 1024).
pub fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    if soft >= hard {
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            let _ = INHERITED_NOFILE.set(soft);
            log::debug!("open-file limit raised from {soft} to {hard}");
        }
        Err(e) => log::warn!("setrlimit(RLIMIT_NOFILE, {hard}): {} ({e:?})", e.desc()),
    }
}

/// The PATH given to services that do not set their own.
pub const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Forks and execs the service. Never blocks: the outcome of exec arrives on `Child::status`.
pub fn spawn(svc: &Service, ctx: &Context) -> Result<Child, SpawnError> {
    let plan = container::prepare(svc, ctx.containers).map_err(|e| SpawnError::Sys {
        op: e.op,
        path: e.path.display().to_string(),
        errno: e.errno,
    })?;
    let mut prepared = prepare(svc, plan.as_ref().and_then(|p| p.accounts.as_deref()))?;
    prepared.plan = plan;
    let cgroup_dir = match ctx.group {
        Some(g) => {
            let dir = g.dir.display().to_string();
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            prepared.cgroup_procs =
                Some(open_fd(&format!("{dir}/cgroup.procs"), OFlag::O_WRONLY | OFlag::O_CLOEXEC)?);
            Some(open_fd(&dir, flags)?)
        }
        None => None,
    };
    let (out_read, out_write) = pipe()?;
    let (status_read, status_write) = pipe()?;
    let stdin_path = if svc.console { "/dev/console" } else { "/dev/null" };
    let stdin = open_fd(stdin_path, OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    let (stdout, output) = if svc.console {
        (stdin.as_raw_fd(), None)
    } else {
        set_nonblocking(&out_read)?;
        (out_write.as_raw_fd(), Some(out_read))
    };

    let ns = prepared.plan.as_ref().map_or(0, |p| p.clone_flags);
    match clone_child(ns, cgroup_dir.as_ref().map(AsRawFd::as_raw_fd)) {
        Ok(Cloned::Child { placed }) => {
            if placed {
                prepared.cgroup_procs = None;
            }
            child(&prepared, stdin.as_raw_fd(), stdout, svc.console, status_write.as_raw_fd())
        }
        Ok(Cloned::Parent(pid)) => Ok(Child {
            pid,
            labels: prepared.plan.map(|p| p.labels).unwrap_or_default(),
            output,
            status: status_read,
        }),
        Err(errno) => Err(SpawnError::Sys { op: "clone", path: svc.exec[0].clone(), errno }),
    }
}

enum Cloned {
    Parent(Pid),
    /// In the child; `placed`: already in the service's cgroup.
    Child {
        placed: bool,
    },
}

/// The argument of clone3(2), as of Linux 5.7 (CLONE_INTO_CGROUP).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn clone3(flags: u64, cgroup: Option<RawFd>) -> Result<Cloned, Errno> {
    let mut args = CloneArgs { flags, exit_signal: libc::SIGCHLD as u64, ..CloneArgs::default() };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // SAFETY: without CLONE_VM and without a stack, clone3 duplicates the process like fork:
    // the child continues on its own copy of this stack. PID 1 is single-threaded, so no lock
    // is held by another thread, and the child only makes system calls on prepared data
    // before it execs or _exits.
    let rc = unsafe {
        libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>())
    };
    match rc {
        0 => Ok(Cloned::Child { placed: cgroup.is_some() }),
        pid if pid > 0 => Ok(Cloned::Parent(Pid::from_raw(pid as i32))),
        _ => Err(Errno::last()),
    }
}

/// clone(2) with the namespaces `ns` and no new stack: like fork, the child runs on its copy
/// of this stack. With every argument but the flags zero, the differing argument orders of
/// the architectures do not matter.
fn clone_legacy(ns: u64) -> Result<Cloned, Errno> {
    let flags = ns | libc::SIGCHLD as u64;
    // SAFETY: as for clone3: no CLONE_VM, no stack, single-threaded parent, and only system
    // calls on prepared data in the child before it execs or _exits.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0, 0, 0, 0) };
    match rc {
        0 => Ok(Cloned::Child { placed: false }),
        pid if pid > 0 => Ok(Cloned::Parent(Pid::from_raw(pid as i32))),
        _ => Err(Errno::last()),
    }
}

/// Kernel features found missing, each reported once per boot.
static CLONE3_MISSING: AtomicBool = AtomicBool::new(false);
pub static CLOSE_RANGE_MISSING: AtomicBool = AtomicBool::new(false);
pub static MOUNT_SETATTR_MISSING: AtomicBool = AtomicBool::new(false);

/// True the first time it is asked for `flag`: the moment to report what it stands for.
pub fn first_time(flag: &AtomicBool) -> bool {
    !flag.swap(true, std::sync::atomic::Ordering::Relaxed)
}

/// clone3 into the cgroup with the namespaces `ns`; kernels before 5.7 reject
/// CLONE_INTO_CGROUP (E2BIG or EINVAL) and get clone3 without it; kernels before 5.3 (or a
/// sandbox whose seccomp profile refuses clone3) get clone(2), with the same namespaces. In
/// both fallbacks the child joins its cgroup itself before anything else.
fn clone_child(ns: u64, cgroup: Option<RawFd>) -> Result<Cloned, Errno> {
    match clone3(ns, cgroup) {
        Err(Errno::E2BIG | Errno::EINVAL) if cgroup.is_some() => {
            log::debug!("clone3: no CLONE_INTO_CGROUP, the child joins its cgroup itself");
            clone3(ns, None).map(|c| match c {
                Cloned::Child { .. } => Cloned::Child { placed: false },
                parent => parent,
            })
        }
        Err(e @ (Errno::ENOSYS | Errno::EPERM)) => {
            if first_time(&CLONE3_MISSING) {
                log::warn!(
                    "clone3 failed: {} ({e:?}): services are started with clone(2) and join \
                     their cgroup after it (Linux 5.3 has clone3, 5.7 CLONE_INTO_CGROUP)",
                    e.desc()
                );
            }
            clone_legacy(ns)
        }
        other => other,
    }
}

/// `accounts`: the root whose /etc/passwd and /etc/group name the service's user and group
/// (a container's image); None: the host's.
fn prepare(svc: &Service, accounts: Option<&Path>) -> Result<Prepared, SpawnError> {
    let cstring = |s: &str| {
        CString::new(s).map_err(|_| SpawnError::Argument(format!("{s:?} contains a NUL byte")))
    };
    let argv = svc.exec.iter().map(|a| cstring(a)).collect::<Result<Vec<_>, _>>()?;
    let mut env = svc.env.clone();
    env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
    let userns = svc.container.as_ref().and_then(|c| c.user_namespace);
    let creds = match accounts {
        Some(root) => image_credentials(svc, root)?,
        None => credentials(svc)?,
    };
    // In a user namespace the ids are always set: until then the child is host root.
    let mut creds = match (creds, userns) {
        (None, Some(_)) => Some((Uid::from_raw(0), Gid::from_raw(0), vec![Gid::from_raw(0)])),
        (creds, _) => creds,
    };
    if let (Some(u), Some(c)) = (userns, creds.as_mut()) {
        mapped(svc, &u, c)?;
    }
    if let Some((uid, _, _)) = &creds {
        let account = match accounts {
            Some(root) => {
                container::users::user_by_uid(root, uid.as_raw()).map(|a| (a.home, a.name))
            }
            None => User::from_uid(*uid)
                .ok()
                .flatten()
                .map(|u| (u.dir.to_string_lossy().into_owned(), u.name)),
        };
        if let Some((home, name)) = account {
            env.entry("HOME".into()).or_insert(home);
            env.entry("USER".into()).or_insert(name);
        }
    }
    let envp = env.iter().map(|(k, v)| cstring(&format!("{k}={v}"))).collect::<Result<_, _>>()?;
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(40);
    let mut rlimits = svc.rlimits.clone();
    // Services get the open-file limit brig itself was started with, not the one it raised.
    let inherited = INHERITED_NOFILE.get().copied().unwrap_or(0);
    if inherited != 0 && !rlimits.iter().any(|r| r.resource == libc::RLIMIT_NOFILE as i32) {
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap_or((inherited, inherited));
        rlimits.insert(0, Rlimit { resource: libc::RLIMIT_NOFILE as i32, soft: inherited, hard });
    }
    let seccomp = match &svc.seccomp {
        Some(filter) => Some(
            filter.compile().map_err(|e| SpawnError::Argument(format!("seccomp filter: {e}")))?,
        ),
        None => None,
    };
    Ok(Prepared {
        rlimits,
        seccomp,
        caps: svc.capabilities.map(|c| c.0),
        last_cap,
        no_new_privs: svc.no_new_privs,
        init: svc.container.as_ref().is_some_and(|c| c.init),
        fd_limit: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft.min(1 << 20) as i32),
        plan: None,
        cgroup_procs: None,
        path: argv[0].clone(),
        argv,
        envp,
        workdir: CString::new(svc.workdir.as_os_str().as_bytes())
            .map_err(|_| SpawnError::Argument("workdir contains a NUL byte".into()))?,
        creds,
    })
}

/// Resolves `user` and `group` to ids, with the user's supplementary groups. None: stay root.
fn credentials(svc: &Service) -> Result<Option<(Uid, Gid, Vec<Gid>)>, SpawnError> {
    if svc.user.is_none() && svc.group.is_none() {
        return Ok(None);
    }
    let user = match &svc.user {
        None => None,
        Some(Ident::Id(id)) => {
            Some((Uid::from_raw(*id), User::from_uid(Uid::from_raw(*id)).ok().flatten()))
        }
        Some(Ident::Name(name)) => match User::from_name(name) {
            Ok(Some(u)) => Some((u.uid, Some(u))),
            Ok(None) => {
                return Err(SpawnError::Credentials(format!("user {name:?} does not exist")))
            }
            Err(e) => {
                return Err(SpawnError::Credentials(format!("looking up user {name:?}: {e}")))
            }
        },
    };
    let gid = match &svc.group {
        Some(Ident::Id(id)) => Gid::from_raw(*id),
        Some(Ident::Name(name)) => match Group::from_name(name) {
            Ok(Some(g)) => g.gid,
            Ok(None) => {
                return Err(SpawnError::Credentials(format!("group {name:?} does not exist")))
            }
            Err(e) => {
                return Err(SpawnError::Credentials(format!("looking up group {name:?}: {e}")))
            }
        },
        // A numeric user without an account gets the group of the same number, never
        // root's.
        None => match &user {
            Some((_, Some(u))) => u.gid,
            Some((uid, None)) => Gid::from_raw(uid.as_raw()),
            None => Gid::from_raw(0),
        },
    };
    let uid = user.as_ref().map_or(Uid::from_raw(0), |(uid, _)| *uid);
    let groups = match user.as_ref().and_then(|(_, u)| u.as_ref()) {
        Some(u) => CString::new(u.name.as_bytes())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, gid).ok())
            .unwrap_or_else(|| vec![gid]),
        None => vec![gid],
    };
    Ok(Some((uid, gid, groups)))
}

/// As [`credentials`], with names looked up in the files of the image at `root`.
fn image_credentials(
    svc: &Service,
    root: &Path,
) -> Result<Option<(Uid, Gid, Vec<Gid>)>, SpawnError> {
    use container::users;
    if svc.user.is_none() && svc.group.is_none() {
        return Ok(None);
    }
    let missing = |what: &str, name: &str| {
        SpawnError::Credentials(format!(
            "{what} {name:?} does not exist in the image's {}",
            root.join(if what == "user" { "etc/passwd" } else { "etc/group" }).display()
        ))
    };
    let account = match &svc.user {
        None => None,
        Some(Ident::Id(id)) => Some((*id, users::user_by_uid(root, *id))),
        Some(Ident::Name(name)) => {
            let a = users::user_by_name(root, name).ok_or_else(|| missing("user", name))?;
            Some((a.uid, Some(a)))
        }
    };
    let gid = match &svc.group {
        Some(Ident::Id(id)) => *id,
        Some(Ident::Name(name)) => {
            users::group_by_name(root, name).ok_or_else(|| missing("group", name))?
        }
        None => match &account {
            Some((_, Some(a))) => a.gid,
            Some((uid, None)) => *uid,
            None => 0,
        },
    };
    let groups = match account.as_ref().and_then(|(_, a)| a.as_ref()) {
        Some(a) => users::group_list(root, &a.name, gid),
        None => vec![gid],
    };
    let uid = account.map_or(0, |(uid, _)| uid);
    Ok(Some((
        Uid::from_raw(uid),
        Gid::from_raw(gid),
        groups.into_iter().map(Gid::from_raw).collect(),
    )))
}

/// In a user namespace every id the child sets must be mapped: the user and the group are
/// errors, supplementary groups outside the map are left out.
fn mapped(
    svc: &Service,
    u: &crate::config::isolation::UserNamespace,
    (uid, gid, groups): &mut (Uid, Gid, Vec<Gid>),
) -> Result<(), SpawnError> {
    if !u.uid.contains(uid.as_raw()) {
        return Err(SpawnError::Credentials(format!(
            "uid {uid} of the service is outside container.uid_map {}",
            u.uid
        )));
    }
    if !u.gid.contains(gid.as_raw()) {
        return Err(SpawnError::Credentials(format!(
            "gid {gid} of the service is outside container.gid_map {}",
            u.gid
        )));
    }
    let before = groups.len();
    groups.retain(|g| u.gid.contains(g.as_raw()));
    if groups.len() != before {
        log::debug!(
            "service {}: supplementary groups outside gid_map {} left out",
            svc.name,
            u.gid
        );
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|errno| SpawnError::Sys {
        op: "pipe2",
        path: String::new(),
        errno,
    })
}

fn open_fd(path: &str, flags: OFlag) -> Result<OwnedFd, SpawnError> {
    let fd = open(Path::new(path), flags, Mode::empty()).map_err(|errno| SpawnError::Sys {
        op: "open",
        path: path.into(),
        errno,
    })?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

pub fn set_nonblocking(fd: &OwnedFd) -> Result<(), SpawnError> {
    use nix::fcntl::{fcntl, FcntlArg};
    let sys = |errno| SpawnError::Sys { op: "fcntl O_NONBLOCK", path: String::new(), errno };
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(sys)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(sys)?;
    Ok(())
}

/// The child side: runs between clone and exec, never returns.
fn child(p: &Prepared, stdin: RawFd, stdout: RawFd, console: bool, status: RawFd) -> ! {
    // Into the service's cgroup first, so everything after is accounted and limited there.
    if let Some(procs) = &p.cgroup_procs {
        if let Err(e) = nix::unistd::write(procs, b"0") {
            fail(status, Step::Cgroup, e, 0);
        }
    }

    // Signals: PID 1 blocks the ones it reads through signalfd and Rust ignores SIGPIPE; a
    // service must start with an empty mask and default dispositions.
    reset_signals();

    if let Err(e) = nix::unistd::setsid() {
        fail(status, Step::Session, e, 0);
    }
    for (from, to) in [(stdin, 0), (stdout, 1), (stdout, 2)] {
        // SAFETY: plain dup2 on descriptors that are open in this process.
        if unsafe { libc::dup2(from, to) } < 0 {
            fail(status, Step::Stdio, Errno::last(), 0);
        }
    }
    if console {
        // A shell on the console wants it as controlling terminal (job control, Ctrl-C).
        // SAFETY: TIOCSCTTY takes an int argument; failure is harmless and ignored.
        unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    }
    if let Some(plan) = &p.plan {
        match container::enter(plan) {
            Ok(Switch::PivotRoot) => note(status, Step::PivotRoot),
            Ok(Switch::MoveChroot) => note(status, Step::MoveChroot),
            Err((index, e)) => fail(status, Step::Container, e, index),
        }
        if container::MOUNT_SETATTR_MISSING.load(std::sync::atomic::Ordering::Relaxed) {
            note(status, Step::NoMountSetattr);
        }
    }
    for r in &p.rlimits {
        let limit = libc::rlimit { rlim_cur: r.soft as _, rlim_max: r.hard as _ };
        // SAFETY: setrlimit reads a struct that lives for the call.
        if unsafe { libc::setrlimit(r.resource as _, &limit) } != 0 {
            fail(status, Step::Rlimits, Errno::last(), r.resource as u32);
        }
    }
    if let Some(plan) = &p.plan {
        if let Err((index, e)) = container::enter_user_namespace(plan) {
            fail(status, Step::Container, e, index);
        }
    }
    if let Some(keep) = p.caps {
        if let Err(e) = drop_bounding(keep, p.last_cap) {
            fail(status, Step::CapBound, e, 0);
        }
        // Keep the permitted set across the uid change; the exec clears this flag.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    if let Some((uid, gid, groups)) = &p.creds {
        if let Err(e) = nix::unistd::setgroups(groups) {
            fail(status, Step::Groups, e, 0);
        }
        if let Err(e) = nix::unistd::setgid(*gid) {
            fail(status, Step::SetGid, e, 0);
        }
        if let Err(e) = nix::unistd::setuid(*uid) {
            fail(status, Step::SetUid, e, 0);
        }
    }
    if let Some(keep) = p.caps {
        if let Err(e) = set_capabilities(keep, p.last_cap) {
            fail(status, Step::Caps, e, 0);
        }
    }
    if p.no_new_privs {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            fail(status, Step::NoNewPrivs, Errno::last(), 0);
        }
    }
    // After the user switch, so a workdir the user cannot enter is an error, as it would be
    // for a login.
    if let Err(e) = nix::unistd::chdir(p.workdir.as_c_str()) {
        fail(status, Step::Workdir, e, 0);
    }
    close_inherited_descriptors(status, p.fd_limit);
    if p.init {
        // Returns in the service; the init stays behind as PID 1 of the container.
        become_init(status);
    }
    // Last, so the filter never sees brig's own setup; an allow list includes what is left:
    // execve, and write + exit_group for a failed exec (IMPLICIT_ALLOW in src/seccomp.rs).
    if let Some(filter) = &p.seccomp {
        if let Err(e) = filter.install() {
            fail(status, Step::Seccomp, e, 0);
        }
    }
    let e = match nix::unistd::execve(&p.path, &p.argv, &p.envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    fail(status, Step::Exec, e, 0)
}

/// `[container] init`: forks the service, then stays as PID 1 of the container's PID
/// namespace, reaping every orphan there until the service ends, and reports on the status
/// pipe when the service has exec'd and how it ended (its exit code or signal, which PID 1
/// of a namespace cannot pass on by dying the same way). Signals need no forwarding: brig
/// signals every process of the service's cgroup, and this init ignores those it has no
/// handler for, as any namespace init does. Returns only in the service.
fn become_init(status: RawFd) {
    let mut exec_pipe = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors into the array.
    if unsafe { libc::pipe2(exec_pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        fail(status, Step::Init, Errno::last(), 0);
    }
    let [exec_read, exec_write] = exec_pipe;
    let service = match clone_legacy(0) {
        Ok(Cloned::Child { .. }) => {
            // SAFETY: closing a descriptor this process owns; the write end closes at exec.
            unsafe { libc::close(exec_read) };
            return;
        }
        Ok(Cloned::Parent(pid)) => pid.as_raw(),
        Err(e) => fail(status, Step::Init, e, 0),
    };
    // SAFETY: closing the service's end in this process.
    unsafe { libc::close(exec_write) };
    // End-of-file once the service has exec'd (or died before: its failure record is on the
    // status pipe already, and brig reads that first).
    let mut byte = 0u8;
    loop {
        // SAFETY: reading one byte into a stack variable.
        let n = unsafe { libc::read(exec_read, (&mut byte as *mut u8).cast(), 1) };
        if n >= 0 || Errno::last() != Errno::EINTR {
            break;
        }
    }
    // SAFETY: closing a descriptor this process owns.
    unsafe { libc::close(exec_read) };
    note(status, Step::Running);
    loop {
        let mut wstatus: libc::c_int = 0;
        // SAFETY: waitpid writes the status into a stack variable.
        let pid = unsafe { libc::waitpid(-1, &mut wstatus, 0) };
        if pid < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            // SAFETY: leaving without the parent's destructors, as `fail` does.
            unsafe { libc::_exit(127) };
        }
        if pid != service {
            continue; // an orphan, reaped
        }
        let (step, value, code) = if libc::WIFEXITED(wstatus) {
            let c = libc::WEXITSTATUS(wstatus);
            (Step::ServiceExited, c, c)
        } else {
            let sig = libc::WTERMSIG(wstatus);
            (Step::ServiceKilled, sig, 128 + sig)
        };
        let msg = record(step, 0, value as u32);
        // SAFETY: writing a stack buffer to the status pipe, then leaving as `fail` does; the
        // kernel ends whatever is left in the namespace.
        unsafe {
            libc::write(status, msg.as_ptr().cast(), msg.len());
            libc::_exit(code)
        }
    }
}

/// Removes every capability not in `keep` from the bounding set, so no exec can regain it.
fn drop_bounding(keep: u64, last_cap: u32) -> Result<(), Errno> {
    for cap in 0..=last_cap.min(63) {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = Errno::last();
            // EINVAL: a capability this kernel does not have.
            if e != Errno::EINVAL {
                return Err(e);
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Sets effective, permitted and inheritable to `keep` and raises `keep` in the ambient set,
/// so a non-root user keeps exactly these capabilities across exec (root gets its bounding
/// set, which [`drop_bounding`] already reduced).
fn set_capabilities(keep: u64, last_cap: u32) -> Result<(), Errno> {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills two CapData structs for version 3, which `data` provides.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) }
        != 0
    {
        return Err(Errno::last());
    }
    for (i, d) in data.iter_mut().enumerate() {
        let want = (keep >> (32 * i)) as u32 & d.permitted;
        *d = CapData { effective: want, permitted: want, inheritable: want };
    }
    // SAFETY: capset reads the header and two CapData structs that live for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } != 0 {
        return Err(Errno::last());
    }
    for cap in 0..=last_cap.min(63) {
        if keep & (1 << cap) == 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
        // EPERM: not in the permitted set (it was not there to keep); EINVAL: unknown here.
        if rc != 0 && !matches!(Errno::last(), Errno::EPERM | Errno::EINVAL) {
            return Err(Errno::last());
        }
    }
    Ok(())
}

fn reset_signals() {
    let empty = nix::sys::signal::SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&empty),
        None,
    );
    for sig in 1..libc::SIGRTMAX() {
        // SAFETY: setting SIG_DFL installs no handler; errors (SIGKILL, SIGSTOP) are expected.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// Marks every descriptor above 2 close-on-exec, so a service inherits only stdio. The status
/// pipe is already close-on-exec and stays open until the exec itself.
fn close_inherited_descriptors(status: RawFd, fd_limit: i32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let rc =
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11 lack close_range: set the flag one descriptor at a time, up to
    // PID 1's own limit (its descriptors can sit anywhere below that, not only below 1024).
    note(status, Step::NoCloseRange);
    for fd in 3..fd_limit {
        // SAFETY: F_SETFD on a descriptor that may not exist fails with EBADF, nothing else.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

fn record(step: Step, errno: i32, detail: u32) -> [u8; RECORD] {
    let mut msg = [0u8; RECORD];
    msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    msg[4..8].copy_from_slice(&errno.to_ne_bytes());
    msg[8..].copy_from_slice(&detail.to_ne_bytes());
    msg
}

/// Tells the parent something that is not a failure.
fn note(status: RawFd, step: Step) {
    let msg = record(step, 0, 0);
    // SAFETY: writing a stack buffer to a pipe.
    unsafe { libc::write(status, msg.as_ptr().cast(), msg.len()) };
}

/// Reports a failed step to the parent and exits the child.
fn fail(status: RawFd, step: Step, errno: Errno, detail: u32) -> ! {
    let msg = record(step, errno as i32, detail);
    // SAFETY: writing a stack buffer to a pipe, then leaving without running any destructors
    // or atexit handlers of the parent's copy of the process.
    unsafe {
        libc::write(status, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Decodes what the status pipe said: no records on a clean exec, notes, and at most one
/// failure, last.
pub fn decode_status(bytes: &[u8]) -> Vec<Record> {
    bytes
        .chunks_exact(RECORD)
        .map(|b| Record {
            step: Step::from_code(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            errno: Errno::from_raw(i32::from_ne_bytes([b[4], b[5], b[6], b[7]])),
            detail: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        })
        .collect()
}

/// Explains an exec failure the way an operator needs it: for ENOENT on a file that exists, the
/// missing piece is the interpreter named on its `#!` line (or the ELF loader).
pub fn explain_exec_error(path: &str, errno: Errno) -> String {
    if errno == Errno::ENOENT && Path::new(path).exists() {
        if let Some(interp) = shebang(Path::new(path)) {
            return format!("interpreter {interp} not found");
        }
        return "a library or the program loader it needs was not found".into();
    }
    if errno == Errno::ENOEXEC {
        return "not an executable format (empty file, or a script without #!)".into();
    }
    errno.desc().to_string()
}

/// The interpreter path of a `#!` script, if the file is one.
fn shebang(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let text = String::from_utf8_lossy(line);
    text.split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_user_without_an_account_gets_its_own_number_as_group_not_root() {
        let text = "exec = [\"/x\"]\nuser = 54321\n";
        let svc = crate::config::service::parse("n", "n.toml".into(), text).unwrap().0;
        let (uid, gid, groups) = credentials(&svc).unwrap().unwrap();
        assert_eq!((uid.as_raw(), gid.as_raw(), groups), (54321, 54321, vec![gid]));
        // The same in an image without /etc/passwd.
        let image = std::env::temp_dir().join(format!("brig-noaccount-{}", std::process::id()));
        std::fs::create_dir_all(&image).unwrap();
        let (uid, gid, groups) = image_credentials(&svc, &image).unwrap().unwrap();
        assert_eq!((uid.as_raw(), gid.as_raw(), groups), (54321, 54321, vec![gid]));
        std::fs::remove_dir_all(image).unwrap();
    }

    #[test]
    fn user_namespace_ids_must_be_mapped_and_unmapped_groups_are_left_out() {
        let text = "exec = [\"/x\"]\n[container]\nimage = \"w\"\nuid_map = \"0:100000:100\"\n";
        let svc = crate::config::service::parse("w", "w.toml".into(), text).unwrap().0;
        let u = svc.container.as_ref().unwrap().user_namespace.unwrap();
        let mut ok =
            (Uid::from_raw(33), Gid::from_raw(33), vec![Gid::from_raw(33), Gid::from_raw(500)]);
        mapped(&svc, &u, &mut ok).unwrap();
        assert_eq!(ok.2, vec![Gid::from_raw(33)]);
        let mut far = (Uid::from_raw(102), Gid::from_raw(0), vec![]);
        let e = mapped(&svc, &u, &mut far).unwrap_err().to_string();
        assert_eq!(e, "uid 102 of the service is outside container.uid_map 0:100000:100");
        let mut far = (Uid::from_raw(1), Gid::from_raw(4000), vec![]);
        assert!(mapped(&svc, &u, &mut far).unwrap_err().to_string().contains("gid 4000"));
    }

    #[test]
    fn status_round_trips_notes_and_failures() {
        let mut bytes = record(Step::MoveChroot, 0, 0).to_vec();
        bytes.extend(record(Step::Container, Errno::EPERM as i32, 7));
        let records = decode_status(&bytes);
        assert_eq!(records.len(), 2);
        assert!(records[0].step.unwrap().is_note());
        assert_eq!(
            records[1],
            Record { step: Some(Step::Container), errno: Errno::EPERM, detail: 7 }
        );
        assert!(decode_status(&[]).is_empty());
        for step in STEPS {
            assert_eq!(Step::from_code(*step as u32), Some(*step));
        }
    }

    #[test]
    fn missing_interpreter_is_named() {
        let path = std::env::temp_dir().join(format!("brig-shebang-{}", std::process::id()));
        std::fs::write(&path, "#!/nonexistent/sh -e\necho hi\n").unwrap();
        let text = explain_exec_error(path.to_str().unwrap(), Errno::ENOENT);
        assert_eq!(text, "interpreter /nonexistent/sh not found");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn missing_program_is_plain_enoent() {
        assert_eq!(explain_exec_error("/nonexistent/prog", Errno::ENOENT), Errno::ENOENT.desc());
    }
}
