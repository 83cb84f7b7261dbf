//! The hardware watchdog: PID 1 opens the device named in system.toml, sets its timeout, and
//! kicks it from the main loop, so a stuck loop (not only a dead PID 1) resets the board.
//!
//! Kicks happen only as part of a loop turn; there is no timer thread that would keep kicking
//! while the loop is wedged. At shutdown the device stays open and armed until reboot(2): a
//! shutdown that hangs in an unmount is reset too. Closing with the magic 'V' (which disarms
//! the driver) is done only when the config allows it, to hand the device to another daemon.
//! See Documentation/watchdog/watchdog-api.rst in the kernel tree.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;

// ioctl numbers of <linux/watchdog.h>: _IOR('W', 5, int) and _IOWR('W', 6/7, int).
nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc::c_int);

/// A failed watchdog operation: what, on which device, and the errno.
#[derive(Debug)]
pub struct WatchdogError {
    pub op: &'static str,
    pub path: PathBuf,
    pub errno: Errno,
}

impl std::fmt::Display for WatchdogError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} {}: {} ({:?})", self.op, self.path.display(), self.errno.desc(), self.errno)
    }
}

pub struct Watchdog {
    file: File,
    path: PathBuf,
    /// Time between kicks.
    pub interval: Duration,
    next_kick: Instant,
    magic_close: bool,
}

impl Watchdog {
    /// Opens `path` and sets its timeout. Kicks come every `interval`, or every third of the
    /// timeout the driver actually accepted when none is given.
    pub fn open(
        path: &Path,
        timeout: Duration,
        interval: Option<Duration>,
        magic_close: bool,
    ) -> Result<Watchdog, WatchdogError> {
        let err = |op, errno| WatchdogError { op, path: path.to_path_buf(), errno };
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| err("open", Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        let mut secs = libc::c_int::try_from(timeout.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: the ioctl reads and writes one int through a valid pointer on an open fd.
        if let Err(e) = unsafe { wdioc_settimeout(file.as_raw_fd(), &mut secs) } {
            // Some drivers have a fixed timeout: go on with whatever it is.
            log::warn!("watchdog {}: WDIOC_SETTIMEOUT: {} ({e:?})", path.display(), e.desc());
            // SAFETY: as above, the ioctl writes one int.
            let _ = unsafe { wdioc_gettimeout(file.as_raw_fd(), &mut secs) };
        }
        let actual = Duration::from_secs(u64::try_from(secs.max(1)).unwrap_or(1));
        let interval = interval.unwrap_or(actual / 3).min(actual);
        log::info!(
            "watchdog {}: timeout {}s, kicking every {}ms",
            path.display(),
            actual.as_secs(),
            interval.as_millis()
        );
        let mut dog = Watchdog {
            file,
            path: path.to_path_buf(),
            interval,
            next_kick: Instant::now(),
            magic_close,
        };
        dog.kick(Instant::now());
        Ok(dog)
    }

    /// When the next kick is due.
    pub fn deadline(&self) -> Instant {
        self.next_kick
    }

    /// Kicks if due. Called once per loop turn.
    pub fn kick_if_due(&mut self, now: Instant) {
        if now >= self.next_kick {
            self.kick(now);
        }
    }

    fn kick(&mut self, now: Instant) {
        let mut dummy: libc::c_int = 0;
        // SAFETY: WDIOC_KEEPALIVE takes (and ignores) an int pointer; fd is open.
        if let Err(e) = unsafe { wdioc_keepalive(self.file.as_raw_fd(), &mut dummy) } {
            // Drivers without the ioctl accept any write as a kick.
            if let Err(w) = self.file.write_all(b"k") {
                log::error!("watchdog {}: kick failed: {e:?}, write: {w}", self.path.display());
            }
        }
        self.next_kick = now + self.interval;
    }

    /// Gives the device up: disarmed with the magic 'V' when allowed, else left armed (the
    /// board resets unless someone else opens it and kicks in time).
    pub fn release(mut self) {
        if self.magic_close {
            if let Err(e) = self.file.write_all(b"V") {
                log::warn!("watchdog {}: magic close: {e}", self.path.display());
            } else {
                log::info!("watchdog {}: released (magic close)", self.path.display());
            }
        } else {
            log::warn!(
                "watchdog {}: released without magic close: still armed",
                self.path.display()
            );
        }
    }
}
