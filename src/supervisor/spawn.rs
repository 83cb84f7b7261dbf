//! Starting one service process: fork, set up the child, exec, and report exec failures.
//!
//! Everything that allocates (argv, environment, user lookup) is prepared before `fork`, so the
//! child only makes system calls. The child reports a failing step through a close-on-exec pipe
//! as (step, errno); a successful exec closes the pipe, which the parent sees as end-of-file in
//! its event loop, never by waiting. This is how `exec /x failed: ... (ENOENT)` is told apart
//! from a program that ran and exited 127.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Group, Pid, Uid, User};

use crate::config::{Ident, Service};

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
}

impl Step {
    pub fn from_code(code: u32) -> Option<Step> {
        [
            Step::Session,
            Step::Stdio,
            Step::Groups,
            Step::SetGid,
            Step::SetUid,
            Step::Workdir,
            Step::Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == code)
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
        }
    }
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
}

/// The PATH given to services that do not set their own.
pub const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Forks and execs the service. Never blocks: the outcome of exec arrives on `Child::status`.
pub fn spawn(svc: &Service) -> Result<Child, SpawnError> {
    let prepared = prepare(svc)?;
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

    // SAFETY: PID 1 is single-threaded, so the child cannot inherit a lock held by another
    // thread; the child only calls async-signal-safe functions on data prepared above and
    // leaves through execve or _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            child(&prepared, stdin.as_raw_fd(), stdout, svc.console, status_write.as_raw_fd())
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            Ok(Child { pid: child, output, status: status_read })
        }
        Err(errno) => Err(SpawnError::Sys { op: "fork", path: svc.exec[0].clone(), errno }),
    }
}

fn prepare(svc: &Service) -> Result<Prepared, SpawnError> {
    let cstring = |s: &str| {
        CString::new(s).map_err(|_| SpawnError::Argument(format!("{s:?} contains a NUL byte")))
    };
    let argv = svc.exec.iter().map(|a| cstring(a)).collect::<Result<Vec<_>, _>>()?;
    let mut env = svc.env.clone();
    env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
    let creds = credentials(svc)?;
    if let Some((uid, _, _)) = &creds {
        if let Ok(Some(user)) = User::from_uid(*uid) {
            env.entry("HOME".into()).or_insert_with(|| user.dir.to_string_lossy().into_owned());
            env.entry("USER".into()).or_insert(user.name);
        }
    }
    let envp = env.iter().map(|(k, v)| cstring(&format!("{k}={v}"))).collect::<Result<_, _>>()?;
    Ok(Prepared {
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
        None => match &user {
            Some((_, Some(u))) => u.gid,
            _ => Gid::from_raw(0),
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

/// The child side: runs between fork and exec, never returns.
fn child(p: &Prepared, stdin: RawFd, stdout: RawFd, console: bool, status: RawFd) -> ! {
    // Signals: PID 1 blocks the ones it reads through signalfd and Rust ignores SIGPIPE; a
    // service must start with an empty mask and default dispositions.
    reset_signals();

    if let Err(e) = nix::unistd::setsid() {
        fail(status, Step::Session, e);
    }
    for (from, to) in [(stdin, 0), (stdout, 1), (stdout, 2)] {
        // SAFETY: plain dup2 on descriptors that are open in this process.
        if unsafe { libc::dup2(from, to) } < 0 {
            fail(status, Step::Stdio, Errno::last());
        }
    }
    if console {
        // A shell on the console wants it as controlling terminal (job control, Ctrl-C).
        // SAFETY: TIOCSCTTY takes an int argument; failure is harmless and ignored.
        unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    }
    if let Some((uid, gid, groups)) = &p.creds {
        if let Err(e) = nix::unistd::setgroups(groups) {
            fail(status, Step::Groups, e);
        }
        if let Err(e) = nix::unistd::setgid(*gid) {
            fail(status, Step::SetGid, e);
        }
        if let Err(e) = nix::unistd::setuid(*uid) {
            fail(status, Step::SetUid, e);
        }
    }
    // After the user switch, so a workdir the user cannot enter is an error, as it would be
    // for a login.
    if let Err(e) = nix::unistd::chdir(p.workdir.as_c_str()) {
        fail(status, Step::Workdir, e);
    }
    close_inherited_descriptors();
    let e = match nix::unistd::execve(&p.path, &p.argv, &p.envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    fail(status, Step::Exec, e)
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
fn close_inherited_descriptors() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let rc =
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11 lack close_range: set the flag one descriptor at a time.
    for fd in 3..1024 {
        // SAFETY: F_SETFD on a descriptor that may not exist fails with EBADF, nothing else.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Reports a failed step to the parent and exits the child.
fn fail(status: RawFd, step: Step, errno: Errno) -> ! {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&(errno as i32).to_ne_bytes());
    // SAFETY: writing a stack buffer to a pipe, then leaving without running any destructors
    // or atexit handlers of the parent's copy of the process.
    unsafe {
        libc::write(status, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Decodes what the status pipe said: None on a clean exec (no bytes).
pub fn decode_status(bytes: &[u8]) -> Option<(Option<Step>, Errno)> {
    if bytes.len() < 8 {
        return None;
    }
    let step = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let errno = i32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    Some((Step::from_code(step), Errno::from_raw(errno)))
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
    fn status_round_trips() {
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&(Step::SetUid as u32).to_ne_bytes());
        msg[4..].copy_from_slice(&(Errno::EPERM as i32).to_ne_bytes());
        assert_eq!(decode_status(&msg), Some((Some(Step::SetUid), Errno::EPERM)));
        assert_eq!(decode_status(&[]), None);
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
