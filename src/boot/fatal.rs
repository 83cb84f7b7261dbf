//! What a fatal internal error in PID 1 does, instead of the kernel's "Attempted to kill
//! init!" panic.
//!
//! brig is built with panic=abort and no code path is meant to panic; should one anyway, the
//! panic hook runs before the abort and never returns: it writes the message to the kernel
//! log, then follows `[boot] on_fatal`: sync and reboot (default; the device comes back in a
//! known state), or stay alive reaping children (the services keep running unsupervised).

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::config::system::OnFatal;

static POLICY: AtomicU8 = AtomicU8::new(0);

/// Sets the policy from the configuration (reboot until then).
pub fn set_policy(policy: OnFatal) {
    let value = match policy {
        OnFatal::Reboot => 0,
        OnFatal::Reap => 1,
    };
    POLICY.store(value, Ordering::Relaxed);
}

pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        // The logger's lock may be what was held when the panic happened: write to the kernel
        // log directly.
        let message = format!("<2>brig: FATAL internal error: {info}\n");
        if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            let _ = kmsg.write_all(message.as_bytes());
        }
        if POLICY.load(Ordering::Relaxed) == 0 {
            write_kmsg("<2>brig: fatal error policy: syncing and rebooting\n");
            nix::unistd::sync();
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        }
        write_kmsg("<2>brig: fatal error policy: reaping children only from now on\n");
        loop {
            if nix::sys::wait::wait().is_err() {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }));
}

fn write_kmsg(line: &str) {
    if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = kmsg.write_all(line.as_bytes());
    }
}
