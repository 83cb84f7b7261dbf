//! Root storage: the OpenWrt-style root of an appliance, and the durable files brig keeps.
//!
//! From the initramfs, PID 1 mounts a read-only base (a squashfs image, or the initramfs
//! itself) at `/rom`, the data partition at `/overlay`, merges them with overlayfs, moves the
//! API filesystems over, moves the merged tree onto `/`, chroots into it and re-executes
//! `/sbin/init` from it. pivot_root(2) cannot be used: the initramfs root cannot be unmounted
//! (it answers EINVAL), which is why the move-and-chroot dance exists (see switch_root(8)).
//!
//! A data partition that is missing, unformatted or will not mount never stops the boot: the
//! upper layer goes on a tmpfs instead, loudly, and `brig status` shows it. State brig writes
//! itself goes through [`write_atomic`], so a power cut leaves the old or the new file, never
//! a torn one.

pub mod loopdev;

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType};

use crate::config::system::Storage;

/// statfs(2) magic of overlayfs: seeing it on `/` means the switch already happened.
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
/// Where the first stage leaves notes (a degraded data partition) for the second.
pub const NOTES: &str = "/run/brig/storage-notes";

/// A failed storage step: the operation, its path and the errno.
#[derive(Debug)]
pub struct StorageError {
    pub op: &'static str,
    pub path: PathBuf,
    pub errno: Errno,
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} {}: {} ({:?})", self.op, self.path.display(), self.errno.desc(), self.errno)
    }
}

fn io_errno(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

fn sys<T>(op: &'static str, path: &Path, r: nix::Result<T>) -> Result<T, StorageError> {
    r.map_err(|errno| StorageError { op, path: path.to_path_buf(), errno })
}

fn sys_io<T>(op: &'static str, path: &Path, r: io::Result<T>) -> Result<T, StorageError> {
    r.map_err(|e| StorageError { op, path: path.to_path_buf(), errno: io_errno(&e) })
}

/// Whether `/` is already the merged root.
pub fn root_is_overlay(root: &Path) -> bool {
    statfs(root).is_ok_and(|fs| fs.filesystem_type() == FsType(OVERLAYFS_MAGIC as _))
}

/// Notes left by the first stage, for `brig status`.
pub fn read_notes() -> Vec<String> {
    fs::read_to_string(NOTES).map(|t| t.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// Builds the merged root and moves into it. On success returns the notes to keep (the caller
/// then re-executes init); on failure the system goes on booting from the initramfs.
pub fn switch_root(cfg: &Storage, factory_reset: bool) -> Result<Vec<String>, StorageError> {
    let mut notes = Vec::new();
    let stage = Path::new("/mnt/.brig");
    let (rom, data, root) = (stage.join("rom"), stage.join("data"), stage.join("root"));
    for dir in [&rom, &data, &root] {
        sys_io("mkdir", dir, fs::create_dir_all(dir))?;
    }

    // The read-only base: a device or image, or the initramfs itself.
    let lower = match &cfg.base {
        Some(base) => {
            mount_base(base, &cfg.base_fstype, &rom, cfg.device_wait)?;
            rom.clone()
        }
        None => PathBuf::from("/"),
    };

    // The writable layer: the data partition, or a tmpfs when it cannot be had.
    if let Err(e) = mount_data(cfg, &data) {
        let note =
            format!("data partition unusable ({e}); changes are kept in RAM and lost at reboot");
        log::error!("storage: {note}");
        notes.push(note);
        sys(
            "mount tmpfs",
            &data,
            mount(Some("tmpfs"), &data, Some("tmpfs"), MsFlags::empty(), Some("mode=0755")),
        )?;
    }
    let reset_marker = data.join("factory-reset");
    if factory_reset || reset_marker.exists() {
        log::warn!("storage: factory reset: discarding every change kept in {}", data.display());
        for dir in ["upper", "work"] {
            match fs::remove_dir_all(data.join(dir)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StorageError {
                        op: "remove",
                        path: data.join(dir),
                        errno: io_errno(&e),
                    })
                }
            }
        }
        let _ = fs::remove_file(&reset_marker);
        notes.push("factory reset done at this boot".into());
    }
    let (upper, work) = (data.join("upper"), data.join("work"));
    sys_io("mkdir", &upper, fs::create_dir_all(&upper))?;
    // overlayfs wants an empty workdir on the same filesystem as the upper; leftovers of a
    // power cut are discarded.
    let _ = fs::remove_dir_all(&work);
    sys_io("mkdir", &work, fs::create_dir_all(&work))?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    sys(
        "mount overlay",
        &root,
        mount(Some("overlay"), &root, Some("overlay"), MsFlags::empty(), Some(options.as_str())),
    )?;

    let init = root.join("sbin/init");
    let executable =
        fs::metadata(&init).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !executable {
        return Err(StorageError {
            op: "find init in the merged root",
            path: init,
            errno: Errno::ENOENT,
        });
    }
    enter(&root, &rom, &data, cfg.base.is_some())?;
    Ok(notes)
}

/// Moves the API filesystems and the layers into `root`, then makes `root` the new `/`.
fn enter(root: &Path, rom: &Path, data: &Path, has_rom: bool) -> Result<(), StorageError> {
    let mut moves: Vec<(PathBuf, PathBuf)> = ["/dev", "/proc", "/sys", "/run", "/tmp"]
        .iter()
        .map(|p| (PathBuf::from(p), root.join(p.trim_start_matches('/'))))
        .collect();
    moves.push((data.to_path_buf(), root.join("overlay")));
    if has_rom {
        moves.push((rom.to_path_buf(), root.join("rom")));
    }
    for (from, to) in &moves {
        sys_io("mkdir", to, fs::create_dir_all(to))?;
        sys(
            "mount --move",
            from,
            mount(Some(from.as_path()), to.as_path(), None::<&str>, MsFlags::MS_MOVE, None::<&str>),
        )?;
    }
    sys("chdir", root, nix::unistd::chdir(root))?;
    sys(
        "mount --move to /",
        root,
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>),
    )?;
    sys("chroot", root, nix::unistd::chroot("."))?;
    sys("chdir", Path::new("/"), nix::unistd::chdir("/"))?;
    Ok(())
}

