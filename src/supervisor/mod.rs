//! The supervisor: one event loop that starts services in dependency order, reaps every child,
//! restarts with backoff, carries service output into the log, and drives the shutdown.
//!
//! The loop waits in `epoll_wait` on a signalfd and on the pipes of the services; its timeout
//! is the nearest deadline (a restart, a stop timeout), measured on the monotonic clock because
//! routers have no RTC and the wall clock jumps when NTP syncs. With nothing to do it sleeps
//! without a timeout: an idle appliance costs PID 1 no wakeups.

mod commands;
mod groups;
mod health;
pub mod spawn;
pub mod unit;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::config::{self, duration, Tree};
use crate::control::{self, Server};
use crate::shutdown::{self, Action};
use unit::{Exit, Next, State, Unit};

/// epoll token of the signalfd; pipes use their descriptor number.
const SIGNAL_TOKEN: u64 = u64::MAX;
/// Bytes read from one service's pipe per loop turn, so a flood cannot starve the others.
const READ_BUDGET: usize = 16 * 1024;
/// How long stragglers get after SIGKILL before the final steps run regardless.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// The signals PID 1 reads through its signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGPWR,
    ] {
        set.add(sig);
    }
    set
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Pipe {
    Output,
    Status,
}

enum Phase {
    /// Stopping services in reverse dependency order.
    Services,
    /// SIGTERM (then SIGKILL) sent to whatever is left.
    Remaining { deadline: Instant, killed: bool },
}

struct Shutdown {
    action: Action,
    phase: Phase,
}

/// An error that keeps the event loop from existing at all.
#[derive(Debug)]
pub struct SetupError {
    pub op: &'static str,
    pub errno: Errno,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}: {} ({:?})", self.op, self.errno.desc(), self.errno)
    }
}

pub struct Supervisor {
    units: Vec<Unit>,
    /// Services whose files could not be used, with the reason; dependents are blocked.
    broken: Vec<config::Broken>,
    shutdown_grace: Duration,
    epoll: Epoll,
    signals: SignalFd,
    /// Registered pipes: descriptor -> (unit index, kind, the descriptor itself).
    pipes: HashMap<RawFd, (usize, Pipe, OwnedFd)>,
    ready_announced: bool,
    shutdown: Option<Shutdown>,
    /// Set by the reaper when PID 1 has no children left.
    no_children: bool,
    /// PID 1 of the system (or of a PID namespace): at shutdown it signals every process
    /// left. Anything else must never do that, since kill(-1) would reach the whole host.
    owns_system: bool,
    /// Where the configuration came from, for reload.
    config_dir: PathBuf,
    /// The control socket, when it could be created.
    control: Option<Server>,
    /// Clients waiting for a start, stop or restart to finish.
    waiters: Vec<commands::Waiter>,
    /// The cgroup tree services get their groups in; None without cgroup2.
    cgroups: Option<crate::cgroup::Tree>,
    /// Where container images and layers live.
    containers: crate::container::Paths,
    /// Conditions shown on top of `brig status` (degraded storage, fallback config).
    notes: Vec<String>,
    watchdog: Option<crate::watchdog::Watchdog>,
    /// Is the boot good yet, and what to do about critical services.
    health: health::Health,
}

/// How the supervisor is set up besides the configuration.
#[derive(Default)]
pub struct Setup {
    /// PID 1 of the system or of a PID namespace: may signal every process at shutdown.
    pub owns_system: bool,
    /// The real system init: keeps the last-known-good config and the boot counter.
    pub persistent_state: bool,
    /// Where the configuration came from, for reload.
    pub config_dir: PathBuf,
    /// Where to serve the control protocol (None: no socket, as in unit tests).
    pub socket: Option<PathBuf>,
    pub notes: Vec<String>,
    pub watchdog: Option<crate::watchdog::Watchdog>,
    /// Start a shell on the console at once (`brig.rescue`): its argv.
    pub rescue: Option<Vec<String>>,
    /// The configuration is the last-known-good copy, booted because `config_dir` is broken.
    pub from_last_good: bool,
}

