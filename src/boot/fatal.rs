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
        // One line: /dev/kmsg keeps a write as one record and the console shows it up to the
        // first newline, and std's message is "panicked at FILE:LINE:COL:\nPAYLOAD".
        let text = info.to_string().replace('\n', " ");
        let message = format!("<2>brig: FATAL internal error: {text}\n");
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

/// A stack for the crash handler, so a stack overflow (SIGSEGV on the guard page) can still be
/// handled.
static mut ALT_STACK: [u8; 16 * 1024] = [0; 16 * 1024];

/// Catches the signals a crash of PID 1 raises (SIGILL/SIGTRAP are what an aborting panic
/// executes when built with panic=immediate-abort, SIGSEGV/SIGBUS/SIGFPE a memory or
/// arithmetic fault, SIGABRT an abort) and applies the same policy as the panic hook. Without
/// this, each of them kills PID 1 and the kernel panics.
pub fn install_crash_handler() {
    let stack = libc::stack_t {
        ss_sp: std::ptr::addr_of_mut!(ALT_STACK).cast(),
        ss_flags: 0,
        ss_size: 16 * 1024,
    };
    // SAFETY: `stack` describes a static buffer that lives as long as the process and that
    // nothing but the kernel's signal delivery ever touches.
    if unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) } != 0 {
        log::warn!("sigaltstack: {}", std::io::Error::last_os_error());
    }
    for sig in
        [libc::SIGILL, libc::SIGTRAP, libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGABRT]
    {
        // SAFETY: a zeroed sigaction is a valid starting value; the handler below only makes
        // async-signal-safe system calls.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_crash as *const () as usize;
        action.sa_flags = libc::SA_ONSTACK | libc::SA_SIGINFO;
        // SAFETY: installs a handler for a signal number that exists; no old action wanted.
        if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } != 0 {
            log::warn!("sigaction {sig}: {}", std::io::Error::last_os_error());
        }
    }
}

/// Runs in signal context: only raw system calls, no allocation, no locks. Never returns
/// (returning would re-run the faulting instruction).
extern "C" fn on_crash(sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let mut msg = *b"<2>brig: FATAL: PID 1 crashed with signal 00\n";
    let at = msg.len() - 3;
    msg[at] = b'0' + ((sig / 10) % 10) as u8;
    msg[at + 1] = b'0' + (sig % 10) as u8;
    // SAFETY: open, write, close, sync, reboot, wait4 and nanosleep are async-signal-safe;
    // the buffers are on this stack.
    unsafe {
        let fd = libc::open(c"/dev/kmsg".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, msg.as_ptr().cast(), msg.len());
            libc::close(fd);
        }
        if POLICY.load(Ordering::Relaxed) == 0 {
            libc::sync();
            libc::reboot(libc::RB_AUTOBOOT);
        }
        loop {
            if libc::wait4(-1, std::ptr::null_mut(), 0, std::ptr::null_mut()) < 0 {
                let pause = libc::timespec { tv_sec: 1, tv_nsec: 0 };
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
        }
    }
}
