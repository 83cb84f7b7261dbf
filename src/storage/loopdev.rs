//! Attaching an image file to a loop device, read-only, through /dev/loop-control
//! (loop(4)): what `mount -o loop` does in util-linux, which PID 1 cannot call.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::StorageError;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// struct loop_info64 of <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

fn err(op: &'static str, path: &Path, errno: Errno) -> StorageError {
    StorageError { op, path: path.to_path_buf(), errno }
}

fn open(path: &Path, write: bool) -> Result<File, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| err("open", path, Errno::from_raw(e.raw_os_error().unwrap_or(0))))
}

/// Attaches `image` to a free loop device, read-only and cleared on last close; returns the
/// device path.
pub fn attach_read_only(image: &Path) -> Result<PathBuf, StorageError> {
    let control_path = Path::new("/dev/loop-control");
    let control = open(control_path, true)?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
    let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    if n < 0 {
        return Err(err("LOOP_CTL_GET_FREE", control_path, Errno::last()));
    }
    let device = PathBuf::from(format!("/dev/loop{n}"));
    let loop_file = open(&device, false)?;
    let backing = open(image, false)?;
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor by value; both fds are open.
    if unsafe { libc::ioctl(loop_file.as_raw_fd(), LOOP_SET_FD as _, backing.as_raw_fd()) } < 0 {
        return Err(err("LOOP_SET_FD", &device, Errno::last()));
    }
    // SAFETY: an all-zero loop_info64 is a valid value of this plain C struct.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    info.flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
    let name = image.as_os_str().as_encoded_bytes();
    let len = name.len().min(info.file_name.len() - 1);
    info.file_name[..len].copy_from_slice(&name[..len]);
    // SAFETY: the ioctl reads one loop_info64 from a valid pointer on an open loop device.
    if unsafe { libc::ioctl(loop_file.as_raw_fd(), LOOP_SET_STATUS64 as _, &info) } < 0 {
        return Err(err("LOOP_SET_STATUS64", &device, Errno::last()));
    }
    Ok(device)
}
