//! Attaching a squashfs image file to a loop device and mounting it read-only (loop(4)):
//! what `mount -o loop` does in util-linux, which PID 1 cannot call. Used for the read-only
//! base of the root filesystem and for container images.
//!
//! LOOP_CONFIGURE (Linux 5.8) binds the file and sets read-only and autoclear in one call, so
//! the device is released when its last user is gone. Nothing here allocates: it also runs in
//! a container's child between fork and exec.

use std::ffi::{CStr, CString};

use nix::errno::Errno;
use nix::mount::MsFlags;

/// linux/loop.h
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// struct loop_config of linux/loop.h (Linux 5.8), with its struct loop_info64.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
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
    reserved: [u64; 8],
}

/// Attaches `image_fd` to a free loop device and mounts its squashfs read-only on `target`.
/// Another process may take the free device first (EBUSY): then the next one is tried.
pub fn mount_squashfs(image_fd: i32, target: &CString) -> Result<(), Errno> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDWR | OFlag::O_CLOEXEC;
    let ctl = nix::fcntl::open(c"/dev/loop-control", flags, nix::sys::stat::Mode::empty())?;
    let mut result = Err(Errno::EBUSY);
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl, LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            result = Err(Errno::last());
            break;
        }
        let mut path = [0u8; 32];
        let len = loop_path(n as u32, &mut path);
        let dev = CStr::from_bytes_with_nul(&path[..=len]).map_err(|_| Errno::EINVAL)?;
        let fd = nix::fcntl::open(dev, flags, nix::sys::stat::Mode::empty())?;
        // SAFETY: LoopConfig is plain data; all-zero is a valid value.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = image_fd as u32;
        config.flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads a struct loop_config that lives for the call.
        let rc = unsafe { libc::ioctl(fd, LOOP_CONFIGURE as _, &config as *const LoopConfig) };
        let errno = Errno::last();
        if rc == 0 {
            let ro = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
            result =
                nix::mount::mount(Some(dev), target.as_c_str(), Some("squashfs"), ro, None::<&str>);
            let _ = nix::unistd::close(fd);
            break;
        }
        let _ = nix::unistd::close(fd);
        result = Err(errno);
        if errno != Errno::EBUSY {
            break;
        }
    }
    let _ = nix::unistd::close(ctl);
    result
}

/// Writes `/dev/loopN` and a NUL into `buf` without allocating; returns the NUL's index.
fn loop_path(n: u32, buf: &mut [u8; 32]) -> usize {
    let prefix = b"/dev/loop";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let (mut i, mut v) = (digits.len(), n);
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let end = prefix.len() + digits.len() - i;
    buf[prefix.len()..end].copy_from_slice(&digits[i..]);
    buf[end] = 0;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_config_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn loop_device_paths_are_written_without_allocating() {
        let mut buf = [0u8; 32];
        let end = loop_path(0, &mut buf);
        assert_eq!(&buf[..=end], b"/dev/loop0\0");
        let end = loop_path(4_294_967_295, &mut buf);
        assert_eq!(&buf[..=end], b"/dev/loop4294967295\0");
    }
}
