//! Boot: turn the bare environment the kernel gives `/init` into a host the supervisor can run
//! services on, then hand over to the supervisor and, at the end, to the shutdown.
//!
//! Each step is named, logged when it fails, and never fatal: a device with a broken
//! /etc/brig or a missing module still comes up as far as it can. PID 1 never returns from
//! [`run`]; if even the event loop cannot be built, it stays alive reaping children, because
//! an exiting PID 1 is a kernel panic.

mod cmdline;
mod fatal;
#[cfg(feature = "fault-injection")]
pub mod fault;
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
use crate::storage;
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

/// Where brig keeps the state it writes: the last-known-good configuration, boot counter.
pub const STATE_DIR: &str = "/var/lib/brig";

/// Boots and supervises until shutdown. Never returns.
pub fn run(mode: Mode) -> ! {
    let pid1 = std::process::id() == 1;
    let kernel = mode == Mode::Kernel;
    let mut opts = cmdline::Options::default();
    if kernel {
        // Logging first: messages wait in memory until /dev/kmsg exists.
        crate::log::init_system(log::LevelFilter::Info);
        fatal::install_hook();
        fatal::install_crash_handler();
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
    let mut notes = Vec::new();

    let (mut tree, mut from_last_good) = load_config(&dir, kernel, opts.debug, &mut notes);

    if pid1 {
        set_hostname(&tree.system.hostname);
    }
    if kernel {
        modules::load_all(&tree.system.modules, &modules::modules_dir(), Path::new("/sys/module"));
    }

    // From the initramfs into the merged root (first stage), or notes of that (second).
    if kernel {
        if storage::root_is_overlay(Path::new("/")) {
            // The second stage, whatever the merged root's own system.toml says.
            notes.extend(storage::read_notes());
        } else if let Some(cfg) = tree.system.storage.clone() {
            notes.extend(switch_root(&cfg, opts.factory_reset));
            (tree, from_last_good) = load_config(&dir, kernel, opts.debug, &mut notes);
        }
        fatal::set_policy(tree.system.boot.on_fatal);
        count_boot(&mut notes);
    }
    prepare_signals(pid1, kernel);
    supervisor::spawn::raise_open_file_limit();

    let watchdog = if kernel { open_watchdog(&tree) } else { None };
    let rescue = opts.rescue.then(|| tree.system.boot.rescue_shell.clone());
    let setup = supervisor::Setup {
        owns_system: pid1,
        persistent_state: kernel,
        config_dir: dir,
        socket: Some(socket),
        notes,
        watchdog,
        rescue,
        from_last_good,
    };
    let cgroups = if pid1 { setup_cgroups() } else { None };
    // The watchdog outlives the supervisor: it stays open (armed) through the final sync and
    // unmount until reboot(2), so a shutdown that hangs there is reset too.
    let (action, _watchdog) = match Supervisor::new(tree, setup) {
        Ok(mut sup) => {
            if let Some(tree) = cgroups {
                sup.set_cgroups(tree);
            }
            let action = sup.run();
            (action, sup.take_watchdog())
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

/// Loads the configuration. When it has errors and a last-known-good copy exists (and is
/// itself clean), the system boots that copy instead: a bad update must not brick a device.
/// Returns the tree and whether it is that copy.
fn load_config(
    dir: &Path,
    kernel: bool,
    debug: bool,
    notes: &mut Vec<String>,
) -> (config::Tree, bool) {
    let mut tree = config::load(dir);
    for d in &tree.diagnostics {
        log::error!("config: {d}");
    }
    if tree.diagnostics.iter().any(|d| d.file.ends_with("system.toml")) {
        notes.push(format!(
            "{}/system.toml has errors: hostname, modules and every other system setting are \
             at their defaults",
            dir.display()
        ));
    }
    // A power cut between save_snapshot's two renames leaves only the previous copy, as
    // last-good.old.
    let state = Path::new(STATE_DIR);
    let good = [state.join("last-good"), state.join("last-good.old")]
        .into_iter()
        .find(|p| p.is_dir())
        .unwrap_or_else(|| state.join("last-good"));
    let mut from_last_good = false;
    if kernel && !tree.diagnostics.is_empty() && good.is_dir() {
        let fallback = config::load(&good);
        if fallback.diagnostics.is_empty() {
            let note = format!(
                "{} has {}: booted the last-known-good configuration from {}",
                dir.display(),
                config::count(tree.diagnostics.len(), "error"),
                good.display()
            );
            log::warn!("config: {note}");
            notes.push(note);
            tree = fallback;
            from_last_good = true;
        }
    }
    let level = if debug { log::LevelFilter::Debug } else { tree.system.log_level.filter() };
    crate::log::set_level(level);
    log::info!(
        "config {}: {} services, {} broken",
        dir.display(),
        tree.services.len(),
        tree.broken.len()
    );
    if !dir.is_dir() {
        // A typo in brig.config=, or a directory a boot mount (a fresh /tmp) has covered.
        log::warn!("config {}: no such directory, so no services", dir.display());
    }
    (tree, from_last_good)
}

/// Switches into the merged root and re-executes init there. Returns notes when the switch
/// failed or init could not be re-executed; boot then goes on where it is.
fn switch_root(cfg: &config::system::Storage, factory_reset: bool) -> Vec<String> {
    match storage::switch_root(cfg, factory_reset) {
        Ok(notes) => {
            if !notes.is_empty() {
                let text = notes.join("\n") + "\n";
                let _ = std::fs::create_dir_all("/run/brig");
                if let Err(e) = storage::write_atomic(Path::new(storage::NOTES), text.as_bytes()) {
                    log::warn!("storage: {e}");
                }
            }
            log::info!("storage: switched into the merged root; re-executing /sbin/init");
            let errno = storage::reexec_init();
            log::error!("exec /sbin/init: {} ({errno:?}); going on in this process", errno.desc());
            notes
        }
        Err(e) => {
            let note = format!("storage: {e}; running from the initramfs, changes are not kept");
            log::error!("{note}");
            vec![note]
        }
    }
}

/// Counts boots since the last good one, in a file written atomically.
fn count_boot(notes: &mut Vec<String>) {
    let path = Path::new(STATE_DIR).join("boots-since-good");
    let count =
        std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0)
            + 1;
    let written = std::fs::create_dir_all(STATE_DIR).map_err(|e| e.to_string()).and_then(|()| {
        storage::write_atomic(&path, format!("{count}\n").as_bytes()).map_err(|e| e.to_string())
    });
    match written {
        Ok(()) if count > 1 => notes.push(format!("{count} boots since the last good boot")),
        Ok(()) => {}
        Err(e) => log::warn!("boot counter: {e}"),
    }
}

fn open_watchdog(tree: &config::Tree) -> Option<crate::watchdog::Watchdog> {
    let cfg = tree.system.watchdog.as_ref()?;
    match crate::watchdog::Watchdog::open(&cfg.device, cfg.timeout, cfg.interval, cfg.magic_close) {
        Ok(dog) => Some(dog),
        Err(e) => {
            log::error!("watchdog: {e}; running without it");
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

    // /dev/log queues only 10 datagrams by default: a service printing a burst of lines while
    // syslogd is writing to a slow console would lose most of them.
    write_setting("/proc/sys/net/unix/max_dgram_qlen", "512\n");
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
