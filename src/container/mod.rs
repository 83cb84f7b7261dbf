//! Containers: the root filesystem and the namespaces a `[container]` service runs in.
//!
//! The parent (PID 1) turns the `[container]` table into a [`Plan`]: a flat list of named
//! operations (mkdir, mount, sethostname, pivot_root, ...) with every path already a C string.
//! The child, after clone3 put it in its new namespaces, only walks that list, so it makes
//! system calls and nothing else, and reports a failing operation by its index; the parent
//! turns the index back into the operation's label for the log. Because the plan is data, the
//! unit tests check the exact mount sequence without root.
//!
//! Key choices:
//! - the service is PID 1 of its PID namespace (no helper process in between): it sees itself
//!   as PID 1 and reaps its own orphans, as under any init; when it exits, the kernel kills
//!   whatever is left in the namespace. A program that does not reap should be started through
//!   one that does (BusyBox `sh -c`, for example).
//! - propagation: the child first makes every mount a slave (MS_REC|MS_SLAVE), so host
//!   unmounts still reach it and nothing it mounts reaches the host.
//! - root switch: pivot_root(".", ".") then a lazy unmount of the old root; where the host
//!   root is the initramfs pivot_root fails with EINVAL, and the child falls back to moving
//!   the new root onto / and chroot. It reports which one it used.

pub mod net;
pub mod rootfs;
pub mod userns;
pub mod users;

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::config::{Network, Service, Upper};

/// Where containers keep their files on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `IMAGE_STORE/NAME` is the image directory of image NAME.
    pub image_store: PathBuf,
    /// `STATE/NAME/{upper,work}`: the persistent layer of service NAME.
    pub state: PathBuf,
    /// `RUN/NAME`: the mount point of the container's tmpfs and root (only ever mounted
    /// inside the container's mount namespace).
    pub run: PathBuf,
}

impl Paths {
    pub fn from_system(system: &crate::config::System) -> Paths {
        Paths {
            image_store: system.image_store.clone(),
            state: system.container_state.clone(),
            run: PathBuf::from("/run/brig/containers"),
        }
    }
}

/// One step of container setup, executed by the child in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// mkdir; an existing directory is fine, an existing symlink or file is not (ELOOP,
    /// ENOTDIR). Paths under the container root are made one component at a time, so no
    /// mount or mkdir of the plan follows a symlink that the image or a persistent upper
    /// planted to point at the host.
    Mkdir(CString),
    /// Create an empty file to bind a device node onto; EEXIST is fine.
    Touch(CString),
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: MsFlags,
        data: Option<CString>,
        /// ENOENT is fine (a /proc file this kernel does not have).
        optional: bool,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// A recursive bind of `source` on `target`, every mount of it read-only
    /// (mount_setattr, Linux 5.12); before 5.12 a bind of the top mount alone, read-only, so
    /// nothing under it is writable either way. `optional`: ENOENT is fine.
    BindReadOnly {
        source: CString,
        target: CString,
        optional: bool,
    },
    Hostname(CString),
    LoopbackUp,
    /// chdir into the new root and switch to it (pivot_root, or move-mount + chroot).
    SwitchRoot(CString),
    /// Attach the squashfs image `image_fd` to a free loop device, read-only and cleared
    /// when unmounted, and mount it on `target`.
    LoopMount {
        image_fd: i32,
        target: CString,
    },
    /// Write `content` to an existing file; `optional`: ENOENT is fine.
    WriteFile {
        path: CString,
        content: Vec<u8>,
        optional: bool,
    },
    Chown {
        path: CString,
        uid: u32,
        gid: u32,
    },
    /// Fork a helper that creates a user namespace and waits to be killed (see
    /// [`userns`]).
    UserNsHelper,
    /// Write one line to the helper's `uid_map` or `gid_map`.
    IdMap {
        file: &'static std::ffi::CStr,
        line: CString,
    },
    /// Join the helper's user namespace, then kill and reap the helper.
    JoinUserNs,
    /// An rtnetlink request: on the host's netlink socket (`host`), or on one of the
    /// container's own network namespace; `ignore`: an errno that is fine.
    Netlink {
        host: Option<i32>,
        msg: Vec<u8>,
        ignore: Option<Errno>,
    },
}

/// Which root switch the child used, reported to the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    PivotRoot,
    MoveChroot,
}