impl Supervisor {
    /// Sets up the event loop. The caller has blocked [`handled_signals`] already.
    /// `socket`: where to serve the control protocol (None: no socket, as in unit tests).
    pub fn new(tree: Tree, setup: Setup) -> Result<Self, SetupError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|errno| SetupError { op: "epoll_create1", errno })?;
        let signals = SignalFd::with_flags(
            &handled_signals(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .map_err(|errno| SetupError { op: "signalfd", errno })?;
        epoll
            .add(signals.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, SIGNAL_TOKEN))
            .map_err(|errno| SetupError { op: "epoll_ctl signalfd", errno })?;
        let control = setup.socket.as_deref().and_then(|path| match Server::bind(path) {
            Ok(server) => match server.register(&epoll) {
                Ok(()) => Some(server),
                Err(e) => {
                    log::error!("control: epoll_ctl add listener: {} ({e:?})", e.desc());
                    None
                }
            },
            // Services run regardless; only the client cannot reach us.
            Err(e) => {
                log::error!("control: {e}; brig status and friends will not work");
                None
            }
        });
        crate::log::with_rings(|r| r.set_capacity(tree.system.log_buffer));
        let containers = crate::container::Paths::from_system(&tree.system);
        let mut sup = Supervisor {
            cgroups: None,
            containers,
            units: tree.services.into_iter().map(Unit::new).collect(),
            broken: tree.broken,
            shutdown_grace: tree.system.shutdown_grace,
            epoll,
            signals,
            pipes: HashMap::new(),
            ready_announced: false,
            shutdown: None,
            no_children: false,
            owns_system: setup.owns_system,
            config_dir: setup.config_dir,
            control,
            waiters: Vec::new(),
            notes: setup.notes,
            watchdog: setup.watchdog,
            health: health::Health::new(
                tree.system.boot,
                setup.persistent_state,
                setup.from_last_good,
            ),
        };
        if let Some(shell) = setup.rescue {
            sup.add_rescue_shell(shell, "brig.rescue on the kernel command line");
        }
        Ok(sup)
    }

    /// Gives each service a cgroup under `tree` from now on.
    pub fn set_cgroups(&mut self, tree: crate::cgroup::Tree) {
        self.cgroups = Some(tree);
    }

    /// Hands the watchdog to the caller, to keep it armed past the supervisor's end.
    pub fn take_watchdog(&mut self) -> Option<crate::watchdog::Watchdog> {
        self.watchdog.take()
    }

    /// Runs until the shutdown ends in reboot(2). Returns only if that fails.
    pub fn run(&mut self) -> Action {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            let now = Instant::now();
            if let Some(action) = self.advance(now) {
                return action;
            }
            if let Some(dog) = &mut self.watchdog {
                dog.kick_if_due(now);
            }
            let timeout = self.next_deadline().map(|d| d.saturating_duration_since(now));
            let n = match self.epoll.wait(&mut events, epoll_timeout(timeout)) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // epoll_wait only fails on programming errors; do not spin on one.
                    log::error!("epoll_wait: {} ({e:?})", e.desc());
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            log::trace!("loop turn: {n} events");
            for ev in &events[..n] {
                match ev.data() {
                    SIGNAL_TOKEN => self.read_signals(),
                    control::LISTEN_TOKEN => self.accept_clients(),
                    fd if self.pipes.contains_key(&(fd as RawFd)) => self.read_pipe(fd as RawFd),
                    fd => self.client_event(fd as RawFd, ev.events()),
                }
            }
        }
    }

    /// Does everything that is due at `now`. Returns the final action when shutdown is over.
    fn advance(&mut self, now: Instant) -> Option<Action> {
        self.settle_drained(now);
        self.enforce_stop_timeouts(now);
        self.serve_clients(now);
        if self.shutdown.is_some() {
            return self.advance_shutdown(now);
        }
        self.start_due(now);
        self.purge_removed();
        self.announce_ready();
        self.finish_waiters(now);
        self.check_health(now);
        None
    }

    /// The nearest moment something must happen without an event.
    fn next_deadline(&self) -> Option<Instant> {
        let units = self.units.iter().filter_map(|u| match u.state {
            State::Backoff { until } => Some(until),
            State::Stopping { deadline, .. } => Some(deadline),
            _ => None,
        });
        let phase = match &self.shutdown {
            Some(Shutdown { phase: Phase::Remaining { deadline, .. }, .. }) => Some(*deadline),
            _ => None,
        };
        let clients = self.control.as_ref().and_then(Server::next_deadline);
        let waiters = self.waiters.iter().map(|w| w.deadline);
        let watchdog = self.watchdog.as_ref().map(crate::watchdog::Watchdog::deadline);
        let health = self.health.deadline();
        let drain = self.draining().then(|| Instant::now() + groups::DRAIN_POLL);
        units
            .chain(phase)
            .chain(clients)
            .chain(waiters)
            .chain(watchdog)
            .chain(health)
            .chain(drain)
            .min()
    }

    // ---- starting -------------------------------------------------------------------------

    /// Starts every waiting unit whose dependencies are met and every backoff that expired.
    /// Repeats until nothing changes, so a chain of blocked units is resolved in one turn.
    fn start_due(&mut self, now: Instant) {
        loop {
            let mut changed = false;
            for i in 0..self.units.len() {
                match self.units[i].state {
                    State::Waiting => match self.dependency_state(i) {
                        Deps::Met => {
                            self.start(i, now);
                            changed = true;
                        }
                        Deps::Blocked(reason) => {
                            log::error!("service {}: not started: {reason}", self.units[i].name());
                            self.units[i].set(State::Blocked(reason));
                            changed = true;
                        }
                        Deps::Pending => {}
                    },
                    // A restart looks at the dependencies again: one may have failed for
                    // good, or be restarting itself, since this service first started.
                    State::Backoff { until } if until <= now => {
                        match self.dependency_state(i) {
                            Deps::Met => self.start(i, now),
                            Deps::Blocked(reason) => {
                                log::error!(
                                    "service {}: not restarted: {reason}",
                                    self.units[i].name()
                                );
                                self.units[i].set(State::Blocked(reason));
                            }
                            Deps::Pending => self.units[i].set(State::Waiting),
                        }
                        changed = true;
                    }
                    _ => {}
                }
            }
            if !changed {
                break;
            }
        }
    }

    fn dependency_state(&self, i: usize) -> Deps {
        let svc = &self.units[i].svc;
        let mut pending = false;
        for dep in svc.dependencies() {
            let required = svc.requires.contains(dep);
            if let Some(b) = self.broken.iter().find(|b| &b.name == dep) {
                if required {
                    return Deps::Blocked(format!("requires {dep}, which {}", b.reason));
                }
                continue;
            }
            let Some(other) = self.units.iter().find(|u| u.name() == dep) else {
                continue;
            };
            if other.satisfies_dependents() {
                continue;
            }
            match other.unusable_reason() {
                Some(why) if required => {
                    return Deps::Blocked(format!("requires {dep}, which {why}"))
                }
                // Ordering only: a dependency that settled without success no longer holds
                // this one back.
                Some(_) => {}
                None => pending = true,
            }
        }
        if pending {
            Deps::Pending
        } else {
            Deps::Met
        }
    }

    fn start(&mut self, i: usize, now: Instant) {
        if let Err(e) = self.prepare_group(i) {
            log::error!("service {}: cannot start: {e}", self.units[i].name());
            return self.after_run(i, Exit::Spawn, now);
        }
        let unit = &mut self.units[i];
        unit.exec_error = None;
        unit.started_at = Some(now);
        log::debug!("service {}: starting {}", unit.name(), unit.svc.exec.join(" "));
        let ctx = spawn::Context { group: unit.group.as_ref(), containers: &self.containers };
        match spawn::spawn(&unit.svc, &ctx) {
            Ok(child) => {
                unit.pid = Some(child.pid);
                unit.output_pid = child.pid.as_raw();
                unit.labels = child.labels;
                unit.set(State::Starting);
                self.register(i, Pipe::Status, child.status);
                if let Some(out) = child.output {
                    self.register(i, Pipe::Output, out);
                }
            }
            Err(e) => {
                log::error!("service {}: cannot start: {e}", unit.name());
                if let Some(g) = &unit.group {
                    g.remove();
                }
                self.after_run(i, Exit::Spawn, now);
            }
        }
    }

    fn register(&mut self, i: usize, kind: Pipe, fd: OwnedFd) {
        let raw = fd.as_raw_fd();
        let event = EpollEvent::new(EpollFlags::EPOLLIN, raw as u64);
        if let Err(e) = self.epoll.add(fd.as_fd(), event) {
            log::error!(
                "service {}: epoll_ctl add pipe: {} ({e:?})",
                self.units[i].name(),
                e.desc()
            );
            return;
        }
        self.pipes.insert(raw, (i, kind, fd));
    }

    fn unregister(&mut self, fd: RawFd) -> Option<(usize, Pipe, OwnedFd)> {
        let entry = self.pipes.remove(&fd)?;
        let _ = self.epoll.delete(entry.2.as_fd());
        Some(entry)
    }

    fn announce_ready(&mut self) {
        if self.ready_announced || !self.units.iter().all(|u| u.settled) {
            return;
        }
        self.ready_announced = true;
        let running = self.units.iter().filter(|u| u.state == State::Running).count();
        let done = self.units.iter().filter(|u| u.state == State::Done).count();
        let down = self.units.len() - running - done + self.broken.len();
        log::info!("system ready: {running} running, {done} done, {down} not started");
        self.rescue_if_nothing_runs();
    }

    // ---- events ---------------------------------------------------------------------------

    fn read_signals(&mut self) {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => self.on_signal(info.ssi_signo as i32, info.ssi_pid),
                Ok(None) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("read signalfd: {} ({e:?})", e.desc());
                    break;
                }
            }
        }
    }

    fn on_signal(&mut self, signo: i32, from: u32) {
        let Ok(sig) = Signal::try_from(signo) else {
            return;
        };
        if sig == Signal::SIGCHLD {
            return self.reap();
        }
        if sig == Signal::SIGHUP {
            log::info!("SIGHUP from pid {from}: reloading the configuration");
            let _ = self.reload();
            return;
        }
        match Action::for_signal(sig) {
            Some(action) => self.begin_shutdown(action, sig.as_str()),
            None => log::info!("ignoring {} from pid {from}", sig.as_str()),
        }
    }

    /// Collects every exited child: services and orphans re-parented to PID 1 alike.
    fn reap(&mut self) {
        let now = Instant::now();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid, Exit::Code(code), now),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.on_exit(pid, Exit::Signal(sig), now),
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                // ECHILD: nothing left at all, which the shutdown wants to know.
                Err(Errno::ECHILD) => {
                    self.no_children = true;
                    break;
                }
                Err(e) => {
                    log::error!("waitpid: {} ({e:?})", e.desc());
                    break;
                }
            }
        }
        self.settle_drained(now);
    }

    fn on_exit(&mut self, pid: Pid, exit: Exit, now: Instant) {
        let Some(i) = self.units.iter().position(|u| u.pid == Some(pid)) else {
            log::debug!("reaped pid {pid} ({exit:?})");
            return;
        };
        // The status pipe is complete now that the process is gone; the output too, unless
        // processes it left behind still hold the pipe.
        self.drain(i, Some(Pipe::Status));
        let unit = &mut self.units[i];
        unit.pid = None;
        // Under a container's init, the service's own end, not the init's echo of it.
        let exit = unit.init_exit.take().unwrap_or(exit);
        let exit = match unit.exec_error {
            Some((step, errno)) => Exit::Setup(step, errno),
            None => unit.name_exit(exit),
        };
        let Some(exit) = self.group_exit(i, exit) else {
            // Still logged while the rest of the group gets its stop signal; closed once the
            // group is empty (settle_drained).
            return;
        };
        self.drain(i, None);
        self.units[i].last_exit = Some(exit);
        self.after_run(i, exit, now);
        // What the main process of a daemon left behind in its process group goes with it, so
        // a restarted instance never runs beside leftovers of the old one. A oneshot's
        // children, and those of a daemon that exited cleanly for good, were left on purpose.
        let unit = &self.units[i];
        if unit.svc.kind == config::Kind::Simple && unit.state != State::Exited {
            signal_group(pid, Signal::SIGKILL);
        }
    }

    /// Reads whatever the pipes of unit `i` (only those of kind `only`, if given) still hold
    /// and closes them.
    pub(super) fn drain(&mut self, i: usize, only: Option<Pipe>) {
        let fds: Vec<RawFd> = self
            .pipes
            .iter()
            .filter(|(_, (u, kind, _))| *u == i && only.is_none_or(|o| o == *kind))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in fds {
            self.read_pipe(fd);
            if let Some((_, Pipe::Output, _)) = self.unregister(fd) {
                let unit = &mut self.units[i];
                let (name, pid) = (unit.svc.name.clone(), unit.output_pid);
                let mut dropped = 0;
                unit.lines.finish(&mut |line| {
                    if !crate::log::service_line(&name, pid, line) {
                        dropped += 1;
                    }
                });
                unit.dropped_lines += dropped;
                self.report_dropped(i, true);
            }
        }
    }

    fn read_pipe(&mut self, fd: RawFd) {
        let Some(&(i, kind, _)) = self.pipes.get(&fd) else {
            return;
        };
        match kind {
            Pipe::Status => self.read_status(i, fd),
            Pipe::Output => self.read_output(i, fd),
        }
    }

    /// End-of-file on the status pipe means exec succeeded; a failure record means it did
    /// not; notes (which root switch a container used) come before either.
    fn read_status(&mut self, i: usize, fd: RawFd) {
        let mut buf = [0u8; 48];
        let n = match nix::unistd::read(fd, &mut buf) {
            Ok(n) => n,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return,
            Err(_) => 0,
        };
        let unit = &mut self.units[i];
        let name = unit.name().to_string();
        let mut failed = false;
        for r in spawn::decode_status(&buf[..n]) {
            match r.step {
                // Said once per service and boot: every restart would say it again.
                Some(spawn::Step::MoveChroot) if !unit.switch_reported => {
                    unit.switch_reported = true;
                    log::info!(
                        "service {name}: pivot_root impossible (root is the initramfs): \
                         container root entered with move-mount + chroot"
                    )
                }
                Some(spawn::Step::MoveChroot) => {
                    log::debug!("service {name}: container root entered with move-mount + chroot")
                }
                Some(spawn::Step::PivotRoot) => {
                    log::debug!("service {name}: container root entered with pivot_root")
                }
                // From the container's init: the exec happened, later how the service ended.
                Some(spawn::Step::Running) if !failed => {
                    exec_done(unit, " under its container's init")
                }
                Some(spawn::Step::Running) => {}
                Some(spawn::Step::NoCloseRange) => {
                    if spawn::first_time(&spawn::CLOSE_RANGE_MISSING) {
                        log::warn!(
                            "close_range: not in this kernel (Linux 5.11 has it): services mark \
                             inherited descriptors close-on-exec one at a time"
                        );
                    }
                }
                Some(spawn::Step::NoMountSetattr) => {
                    if spawn::first_time(&spawn::MOUNT_SETATTR_MISSING) {
                        log::warn!(
                            "mount_setattr: not in this kernel (Linux 5.12 has it): read-only \
                             bind volumes show their top mount only, not the mounts below it"
                        );
                    }
                }
                Some(spawn::Step::ServiceExited) => {
                    unit.init_exit = Some(Exit::Code(r.detail as i32));
                }
                Some(spawn::Step::ServiceKilled) => {
                    unit.init_exit = Signal::try_from(r.detail as i32).ok().map(Exit::Signal);
                }
                Some(spawn::Step::Exec) | None => {
                    let path = &unit.svc.exec[0];
                    let why = spawn::explain_exec_error(path, r.errno);
                    log::error!("service {name}: exec {path} failed: {why} ({:?})", r.errno);
                }
                Some(spawn::Step::Container) => log::error!(
                    "service {name}: container setup: {} failed: {} ({:?})",
                    crate::container::describe_failure(&unit.labels, r.detail),
                    r.errno.desc(),
                    r.errno
                ),
                Some(step) => log::error!(
                    "service {name}: {} failed: {} ({:?})",
                    step.describe(),
                    r.errno.desc(),
                    r.errno
                ),
            }
            if !r.step.is_some_and(spawn::Step::is_note) {
                unit.exec_error = Some((r.step, r.errno));
                failed = true;
            }
        }
        if n > 0 && !failed {
            return;
        }
        self.unregister(fd);
        if !failed {
            exec_done(&mut self.units[i], "");
        }
    }

    fn read_output(&mut self, i: usize, fd: RawFd) {
        let mut buf = [0u8; 4096];
        let mut budget = READ_BUDGET;
        while budget > 0 {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => {
                    self.unregister(fd);
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.log_output(i, &buf[..n]);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    log::warn!(
                        "service {}: read output: {} ({e:?})",
                        self.units[i].name(),
                        e.desc()
                    );
                    self.unregister(fd);
                    return;
                }
            }
        }
    }

    fn log_output(&mut self, i: usize, data: &[u8]) {
        let unit = &mut self.units[i];
        let (name, pid) = (unit.svc.name.clone(), unit.output_pid);
        let mut dropped = 0;
        unit.lines.push(data, &mut |line| {
            if !crate::log::service_line(&name, pid, line) {
                dropped += 1;
            }
        });
        unit.dropped_lines += dropped;
        self.report_dropped(i, false);
    }

    /// Says how many output lines of a service the system log lost (they are all in `brig
    /// logs`): at most once a second while it floods, and once more when its output ends.
    fn report_dropped(&mut self, i: usize, last: bool) {
        let unit = &mut self.units[i];
        let now = Instant::now();
        let due =
            unit.drop_reported.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if unit.dropped_lines == 0 || !(due || last) {
            return;
        }
        log::warn!(
            "service {}: {} lines of output not sent to the system log (log busy); brig logs {} has them",
            unit.name(),
            unit.dropped_lines,
            unit.name()
        );
        unit.dropped_lines = 0;
        unit.drop_reported = Some(now);
    }

    // ---- after a run ----------------------------------------------------------------------

    fn after_run(&mut self, i: usize, exit: Exit, now: Instant) {
        let unit = &mut self.units[i];
        unit.last_exit = Some(exit);
        let name = unit.name().to_string();
        let how = unit.describe_exit(exit);
        if matches!(unit.state, State::Stopping { .. }) || self.shutdown.is_some() {
            log::info!("service {name}: stopped ({how})");
            unit.set(State::Stopped);
            if self.shutdown.is_none() {
                self.after_stop(i);
            }
            return;
        }
        let next = unit.after_exit(exit, now);
        match exit {
            // Setup failures were already reported with their path and errno; a oneshot's
            // success is reported as "done".
            Exit::Setup(..) | Exit::Spawn => {}
            _ if next == Next::Done => {}
            Exit::Code(0) => log::info!("service {name}: {how}"),
            _ => log::warn!("service {name}: {how}"),
        }
        match next {
            Next::Done => {
                log::info!("service {name}: done");
                unit.set(State::Done);
            }
            Next::StayDown if exit.success() => unit.set(State::Exited),
            Next::StayDown => unit.set(State::Failed(how)),
            Next::Restart { delay, failure } => {
                log::info!(
                    "service {name}: restarting in {} ms (failure {failure} of {})",
                    delay.as_millis(),
                    unit.svc.backoff.limit
                );
                unit.restarts += 1;
                unit.set(State::Backoff { until: now + delay });
            }
            Next::GiveUp { failures } => {
                let window = unit.window_text();
                log::error!(
                    "service {name}: failed: {failures} failures within {window}, giving up"
                );
                unit.set(State::Failed(format!("{failures} failures within {window}")));
            }
        }
        if matches!(self.units[i].state, State::Failed(_)) && self.units[i].svc.critical {
            self.critical_failed(i);
        }
    }

    // ---- shutdown -------------------------------------------------------------------------

    fn begin_shutdown(&mut self, action: Action, cause: &str) {
        if self.shutdown.is_some() {
            log::info!("{cause}: shutdown already under way");
            return;
        }
        log::info!("shutdown: {} requested ({cause})", action.name());
        // syslogd is about to be stopped with the rest: from here on, straight to the kernel
        // log, so the last lines are not left unread in its socket.
        crate::log::bypass_syslog();
        self.shutdown = Some(Shutdown { action, phase: Phase::Services });
    }

    fn advance_shutdown(&mut self, now: Instant) -> Option<Action> {
        let Some(shutdown) = &self.shutdown else {
            return None;
        };
        let action = shutdown.action;
        match shutdown.phase {
            Phase::Services => {
                self.stop_services(now);
                if self.units.iter().any(|u| u.state.is_active()) {
                    return None;
                }
                if !self.owns_system {
                    return Some(action);
                }
                log::info!("shutdown: sending SIGTERM to remaining processes");
                shutdown::signal_all(Signal::SIGTERM);
                self.no_children = false;
                self.reap();
                let deadline = now + self.shutdown_grace;
                self.set_phase(Phase::Remaining { deadline, killed: false });
                // The sweep may have found nobody left: decide now rather than after a wait.
                self.advance_shutdown(now)
            }
            Phase::Remaining { deadline, killed } => {
                if self.no_children {
                    return Some(action);
                }
                if now < deadline {
                    return None;
                }
                if killed {
                    log::warn!("shutdown: processes still left after SIGKILL; going on");
                    return Some(action);
                }
                log::warn!(
                    "shutdown: processes left after {}, sending SIGKILL",
                    duration::display(self.shutdown_grace)
                );
                shutdown::signal_all(Signal::SIGKILL);
                self.set_phase(Phase::Remaining { deadline: now + KILL_WAIT, killed: true });
                None
            }
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(s) = &mut self.shutdown {
            s.phase = phase;
        }
    }

    /// Stops each service once nothing that depends on it is still active; kills the ones
    /// whose stop timeout passed.
    fn stop_services(&mut self, now: Instant) {
        for i in 0..self.units.len() {
            match self.units[i].state {
                State::Waiting | State::Backoff { .. } => self.units[i].set(State::Stopped),
                State::Starting | State::Running if !self.has_active_dependents(i) => {
                    log::info!("shutdown: stopping {}", self.units[i].name());
                    self.stop(i, now);
                }
                _ => {}
            }
        }
    }

    /// Sends SIGKILL to services that outlived their stop timeout, at shutdown or not.
    fn enforce_stop_timeouts(&mut self, now: Instant) {
        for i in 0..self.units.len() {
            let unit = &self.units[i];
            let State::Stopping { deadline, killed: false } = unit.state else { continue };
            if deadline > now {
                continue;
            }
            log::warn!(
                "service {}: did not stop within {}, sending SIGKILL",
                unit.name(),
                duration::display(unit.svc.stop_timeout)
            );
            self.signal_unit(i, Signal::SIGKILL);
            self.units[i].set(State::Stopping { deadline: now + KILL_WAIT, killed: true });
        }
    }

    fn has_active_dependents(&self, i: usize) -> bool {
        let name = self.units[i].name();
        self.units.iter().any(|u| u.state.is_active() && u.svc.dependencies().any(|d| d == name))
    }

    fn stop(&mut self, i: usize, now: Instant) {
        let sig = self.units[i].svc.stop_signal;
        if !self.signal_unit(i, sig) {
            return;
        }
        // A stopped (SIGSTOP) process would never see the stop signal.
        self.signal_unit(i, Signal::SIGCONT);
        let unit = &mut self.units[i];
        let deadline = now + unit.svc.stop_timeout;
        unit.set(State::Stopping { deadline, killed: false });
    }

    /// The number of services per kind, for tests and status.
    #[cfg(test)]
    fn states(&self) -> Vec<(String, State)> {
        self.units.iter().map(|u| (u.name().to_string(), u.state.clone())).collect()
    }
}