fn mount_base(
    base: &Path,
    fstype: &str,
    target: &Path,
    wait: Duration,
) -> Result<(), StorageError> {
    wait_for(base, wait);
    let meta = sys_io("stat", base, fs::metadata(base))?;
    if meta.file_type().is_block_device() {
        let flags = MsFlags::MS_RDONLY;
        return sys(
            "mount base",
            base,
            mount(Some(base), target, Some(fstype), flags, None::<&str>),
        );
    }
    // An image file: through a loop device (squashfs only).
    let image = sys_io("open", base, File::open(base))?;
    let target_c = CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| {
        StorageError { op: "mount base", path: target.to_path_buf(), errno: Errno::EINVAL }
    })?;
    sys("mount base image", base, loopdev::mount_squashfs(image.as_raw_fd(), &target_c))
}

fn mount_data(cfg: &Storage, target: &Path) -> Result<(), StorageError> {
    wait_for(&cfg.data, cfg.device_wait);
    let options = (!cfg.data_options.is_empty()).then_some(cfg.data_options.as_str());
    let attempt = || {
        mount(
            Some(cfg.data.as_path()),
            target,
            Some(cfg.data_fstype.as_str()),
            MsFlags::MS_NOATIME,
            options,
        )
    };
    match attempt() {
        Ok(()) => Ok(()),
        // EINVAL: no (or another) filesystem on the device.
        Err(Errno::EINVAL) if cfg.format => {
            log::warn!(
                "storage: {} has no {} filesystem: formatting it",
                cfg.data.display(),
                cfg.data_fstype
            );
            format(&cfg.format_command, &cfg.data)?;
            sys("mount data", &cfg.data, attempt())
        }
        Err(errno) => Err(StorageError { op: "mount data", path: cfg.data.clone(), errno }),
    }
}