/// Everything the child does for a container, with a label per operation for the log.
#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub labels: Vec<String>,
    /// Host-side descriptors of bridge networking, kept open until the clone.
    pub host_fds: Option<net::HostFds>,
    /// A squashfs image, opened for the child to attach to a loop device.
    pub image_fd: Option<OwnedFd>,
    /// Namespaces for clone3 (CLONE_NEW*), without CLONE_NEWCGROUP: the child enters that
    /// one itself once it is in its own cgroup, so the namespace is rooted there.
    pub clone_flags: u64,
    /// Where the user-namespace operations start: [`enter`] runs the ops before this index,
    /// [`enter_user_namespace`] the rest, after the resource limits (which a process in a
    /// user namespace could no longer raise).
    pub user_ops_from: Option<usize>,
    /// The image directory, whose /etc/passwd and /etc/group name the service's user and
    /// group; None for a squashfs image (not readable before the child mounts it).
    pub accounts: Option<PathBuf>,
}

/// Why a container cannot be prepared: the operation, the path and the errno.
#[derive(Debug)]
pub struct PrepareError {
    pub op: &'static str,
    pub path: PathBuf,
    pub errno: Errno,
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} {}: {} ({:?})", self.op, self.path.display(), self.errno.desc(), self.errno)
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> PrepareError + 'a {
    move |e| PrepareError {
        op,
        path: path.to_path_buf(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// The directory of a service's image.
pub fn image_dir(paths: &Paths, image: &str) -> PathBuf {
    if image.starts_with('/') {
        PathBuf::from(image)
    } else {
        paths.image_store.join(image)
    }
}

/// Checks the image and prepares the host side (directories, a clean persistent workdir),
/// then builds the plan. Allocates freely: it runs in PID 1 before clone.
pub fn prepare(svc: &Service, paths: &Paths) -> Result<Option<Plan>, PrepareError> {
    let Some(c) = &svc.container else { return Ok(None) };
    let (image, image_fd) = locate_image(paths, &c.image)?;
    let run = paths.run.join(&svc.name);
    std::fs::create_dir_all(&run).map_err(io_err("mkdir", &run))?;
    let layer = match c.upper {
        Upper::Ephemeral => None,
        Upper::Persistent => {
            let dir = paths.state.join(&svc.name);
            let upper = dir.join("upper");
            let work = dir.join("work");
            std::fs::create_dir_all(&upper).map_err(io_err("mkdir", &upper))?;
            if let Some(u) = &c.user_namespace {
                // The upper's root is the container's /: root inside owns it.
                let (uid, gid) = u.root_on_host();
                std::os::unix::fs::lchown(&upper, Some(uid), Some(gid))
                    .map_err(io_err("chown", &upper))?;
            }
            // A workdir left by a crash or power cut can make the overlay mount fail: it only
            // ever holds overlayfs's scratch files, so start it empty.
            match std::fs::remove_dir_all(&work) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("clean stale workdir", &work)(e)),
            }
            std::fs::create_dir_all(&work).map_err(io_err("mkdir", &work))?;
            Some((upper, work))
        }
    };
    let layer = layer.as_ref().map(|(u, w)| (u.as_path(), w.as_path()));
    let lower = match &image_fd {
        Some(fd) => rootfs::Lower::Squashfs(fd.as_raw_fd()),
        None => rootfs::Lower::Dir(&image),
    };
    let mut plan = rootfs::plan(svc, c, lower, &run, layer);
    if image_fd.is_none() {
        plan.accounts = Some(image.clone());
    }
    plan.image_fd = image_fd;
    if let Some(b) = &c.bridge {
        let (fds, ops) = net::prepare(&svc.name, b)?;
        // Just before the root switch, after `lo` is up.
        let at = plan.ops.len().saturating_sub(1);
        for (k, (label, op)) in ops.into_iter().enumerate() {
            plan.labels.insert(at + k, label);
            plan.ops.insert(at + k, op);
        }
        plan.host_fds = Some(fds);
    }
    Ok(Some(plan))
}