enum Deps {
    Met,
    Pending,
    Blocked(String),
}

/// Signals the process group a service leads (it called setsid), or the process alone if the
/// group is gone.
fn signal_group(pid: Pid, sig: Signal) {
    match kill(Pid::from_raw(-pid.as_raw()), sig) {
        Ok(()) => {}
        Err(Errno::ESRCH) => {
            let _ = kill(pid, sig);
        }
        Err(e) => log::warn!("kill -{} {}: {} ({e:?})", sig.as_str(), pid, e.desc()),
    }
}

/// The service's exec went through (`how`: under what): a starting unit is running now.
fn exec_done(unit: &mut Unit, how: &str) {
    if unit.state == State::Starting {
        let pid = unit.pid.map_or(0, Pid::as_raw);
        log::info!("service {}: running{how} (pid {pid})", unit.name());
        unit.set(State::Running);
    }
}

fn epoll_timeout(timeout: Option<Duration>) -> EpollTimeout {
    match timeout {
        None => EpollTimeout::NONE,
        Some(d) => {
            // Round up: waking a millisecond early would only cost an extra loop turn.
            let ms = d.as_micros().div_ceil(1000);
            EpollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(EpollTimeout::NONE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::service::parse;

    fn sup(files: &[(&str, &str)]) -> Supervisor {
        let services =
            files.iter().map(|(n, t)| parse(n, format!("{n}.toml").into(), t).unwrap().0).collect();
        Supervisor::new(Tree { services, ..Tree::default() }, Setup::default()).unwrap()
    }

    #[test]
    fn requires_on_failed_service_blocks_but_after_does_not() {
        let mut s = sup(&[
            ("a", "exec = [\"/x\"]\n"),
            ("b", "exec = [\"/x\"]\nrequires = [\"a\"]\n"),
            ("c", "exec = [\"/x\"]\nafter = [\"a\"]\n"),
        ]);
        s.units[0].set(State::Failed("boom".into()));
        assert!(
            matches!(s.dependency_state(1), Deps::Blocked(r) if r == "requires a, which has failed (boom)")
        );
        assert!(matches!(s.dependency_state(2), Deps::Met));
    }

    #[test]
    fn dependents_wait_for_a_oneshot_to_finish() {
        let mut s = sup(&[
            ("net", "exec = [\"/x\"]\ntype = \"oneshot\"\n"),
            ("web", "exec = [\"/x\"]\nrequires = [\"net\"]\n"),
        ]);
        s.units[0].set(State::Running);
        assert!(matches!(s.dependency_state(1), Deps::Pending));
        s.units[0].set(State::Done);
        assert!(matches!(s.dependency_state(1), Deps::Met));
        assert_eq!(s.states()[0].1, State::Done);
    }

    #[test]
    fn requires_on_broken_file_blocks_with_its_reason() {
        let mut s = sup(&[("web", "exec = [\"/x\"]\nrequires = [\"net\"]\n")]);
        s.broken.push(config::Broken {
            name: "net".into(),
            reason: "has a configuration error".into(),
        });
        assert!(matches!(s.dependency_state(0),
            Deps::Blocked(r) if r == "requires net, which has a configuration error"));
    }

    #[test]
    fn epoll_timeout_rounds_up() {
        assert_eq!(
            epoll_timeout(Some(Duration::from_micros(1500))),
            EpollTimeout::try_from(2).unwrap()
        );
        assert_eq!(epoll_timeout(None), EpollTimeout::NONE);
    }
}
