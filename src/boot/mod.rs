//! Boot: turn the bare environment the kernel gives `/init` into a host the supervisor can run
//! services on, then hand over to the supervisor and, at the end, to the shutdown.
//!
//! Each step is named, logged when it fails, and never fatal: a device with a broken
//! /etc/brig or a missing module still comes up as far as it can. PID 1 never returns from
//! [`run`]; if even the event loop cannot be built, it stays alive reaping children, because
//! an exiting PID 1 is a kernel panic.

mod cmdline;
mod modules;
pub mod mounts;

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{sigprocmask, SigmaskHow};

use crate::config::{self, DEFAULT_DIR};
use crate::shutdown;
use crate::supervisor::{self, Supervisor};

/// How brig was started, which decides how much of the host it takes over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Run by the kernel as the system's init: everything, ending in unmount and reboot(2).
    Kernel,
    /// `brig init` typed by someone. As PID 1 of a fresh PID namespace it mounts and sets the
    /// hostname inside its namespaces, signals every process left at the end and calls
    /// reboot(2), which ends the namespace; it never loads modules or remounts filesystems,
    /// whose effects reach past the namespace. Not as PID 1 it only supervises and exits at
    /// the end. Either way it keeps the stdio it was given and logs to stderr.
    Manual { config: Option<PathBuf>, socket: Option<PathBuf> },
}

/// Boots and supervises until shutdown. Never returns.
pub fn run(mode: Mode) -> ! {
    let pid1 = std::process::id() == 1;
    let kernel = mode == Mode::Kernel;
    let mut opts = cmdline::Options::default();
    if kernel {
        // Logging first: messages wait in memory until /dev/kmsg exists.
        crate::log::init_system(log::LevelFilter::Info);
        bring_up_host();
        let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        opts = cmdline::parse(&text);
    } else {
        crate::log::init_stderr(log::LevelFilter::Info);
        if pid1 {
            mount_api_filesystems();
        }
    }
    log::info!("brig {} starting as PID {}", env!("CARGO_PKG_VERSION"), std::process::id());
    let (config, socket) = match mode {
        Mode::Manual { config, socket } => (config, socket),
        Mode::Kernel => (None, None),
    };
    let socket = socket.unwrap_or_else(|| PathBuf::from(crate::control::protocol::SOCKET_PATH));
    let dir = config.or(opts.config.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));

    let tree = config::load(&dir);
    let level = if opts.debug { log::LevelFilter::Debug } else { tree.system.log_level.filter() };
    crate::log::set_level(level);
    for d in &tree.diagnostics {
        log::error!("config: {d}");
    }
    log::info!(
        "config {}: {} services, {} broken",
        dir.display(),
        tree.services.len(),
        tree.broken.len()
    );

    if pid1 {
        set_hostname(&tree.system.hostname);
    }
    if kernel {
        modules::load_all(&tree.system.modules, &modules::modules_dir(), Path::new("/sys/module"));
    }
    prepare_signals(pid1, kernel);

    let cgroups = if pid1 { setup_cgroups() } else { None };
    let action = match Supervisor::new(tree, pid1, dir, Some(&socket)) {
        Ok(mut sup) => {
            if let Some(tree) = cgroups {
                sup.set_cgroups(tree);
            }
            sup.run()
        }
        Err(e) => {
            log::error!("cannot start the supervisor: {e}; only reaping from now on");
            reap_forever();
        }
    };
    if !pid1 {
        log::info!("{} requested; not PID 1, so exiting instead", action.name());
        std::process::exit(0);
    }
    let errno = if kernel {
        shutdown::finish(action, Path::new("/proc/self/mountinfo"))
    } else {
        shutdown::end_namespace(action)
    };
    log::error!(
        "reboot({}): {} ({errno:?}); only reaping from now on",
        action.name(),
        errno.desc()
    );
    reap_forever()
}

/// Moves PID 1 into its leaf cgroup and enables controllers for the services. Without
/// cgroup2, services run without groups (no limits, stop by process group).
fn setup_cgroups() -> Option<crate::cgroup::Tree> {
    let mount = Path::new(crate::cgroup::ROOT);
    match crate::cgroup::Tree::setup(mount, Path::new("/proc/self/cgroup")) {
        Ok((tree, warnings)) => {
            for w in warnings {
                log::warn!("cgroup: {w}; services run without that controller");
            }
            log::debug!("cgroup: services under {}", tree.base.join("services").display());
            Some(tree)
        }
        Err(e) => {
            log::warn!("cgroup: {e}; services run without cgroups or limits");
            None
        }
    }
}

/// The host steps only PID 1 takes: session, API filesystems, kernel log, console.
fn bring_up_host() {
    // A session of our own and no controlling terminal: Ctrl-C typed on the serial console
    // must not reach PID 1.
    let _ = nix::unistd::setsid();

    mount_api_filesystems();

    if let Err(e) = crate::log::open_kernel_log() {
        log::warn!("open /dev/kmsg: {e}; logging to syslog only");
    }
    attach_console();

    // Userspace writes to /dev/kmsg are rate limited by default; brig is the one writer that
    // must not lose its lines before syslog runs.
    write_setting("/proc/sys/kernel/printk_devkmsg", "on\n");
}

fn mount_api_filesystems() {
    for m in mounts::TABLE {
        match mounts::ensure(Path::new("/"), m) {
            Ok(true) => log::debug!("mounted {} on {}", m.fstype, m.target),
            Ok(false) => log::debug!("{} already mounted", m.target),
            Err(e) => log::error!("{e}"),
        }
    }
    mounts::dev_links(Path::new("/"));
}

/// Puts /dev/console on stdin, stdout and stderr, without making it a controlling terminal.
/// The kernel may have started us without it when the initramfs lacked /dev/console.
fn attach_console() {
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/console");
    match console {
        Ok(file) => {
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors of this process; `file` is open.
                unsafe { libc::dup2(file.as_raw_fd(), fd) };
            }
        }
        Err(e) => log::warn!("open /dev/console: {e}"),
    }
}

fn write_setting(path: &str, value: &str) {
    if let Err(e) = std::fs::write(path, value) {
        log::debug!("write {path}: {e}");
    }
}

fn set_hostname(name: &str) {
    match nix::unistd::sethostname(name) {
        Ok(()) => log::debug!("hostname set to {name}"),
        Err(e) => log::error!("sethostname {name:?}: {} ({e:?})", e.desc()),
    }
}

/// Blocks the signals the supervisor reads through its signalfd, and makes sure they reach it.
fn prepare_signals(pid1: bool, kernel: bool) {
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&supervisor::handled_signals()), None) {
        log::error!("sigprocmask: {} ({e:?})", e.desc());
    }
    if kernel {
        // Ctrl-Alt-Del becomes SIGINT to PID 1 instead of an immediate reboot.
        if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
            log::warn!("reboot(CAD_OFF): {} ({e:?})", e.desc());
        }
    } else if !pid1 {
        // `brig init` under another init: orphans of our services must still come to us.
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            log::warn!("prctl(PR_SET_CHILD_SUBREAPER): {}", std::io::Error::last_os_error());
        }
    }
}

/// The last resort when the supervisor cannot run or reboot(2) failed: PID 1 must neither exit
/// nor leave zombies.
fn reap_forever() -> ! {
    loop {
        match nix::sys::wait::wait() {
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}