/// Finds the image: the directory `IMAGE_STORE/NAME` (or the absolute path given), else the
/// squashfs file `IMAGE_STORE/NAME.squashfs` (or an absolute path to a file), which is opened
/// here for the child to attach to a loop device.
fn locate_image(paths: &Paths, name: &str) -> Result<(PathBuf, Option<OwnedFd>), PrepareError> {
    let dir = image_dir(paths, name);
    let file = if name.starts_with('/') {
        dir.clone()
    } else {
        paths.image_store.join(format!("{name}.squashfs"))
    };
    if std::fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
        // overlayfs splits its options at ',' and ':'.
        if dir.as_os_str().as_bytes().iter().any(|b| b",:".contains(b)) {
            return Err(PrepareError { op: "use image path", path: dir, errno: Errno::EINVAL });
        }
        return Ok((dir, None));
    }
    match std::fs::File::open(&file) {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => Ok((file, Some(OwnedFd::from(f)))),
        Ok(_) => Err(PrepareError { op: "open image", path: dir, errno: Errno::ENOTDIR }),
        // Name both places looked at: DIR{,.squashfs} for a name in the store.
        Err(e) => {
            let looked = if name.starts_with('/') {
                dir
            } else {
                PathBuf::from(format!("{}{{,.squashfs}}", dir.display()))
            };
            Err(PrepareError {
                op: "open image",
                path: looked,
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
        }
    }
}

/// Clone flags for a container's namespaces.
pub fn clone_flags(network: Network) -> u64 {
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if network != Network::Host {
        flags |= libc::CLONE_NEWNET;
    }
    flags as u64
}

/// Runs the plan in the child. Only system calls on prepared data: safe between clone and
/// exec. On failure returns the index of the failed operation and the errno.
pub fn enter(plan: &Plan) -> Result<Switch, (u32, Errno)> {
    // The cgroup namespace, rooted at the service's own group (the child is in it now).
    // SAFETY: unshare with a namespace flag only changes this process's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return Err((UNSHARE_CGROUP, Errno::last()));
    }
    // Nothing mounted from here on reaches the host; host unmounts still reach us.
    if let Err(e) = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    ) {
        return Err((MAKE_SLAVE, e));
    }
    let end = plan.user_ops_from.unwrap_or(plan.ops.len());
    let mut scratch = Scratch::default();
    run_ops(plan, 0..end, &mut scratch)
}

/// Runs the user-namespace operations of the plan, if any, in the child after [`enter`].
pub fn enter_user_namespace(plan: &Plan) -> Result<(), (u32, Errno)> {
    let Some(from) = plan.user_ops_from else { return Ok(()) };
    run_ops(plan, from..plan.ops.len(), &mut Scratch::default()).map(|_| ())
}

/// State carried from one operation to the next in the child.
#[derive(Default)]
struct Scratch {
    own_netlink: Option<i32>,
    /// The helper holding the new user namespace.
    helper: Option<libc::pid_t>,
}

fn run_ops(
    plan: &Plan,
    range: std::ops::Range<usize>,
    scratch: &mut Scratch,
) -> Result<Switch, (u32, Errno)> {
    let mut switch = Switch::PivotRoot;
    for i in range {
        let Some(op) = plan.ops.get(i) else { break };
        match run_op(op, scratch) {
            Ok(Some(s)) => switch = s,
            Ok(None) => {}
            Err(e) => return Err((u32::try_from(i).unwrap_or(u32::MAX - 2), e)),
        }
    }
    Ok(switch)
}

fn run_op(op: &Op, scratch: &mut Scratch) -> Result<Option<Switch>, Errno> {
    let own_netlink = &mut scratch.own_netlink;
    match op {
        Op::WriteFile { path, content, optional } => {
            match userns::write_file(path.as_c_str(), content) {
                Ok(()) => Ok(None),
                Err(Errno::ENOENT) if *optional => Ok(None),
                Err(e) => Err(e),
            }
        }
        Op::Chown { path, uid, gid } => {
            // SAFETY: lchown takes a live C string and two integers.
            if unsafe { libc::lchown(path.as_ptr(), *uid, *gid) } != 0 {
                return Err(Errno::last());
            }
            Ok(None)
        }
        Op::UserNsHelper => {
            scratch.helper = Some(userns::fork_helper()?);
            Ok(None)
        }
        Op::IdMap { file, line } => {
            let helper = scratch.helper.ok_or(Errno::ESRCH)?;
            userns::write_id_map(helper, file, line.as_bytes()).map(|()| None)
        }
        Op::JoinUserNs => {
            let helper = scratch.helper.take().ok_or(Errno::ESRCH)?;
            userns::join(helper).map(|()| None)
        }
        Op::Netlink { host, msg, ignore } => {
            let fd = match (*host, *own_netlink) {
                (Some(fd), _) | (None, Some(fd)) => fd,
                (None, None) => {
                    // SAFETY: socket(2) with constant arguments; the descriptor is
                    // close-on-exec and lives until the exec.
                    let fd = unsafe {
                        libc::socket(
                            libc::AF_NETLINK,
                            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                            libc::NETLINK_ROUTE,
                        )
                    };
                    if fd < 0 {
                        return Err(Errno::last());
                    }
                    *own_netlink = Some(fd);
                    fd
                }
            };
            match net::send(fd, msg) {
                Err(e) if Some(e) == *ignore => Ok(None),
                other => other.map(|()| None),
            }
        }
        Op::Mkdir(path) => match nix::unistd::mkdir(
            path.as_c_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) => Ok(None),
            Err(Errno::EEXIST) => {
                // Nothing else writes to the container's root while it is set up (the last
                // instance is gone with its cgroup), so what lstat sees is what mount gets.
                let mode = nix::sys::stat::lstat(path.as_c_str())?.st_mode & libc::S_IFMT;
                match mode {
                    libc::S_IFDIR => Ok(None),
                    libc::S_IFLNK => Err(Errno::ELOOP),
                    _ => Err(Errno::ENOTDIR),
                }
            }
            Err(e) => Err(e),
        },
        Op::Touch(path) => {
            let flags = nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_CLOEXEC;
            let fd = nix::fcntl::open(
                path.as_c_str(),
                flags,
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )?;
            let _ = nix::unistd::close(fd);
            Ok(None)
        }
        Op::Mount { source, target, fstype, flags, data, optional } => {
            match nix::mount::mount(
                source.as_deref(),
                target.as_c_str(),
                fstype.as_deref(),
                *flags,
                data.as_deref(),
            ) {
                Ok(()) => Ok(None),
                Err(Errno::ENOENT) if *optional => Ok(None),
                Err(e) => Err(e),
            }
        }
        Op::BindReadOnly { source, target, optional } => match bind_read_only(source, target) {
            Ok(()) => Ok(None),
            Err(Errno::ENOENT) if *optional => Ok(None),
            Err(e) => Err(e),
        },
        Op::Symlink { target, link } => {
            match nix::unistd::symlinkat(target.as_c_str(), None, link.as_c_str()) {
                Ok(()) | Err(Errno::EEXIST) => Ok(None),
                Err(e) => Err(e),
            }
        }
        Op::Hostname(name) => {
            // SAFETY: the pointer and length describe a live C string.
            let rc = unsafe { libc::sethostname(name.as_ptr(), name.as_bytes().len()) };
            if rc != 0 {
                return Err(Errno::last());
            }
            Ok(None)
        }
        Op::LoopbackUp => loopback_up().map(|()| None),
        Op::LoopMount { image_fd, target } => {
            crate::storage::loopdev::mount_squashfs(*image_fd, target).map(|()| None)
        }
        Op::SwitchRoot(root) => switch_root(root).map(Some),
    }
}

