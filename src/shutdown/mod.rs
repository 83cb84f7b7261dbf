//! The end of the system: after the supervisor has stopped the services and the remaining
//! processes, flush and unmount the filesystems and hand over to the kernel.
//!
//! Unmounting goes in reverse mount order so that nested mounts come off first. Each
//! filesystem is remounted read-only before its mount point is unmounted: an unmount only
//! detaches one mount, and a filesystem still used through another (the data partition that
//! is the upper layer of an overlay root) would stay writable with its journal dirty. The
//! kernel's own filesystems (proc, sysfs, devtmpfs, ...) hold no data and are left alone,
//! because the last log lines still need /dev.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::reboot::RebootMode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What the system does once everything is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reboot,
    Poweroff,
    Halt,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Reboot => "reboot",
            Action::Poweroff => "poweroff",
            Action::Halt => "halt",
        }
    }

    /// BusyBox init's signal conventions, so its `reboot`, `poweroff` and `halt` work; SIGINT
    /// is what the kernel sends for Ctrl-Alt-Del once CAD is disabled, SIGPWR what UPS
    /// daemons send on power failure.
    pub fn for_signal(sig: Signal) -> Option<Action> {
        match sig {
            Signal::SIGTERM | Signal::SIGINT => Some(Action::Reboot),
            Signal::SIGUSR2 | Signal::SIGPWR => Some(Action::Poweroff),
            Signal::SIGUSR1 => Some(Action::Halt),
            _ => None,
        }
    }

    fn mode(self) -> RebootMode {
        match self {
            Action::Reboot => RebootMode::RB_AUTOBOOT,
            Action::Poweroff => RebootMode::RB_POWER_OFF,
            Action::Halt => RebootMode::RB_HALT_SYSTEM,
        }
    }
}

/// Filesystem types that hold no data of their own: nothing to flush, and unmounting them
/// would take /dev and /proc away from the last steps.
const VIRTUAL_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "configfs",
    "mqueue",
    "hugetlbfs",
    "fusectl",
    "efivarfs",
    "rootfs",
    "binfmt_misc",
];

/// Sends `sig` to every process but PID 1 (kill(-1) skips the caller). Refuses unless the
/// caller is PID 1 of its namespace: from anywhere else kill(-1) reaches the whole host.
pub fn signal_all(sig: Signal) {
    if std::process::id() != 1 {
        log::error!("refusing kill(-1, {}): not PID 1", sig.as_str());
        return;
    }
    match kill(Pid::from_raw(-1), sig) {
        // ESRCH: there was nobody left, which is the good case.
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => log::warn!("kill -1 {}: {} ({e:?})", sig.as_str(), e.desc()),
    }
}

/// Syncs, unmounts and reboots. Returns only if reboot(2) failed, with its errno.
pub fn finish(action: Action, mountinfo: &Path) -> Errno {
    nix::unistd::sync();
    log::info!("shutdown: unmounting filesystems");
    match std::fs::read_to_string(mountinfo) {
        Ok(text) => unmount_all(&mounts_to_release(&text)),
        Err(e) => log::warn!("shutdown: cannot read {}: {e}; not unmounting", mountinfo.display()),
    }
    nix::unistd::sync();
    #[cfg(feature = "fault-injection")]
    while crate::boot::fault::STALL_SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed) {
        log::warn!("fault: shutdown stalled before reboot on request");
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
    log::info!("shutdown: {} now", action.name());
    match nix::sys::reboot::reboot(action.mode()) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Ends a PID namespace whose PID 1 is brig: reboot(2) there terminates the namespace (the
/// kernel kills its init with SIGHUP for a restart, SIGINT otherwise) and touches nothing
/// outside it. Returns only on failure.
pub fn end_namespace(action: Action) -> Errno {
    log::info!("shutdown: {} now (ends this PID namespace)", action.name());
    match nix::sys::reboot::reboot(action.mode()) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// A mount point to release, with its filesystem type.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    target: PathBuf,
    fstype: String,
}

/// Mounts that hold data, innermost (last mounted) first. Parses /proc/self/mountinfo
/// (proc(5)): field 5 is the mount point, the type follows the " - " separator.
fn mounts_to_release(mountinfo: &str) -> Vec<Mount> {
    let mut mounts: Vec<Mount> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let target = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some(Mount { target: PathBuf::from(unescape(target)), fstype: fstype.to_string() })
        })
        .filter(|m| !VIRTUAL_FS.contains(&m.fstype.as_str()))
        .collect();
    mounts.reverse();
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let code =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unmount_all(mounts: &[Mount]) {
    for m in mounts {
        // Regression: the data partition under an overlay root was unmounted here and left
        // writable (the overlay keeps its own reference), so every boot replayed its journal.
        remount_read_only(&m.target);
        if m.target == Path::new("/") {
            continue;
        }
        match umount2(&m.target, MntFlags::empty()) {
            Ok(()) => log::debug!("unmounted {}", m.target.display()),
            // Still in use (a process in D state, a lazy reference): it is read-only already,
            // which is what keeps the data safe.
            Err(Errno::EBUSY) => log::debug!("{} busy, left mounted read-only", m.target.display()),
            // Already gone with a parent that was unmounted first.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => log::warn!("umount {}: {} ({e:?})", m.target.display(), e.desc()),
        }
    }
}

fn remount_read_only(target: &Path) {
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    match mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
        Ok(()) => log::debug!("remounted {} read-only", target.display()),
        // The initramfs root cannot be remounted; it holds nothing to protect.
        Err(Errno::EINVAL) => {}
        Err(e) => log::warn!("remount {} read-only: {} ({e:?})", target.display(), e.desc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1 0 0:2 / / rw - rootfs rootfs rw
20 1 0:20 / /proc rw,nosuid - proc proc rw
21 1 0:5 / /dev rw - devtmpfs devtmpfs rw
22 1 0:21 / /run rw - tmpfs tmpfs rw
30 1 254:1 / /data rw - ext4 /dev/vdb rw
31 30 0:40 / /data/my\\040dir rw - tmpfs tmpfs rw
";

    #[test]
    fn data_mounts_come_innermost_first_and_virtual_ones_stay() {
        let targets: Vec<String> =
            mounts_to_release(SAMPLE).into_iter().map(|m| m.target.display().to_string()).collect();
        assert_eq!(targets, vec!["/data/my dir", "/data", "/run"]);
    }

    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(unescape("/a\\011b\\134c"), "/a\tb\\c");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
