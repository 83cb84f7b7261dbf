//! The API filesystems PID 1 mounts at boot, tolerating the ones already there.
//!
//! A path counts as mounted when it is a mount point (its device differs from its parent's)
//! of the expected filesystem type (statfs magic). Mounting blindly would stack a second
//! instance over the first, which is what an initramfs that already mounted /dev would get.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType};

/// One entry of the boot mount table.
pub struct Mount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
    /// statfs(2) magic of the filesystem, to recognise an existing mount.
    pub magic: i64,
}

const NOSUID: MsFlags = MsFlags::MS_NOSUID;
const NODEV: MsFlags = MsFlags::MS_NODEV;
const NOEXEC: MsFlags = MsFlags::MS_NOEXEC;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// In order: /dev first, because /dev/kmsg is where the log goes until syslog runs.
pub const TABLE: &[Mount] = &[
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: NOSUID,
        data: "mode=0755",
        magic: TMPFS_MAGIC,
    },
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID.union(NODEV).union(NOEXEC),
        data: "",
        magic: 0x9fa0,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID.union(NODEV).union(NOEXEC),
        data: "",
        magic: 0x6265_6572,
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID.union(NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
        magic: 0x1cd1,
    },
    Mount {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID.union(NODEV),
        data: "mode=1777",
        magic: TMPFS_MAGIC,
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID.union(NODEV),
        data: "mode=0755",
        magic: TMPFS_MAGIC,
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID.union(NODEV),
        data: "mode=1777",
        magic: TMPFS_MAGIC,
    },
    // nsdelegate: cgroup namespaces become delegation boundaries (cgroup-v2.rst).
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID.union(NODEV).union(NOEXEC),
        data: "nsdelegate",
        magic: 0x6367_7270,
    },
];

/// A failed mount step: the operation, the path and the errno.
#[derive(Debug)]
pub struct MountError {
    pub op: &'static str,
    pub path: String,
    pub errno: Errno,
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} {}: {} ({:?})", self.op, self.path, self.errno.desc(), self.errno)
    }
}

/// Mounts `m` under `root` unless it is there already. Returns whether it mounted.
pub fn ensure(root: &Path, m: &Mount) -> Result<bool, MountError> {
    let target = root.join(m.target.trim_start_matches('/'));
    let err = |op, errno| MountError { op, path: target.display().to_string(), errno };
    if is_mounted(&target, m.magic) && (m.fstype != "proc" || proc_is_ours(&target)) {
        return Ok(false);
    }
    if let Err(e) = std::fs::create_dir_all(&target) {
        return Err(err("mkdir", Errno::from_raw(e.raw_os_error().unwrap_or(0))));
    }
    let data = (!m.data.is_empty()).then_some(m.data);
    mount(Some(m.source), &target, Some(m.fstype), m.flags, data).map_err(|e| err("mount", e))?;
    Ok(true)
}

/// Whether `path` is a mount point with filesystem magic `magic`.
pub fn is_mounted(path: &Path, magic: i64) -> bool {
    let Ok(fs) = statfs(path) else { return false };
    if fs.filesystem_type() != FsType(magic as _) {
        return false;
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(me), Ok(up)) => me.dev() != up.dev() || path == Path::new("/"),
        _ => false,
    }
}

/// A /proc left by whoever started us may belong to another PID namespace: then /proc/self
/// does not name us, and it must be mounted again.
fn proc_is_ours(proc: &Path) -> bool {
    std::fs::read_link(proc.join("self"))
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
        == Some(std::process::id())
}

/// The conventional /dev links that devtmpfs does not create.
pub fn dev_links(root: &Path) {
    for (link, to) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
    ] {
        let path = root.join(link);
        match std::os::unix::fs::symlink(to, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => log::warn!("symlink {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_a_mount() {
        let dir = std::env::temp_dir().join(format!("brig-mounts-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let magic = statfs(&dir).unwrap().filesystem_type().0 as i64;
        assert!(!is_mounted(&dir.join("sub"), magic));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn host_proc_is_recognised() {
        assert!(is_mounted(Path::new("/proc"), 0x9fa0));
        assert!(!is_mounted(Path::new("/proc"), TMPFS_MAGIC));
    }
}