/// struct mount_attr of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Set in the child when a read-only volume took the pre-5.12 way, for it to tell brig.
pub static MOUNT_SETATTR_MISSING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// See [`Op::BindReadOnly`].
fn bind_read_only(source: &CString, target: &CString) -> Result<(), Errno> {
    let bind = |flags: MsFlags| {
        nix::mount::mount(
            Some(source.as_c_str()),
            target.as_c_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )
    };
    bind(MsFlags::MS_BIND | MsFlags::MS_REC)?;
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: mount_setattr reads a C string and a struct that live for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = Errno::last();
    if e != Errno::ENOSYS {
        return Err(e);
    }
    // Before 5.12: the top mount only, so no submount is reachable, writable or not.
    MOUNT_SETATTR_MISSING.store(true, std::sync::atomic::Ordering::Relaxed);
    nix::mount::umount2(target.as_c_str(), MntFlags::MNT_DETACH)?;
    bind(MsFlags::MS_BIND)?;
    bind(MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY)
}

/// pivot_root(".", ".") into `root`, or where that is impossible (the host root is the
/// initramfs: EINVAL), move `root` onto / and chroot.
fn switch_root(root: &CString) -> Result<Switch, Errno> {
    nix::unistd::chdir(root.as_c_str())?;
    // SAFETY: pivot_root takes two C strings; "." stays valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    if rc == 0 {
        // The old root is now stacked under "."; detach it so nothing of the host is left.
        nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
        nix::unistd::chdir("/")?;
        return Ok(Switch::PivotRoot);
    }
    let e = Errno::last();
    if e != Errno::EINVAL {
        return Err(e);
    }
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")?;
    Ok(Switch::MoveChroot)
}

/// Sets `lo` up in a fresh network namespace (it starts down).
fn loopback_up() -> Result<(), Errno> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a struct ifreq that lives for the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) };
    let result = if rc == 0 { Ok(()) } else { Err(Errno::last()) };
    let _ = nix::unistd::close(fd);
    result
}

/// The log text for a failed operation index from [`enter`].
pub fn describe_failure(labels: &[String], index: u32) -> String {
    match index {
        UNSHARE_CGROUP => "unshare cgroup namespace".into(),
        MAKE_SLAVE => "make / a recursive slave mount".into(),
        i => labels.get(i as usize).cloned().unwrap_or_else(|| format!("container setup step {i}")),
    }
}

/// Failure indexes of the steps before the plan.
const UNSHARE_CGROUP: u32 = u32::MAX;
const MAKE_SLAVE: u32 = u32::MAX - 1;