/// Runs the format command on `device` and waits for it: nothing else runs yet at this point
/// of the boot, so there is nothing to keep responsive.
fn format(command: &[String], device: &Path) -> Result<(), StorageError> {
    let program = command.first().map(PathBuf::from).unwrap_or_default();
    let status = std::process::Command::new(&program)
        .args(&command[1.min(command.len())..])
        .arg(device)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err(StorageError { op: "format", path: device.to_path_buf(), errno: Errno::EIO }),
        Err(e) => {
            Err(StorageError { op: "run format command", path: program, errno: io_errno(&e) })
        }
    }
}

/// Block devices show up when their driver probes, which may be just after the module loaded.
fn wait_for(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `bytes` to `path` so that after a power cut the file is either the old one or the
/// new one: temporary file, fsync, rename over, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = sys_io("create", &tmp, File::create(&tmp))?;
    sys_io("write", &tmp, file.write_all(bytes))?;
    sys_io("fsync", &tmp, file.sync_all())?;
    drop(file);
    sys_io("rename", path, fs::rename(&tmp, path))?;
    sync_dir(dir)
}

/// fsync of a directory, which makes a rename in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let handle = sys_io("open", dir, File::open(dir))?;
    sys_io("fsync", dir, handle.sync_all())
}

/// Saves the `*.toml` files of config directory `src` (and of its `services/`) as `dest`,
/// replacing the previous copy in two renames: after a power cut either the old copy or the
/// new one is complete, and the loader falls back to `dest.old` when `dest` is missing.
pub fn save_snapshot(src: &Path, dest: &Path) -> Result<(), StorageError> {
    let fresh = dest.with_extension("new");
    let old = dest.with_extension("old");
    let _ = fs::remove_dir_all(&fresh);
    sys_io("mkdir", &fresh.join("services"), fs::create_dir_all(fresh.join("services")))?;
    for sub in ["", "services"] {
        let entries = match fs::read_dir(src.join(sub)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(StorageError {
                    op: "read_dir",
                    path: src.join(sub),
                    errno: io_errno(&e),
                })
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                let bytes = sys_io("read", &path, fs::read(&path))?;
                let target = fresh.join(sub).join(entry.file_name());
                write_atomic(&target, &bytes)?;
            }
        }
    }
    sync_dir(&fresh)?;
    let _ = fs::remove_dir_all(&old);
    if dest.exists() {
        sys_io("rename", dest, fs::rename(dest, &old))?;
    }
    sys_io("rename", &fresh, fs::rename(&fresh, dest))?;
    sync_dir(dest.parent().unwrap_or(Path::new("/")))?;
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

/// Re-executes `/sbin/init` of the new root. Returns only on failure.
pub fn reexec_init() -> Errno {
    let Ok(path) = CString::new("/sbin/init") else { return Errno::EINVAL };
    match nix::unistd::execv(&path, &[&path]) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("brig-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("boot-count");
        write_atomic(&path, b"1\n").unwrap();
        write_atomic(&path, b"22\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "22\n");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("boot-count")]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn snapshot_copies_the_config_and_replaces_the_previous_one() {
        let base = std::env::temp_dir().join(format!("brig-snap-{}", std::process::id()));
        let (src, dest) = (base.join("etc"), base.join("last-good"));
        fs::create_dir_all(src.join("services")).unwrap();
        fs::write(src.join("system.toml"), "hostname = \"a\"\n").unwrap();
        fs::write(src.join("services/web.toml"), "exec = [\"/x\"]\n").unwrap();
        fs::write(src.join("services/notes.txt"), "not config").unwrap();
        save_snapshot(&src, &dest).unwrap();
        fs::write(src.join("system.toml"), "hostname = \"b\"\n").unwrap();
        save_snapshot(&src, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("system.toml")).unwrap(), "hostname = \"b\"\n");
        assert!(dest.join("services/web.toml").is_file());
        assert!(!dest.join("services/notes.txt").exists());
        assert!(!base.join("last-good.old").exists() && !base.join("last-good.new").exists());
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn root_of_the_test_host_is_not_an_overlay() {
        assert!(!root_is_overlay(Path::new("/proc")));
    }
}
