//! A container's user namespace, entered by the child after its root switch.
//!
//! Why a helper: id maps that reach beyond the writer's own uid may only be written by a
//! process with CAP_SETUID in the *parent* user namespace, and only after the namespace
//! exists. So the child forks a helper that unshares a new user namespace and waits; the child,
//! still root of the host's namespace, writes the helper's uid_map and gid_map, joins the
//! namespace with setns, and kills the helper. PID 1 takes no part and never waits.
//!
//! The namespace comes last, after every mount: the mount and network namespaces stay owned by
//! the host's user namespace, so root in the container holds capabilities over its own files
//! and processes only, never over its mounts or interfaces.
//!
//! Everything here runs between clone and exec: system calls on prepared data and stack
//! buffers, no allocation.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// Forks the helper: it unshares a user namespace, reports the outcome through a pipe and
/// then pauses until it is killed. Returns its pid once the namespace exists.
pub fn fork_helper() -> Result<libc::pid_t, Errno> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the caller is the single-threaded child of PID 1; the helper only makes system
    // calls before it is killed or _exits.
    match unsafe { libc::fork() } {
        -1 => Err(Errno::last()),
        0 => {
            drop(read_end);
            // SAFETY: unshare with a namespace flag only changes this process.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
            let code: i32 = if rc == 0 { 0 } else { Errno::last() as i32 };
            let _ = nix::unistd::write(&write_end, &code.to_ne_bytes());
            drop(write_end);
            if code != 0 {
                // SAFETY: _exit ends this process without running anything else.
                unsafe { libc::_exit(1) };
            }
            loop {
                // SAFETY: pause only waits for a signal; SIGKILL ends the helper.
                unsafe { libc::pause() };
            }
        }
        pid => {
            drop(write_end);
            let mut code = [0u8; 4];
            let n = loop {
                match nix::unistd::read(read_end.as_raw_fd(), &mut code) {
                    Err(Errno::EINTR) => continue,
                    other => break other,
                }
            };
            match n {
                Ok(4) if i32::from_ne_bytes(code) == 0 => Ok(pid),
                Ok(4) => {
                    reap(pid);
                    Err(Errno::from_raw(i32::from_ne_bytes(code)))
                }
                // The helper died before it could tell: report it as gone.
                Ok(_) => {
                    reap(pid);
                    Err(Errno::ESRCH)
                }
                Err(e) => {
                    kill_and_reap(pid);
                    Err(e)
                }
            }
        }
    }
}

/// Writes `line` to /proc/HELPER/FILE (uid_map or gid_map).
pub fn write_id_map(helper: libc::pid_t, file: &CStr, line: &[u8]) -> Result<(), Errno> {
    let mut buf = [0u8; 64];
    let path = proc_path(&mut buf, helper, file.to_bytes()).ok_or(Errno::ENAMETOOLONG)?;
    write_file(path, line)
}

/// Joins the helper's user namespace, then kills and reaps the helper (also on failure).
pub fn join(helper: libc::pid_t) -> Result<(), Errno> {
    let mut buf = [0u8; 64];
    let result = match proc_path(&mut buf, helper, b"ns/user") {
        None => Err(Errno::ENAMETOOLONG),
        Some(path) => open(path, libc::O_RDONLY).and_then(|fd| {
            // SAFETY: setns on a namespace descriptor this function owns.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWUSER) } != 0 {
                return Err(Errno::last());
            }
            Ok(())
        }),
    };
    kill_and_reap(helper);
    result
}

/// Writes `content` to the existing file `path` in one write(2), as /proc files want.
pub fn write_file(path: &CStr, content: &[u8]) -> Result<(), Errno> {
    let fd = open(path, libc::O_WRONLY)?;
    match nix::unistd::write(&fd, content) {
        Ok(n) if n == content.len() => Ok(()),
        Ok(_) => Err(Errno::EIO),
        Err(e) => Err(e),
    }
}

fn open(path: &CStr, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: open takes a live C string; the descriptor returned is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: open just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: kill and waitpid on our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid);
}

fn reap(pid: libc::pid_t) {
    loop {
        // SAFETY: waitpid on our own child, status not needed.
        let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        if rc >= 0 || Errno::last() != Errno::EINTR {
            return;
        }
    }
}

/// Formats `/proc/PID/LEAF` into `buf` without allocating.
fn proc_path<'a>(buf: &'a mut [u8; 64], pid: libc::pid_t, leaf: &[u8]) -> Option<&'a CStr> {
    let mut digits = [0u8; 10];
    let mut n = u32::try_from(pid).ok()?;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut at = 0;
    let mut put = |bytes: &[u8]| -> Option<()> {
        let end = at + bytes.len();
        buf.get_mut(at..end)?.copy_from_slice(bytes);
        at = end;
        Some(())
    };
    put(b"/proc/")?;
    for d in digits[..len].iter().rev() {
        put(&[*d])?;
    }
    put(b"/")?;
    put(leaf)?;
    put(b"\0")?;
    CStr::from_bytes_with_nul(&buf[..at]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_paths_are_formatted_without_allocation() {
        let mut buf = [0u8; 64];
        assert_eq!(proc_path(&mut buf, 2, b"uid_map").unwrap().to_bytes(), b"/proc/2/uid_map");
        let mut buf = [0u8; 64];
        assert_eq!(
            proc_path(&mut buf, 4194304, b"ns/user").unwrap().to_bytes(),
            b"/proc/4194304/ns/user"
        );
        let mut buf = [0u8; 64];
        assert!(proc_path(&mut buf, 1, &[b'x'; 60]).is_none());
        let mut buf = [0u8; 64];
        assert!(proc_path(&mut buf, -1, b"uid_map").is_none());
    }
}
