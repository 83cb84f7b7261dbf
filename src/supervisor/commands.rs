//! Requests from the control socket, carried out on the supervisor's state: status, start,
//! stop, restart, logs, reload and shutdown.
//!
//! Start, stop and restart answer when the service got there (or failed, or a deadline
//! passed), not when the request was accepted: `brig stop web && flash-update` must be safe.

use std::os::fd::RawFd;

use std::time::{Duration, Instant};

use nix::sys::epoll::EpollFlags;

use super::unit::{Exit, State, Unit};
use super::{Supervisor, KILL_WAIT};
use crate::cgroup::{self, OomScope};
use crate::config;
use crate::control::protocol::{LogLine, Outcome, Request, Response, ServiceStatus};
use crate::control::Incoming;
use crate::shutdown::Action;

/// How long `brig start` waits for a service to come up.
const START_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Stop,
    Restart,
}

/// A client waiting for an operation on some services to finish.
pub struct Waiter {
    conn: RawFd,
    op: Op,
    names: Vec<String>,
    pub deadline: Instant,
}

impl Supervisor {
    pub(super) fn accept_clients(&mut self) {
        if let Some(server) = &mut self.control {
            server.accept(&self.epoll, Instant::now());
        }
    }

    pub(super) fn client_event(&mut self, fd: RawFd, flags: EpollFlags) {
        let Some(server) = &mut self.control else { return };
        if !server.owns(fd) {
            return;
        }
        if let Some(incoming) = server.on_event(&self.epoll, fd, flags) {
            self.handle(incoming);
        }
    }

    /// Closes clients past their deadline and sends followers their new log lines.
    pub(super) fn serve_clients(&mut self, now: Instant) {
        let Some(server) = &mut self.control else { return };
        server.expire(&self.epoll, now);
        for (fd, name, after) in server.followers() {
            let (lines, last) = crate::log::with_rings(|r| {
                let entries = r.tail(name.as_deref(), usize::MAX, after);
                let last = entries.last().map_or(after, |e| e.seq);
                (entries.into_iter().map(to_line).collect::<Vec<_>>(), last)
            })
            .unwrap_or_default();
            if !lines.is_empty() {
                server.feed(&self.epoll, fd, &lines, last);
            }
        }
    }

    fn answer(&mut self, conn: RawFd, response: &Response) {
        if let Some(server) = &mut self.control {
            server.answer(&self.epoll, conn, response);
        }
    }

    fn handle(&mut self, incoming: Incoming) {
        let conn = incoming.conn;
        let response = match incoming.request {
            Request::Status { names } => self.status(&names),
            Request::Start { names } => return self.operate(conn, Op::Start, names),
            Request::Stop { names } => return self.operate(conn, Op::Stop, names),
            Request::Restart { names } => return self.operate(conn, Op::Restart, names),
            Request::Logs { name, lines, follow } => return self.logs(conn, name, lines, follow),
            Request::Reload {} => self.reload(),
            Request::Reboot {} => self.request_shutdown(Action::Reboot),
            Request::Poweroff {} => self.request_shutdown(Action::Poweroff),
            Request::Halt {} => self.request_shutdown(Action::Halt),
            #[cfg(feature = "fault-injection")]
            Request::Fault { kind } => crate::boot::fault::inject(&kind, self),
        };
        self.answer(conn, &response);
    }

    // ---- status and logs ------------------------------------------------------------------

    /// The table of the services named (all without names); unknown names are listed apart,
    /// so one typo does not hide the services that exist.
    fn status(&self, names: &[String]) -> Response {
        let unknown: Vec<String> = names.iter().filter(|n| !self.knows(n)).cloned().collect();
        let wanted = |n: &str| names.is_empty() || names.iter().any(|w| w == n);
        let now = Instant::now();
        let mut services: Vec<ServiceStatus> =
            self.units.iter().filter(|u| wanted(u.name())).map(|u| describe(u, now)).collect();
        for b in self.broken.iter().filter(|b| wanted(&b.name)) {
            services.push(ServiceStatus {
                name: b.name.clone(),
                state: "broken".into(),
                detail: Some(b.reason.clone()),
                pid: None,
                uptime_ms: None,
                restarts: 0,
                last_exit: None,
                memory_bytes: None,
                cpu_usec: None,
            });
        }
        services.sort_by(|a, b| a.name.cmp(&b.name));
        Response::Status { services, notes: self.notes.clone(), unknown }
    }

    fn knows(&self, name: &str) -> bool {
        self.units.iter().any(|u| u.name() == name) || self.broken.iter().any(|b| b.name == name)
    }

    fn logs(&mut self, conn: RawFd, name: Option<String>, lines: usize, follow: bool) {
        if let Some(n) = &name {
            if n != "brig" && !self.knows(n) {
                let response = Response::error(format!("no service named {n:?}"));
                return self.answer(conn, &response);
            }
        }
        let (backlog, last) = crate::log::with_rings(|r| {
            let entries = r.tail(name.as_deref(), lines, 0);
            let lines: Vec<LogLine> = entries.into_iter().map(to_line).collect();
            (lines, r.next_seq().saturating_sub(1))
        })
        .unwrap_or_default();
        let Some(server) = &mut self.control else { return };
        if follow {
            server.follow(&self.epoll, conn, name, &backlog, last);
        } else {
            let responses: Vec<Response> =
                backlog.into_iter().map(|line| Response::Log { line }).collect();
            server.answer_all(&self.epoll, conn, &responses);
        }
    }

    // ---- start, stop, restart -------------------------------------------------------------

    fn operate(&mut self, conn: RawFd, op: Op, names: Vec<String>) {
        if self.shutdown.is_some() {
            return self.answer(conn, &Response::error("shutdown in progress"));
        }
        if let Some(unknown) = names.iter().find(|n| !self.units.iter().any(|u| u.name() == *n)) {
            let why = match self.broken.iter().find(|b| &b.name == unknown) {
                Some(b) => format!("service {unknown:?} {}; fix it and run brig reload", b.reason),
                None => format!("no service named {unknown:?}"),
            };
            return self.answer(conn, &Response::error(why));
        }
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for name in &names {
            let Some(i) = self.units.iter().position(|u| u.name() == name) else { continue };
            let stop_wait = self.units[i].svc.stop_timeout + KILL_WAIT + Duration::from_secs(1);
            wait = wait.max(match op {
                Op::Start => START_WAIT,
                Op::Stop => stop_wait,
                Op::Restart => stop_wait + START_WAIT,
            });
            match op {
                Op::Start => self.request_start(i),
                Op::Stop => self.request_stop(i, now),
                Op::Restart => self.request_restart(i, now),
            }
        }
        self.waiters.push(Waiter { conn, op, names, deadline: now + wait });
    }

    fn request_start(&mut self, i: usize) {
        let unit = &mut self.units[i];
        match unit.state {
            State::Running | State::Starting | State::Done | State::Waiting => {}
            // It comes back up once the stop completes.
            State::Stopping { .. } => unit.restart_requested = true,
            State::Backoff { .. }
            | State::Exited
            | State::Stopped
            | State::Failed(_)
            | State::Blocked(_) => {
                log::info!("service {}: start requested", unit.name());
                unit.reset_backoff();
                unit.set(State::Waiting);
            }
        }
    }

    fn request_stop(&mut self, i: usize, now: Instant) {
        let unit = &mut self.units[i];
        unit.restart_requested = false;
        match unit.state {
            State::Running | State::Starting => {
                log::info!("service {}: stop requested", unit.name());
                self.stop(i, now);
            }
            State::Waiting | State::Backoff { .. } => unit.set(State::Stopped),
            // What a finished service left running (a daemon that forked away) goes too.
            State::Exited | State::Done => {
                if let Some(group) = unit.group.as_ref().filter(|g| g.populated()) {
                    log::info!("service {}: stopping the processes it left", unit.name());
                    if let Err(e) = group.kill() {
                        log::error!("service {}: {e}", unit.name());
                    }
                }
            }
            _ => {}
        }
    }

    fn request_restart(&mut self, i: usize, now: Instant) {
        if self.units[i].state.is_active() {
            log::info!("service {}: restart requested", self.units[i].name());
            self.units[i].restart_requested = true;
            self.units[i].reset_backoff();
            if !matches!(self.units[i].state, State::Stopping { .. }) {
                self.stop(i, now);
            }
        } else {
            self.request_start(i);
        }
    }

    /// Called when a stop that was not part of shutdown completed.
    pub(super) fn after_stop(&mut self, i: usize) {
        let unit = &mut self.units[i];
        if unit.removed {
            return;
        }
        if let Some(new) = unit.replacement.take() {
            unit.svc = new;
            unit.restart_requested = true;
        }
        if std::mem::take(&mut unit.restart_requested) {
            unit.reset_backoff();
            unit.set(State::Waiting);
        }
    }

    /// Answers the waiters whose services all got where they were going, or whose time is up.
    pub(super) fn finish_waiters(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.waiters.len() {
            let w = &self.waiters[i];
            let outcomes: Vec<Option<Outcome>> =
                w.names.iter().map(|n| self.outcome(w.op, n)).collect();
            let timed_out = w.deadline <= now;
            if !timed_out && outcomes.iter().any(Option::is_none) {
                i += 1;
                continue;
            }
            let w = self.waiters.remove(i);
            let outcomes = w
                .names
                .iter()
                .zip(outcomes)
                .map(|(name, o)| {
                    o.unwrap_or_else(|| {
                        let state = self.units.iter().find(|u| u.name() == name);
                        let state = state.map_or("gone", |u| state_name(&u.state).0);
                        fail(name, format!("timed out waiting (state: {state})"))
                    })
                })
                .collect();
            self.answer(w.conn, &Response::Outcomes { outcomes });
        }
    }

    /// Where `name` stands for `op`: None while it is still on its way.
    fn outcome(&self, op: Op, name: &str) -> Option<Outcome> {
        let Some(unit) = self.units.iter().find(|u| u.name() == name) else {
            return Some(fail(name, "removed".into()));
        };
        let ok = |message: String| Some(Outcome { name: name.into(), ok: true, message });
        if unit.restart_requested || unit.replacement.is_some() {
            return None;
        }
        match (op, &unit.state) {
            (Op::Stop, s) if s.is_active() => None,
            // Leftovers of a finished service are being killed: stopped once they are gone.
            (Op::Stop, State::Exited | State::Done)
                if unit.group.as_ref().is_some_and(|g| g.populated()) =>
            {
                None
            }
            (Op::Stop, _) => ok("stopped".into()),
            (_, State::Running) => {
                ok(format!("running (pid {})", unit.pid.map_or(0, |p| p.as_raw())))
            }
            (_, State::Done) => ok("done".into()),
            (_, State::Failed(why)) => Some(fail(name, format!("failed: {why}"))),
            (_, State::Blocked(why)) => Some(fail(name, format!("not started: {why}"))),
            (_, State::Exited) => Some(fail(name, "exited".into())),
            (_, State::Stopped) => Some(fail(name, "stopped".into())),
            _ => None,
        }
    }

    // ---- reload and shutdown --------------------------------------------------------------

    fn request_shutdown(&mut self, action: Action) -> Response {
        self.begin_shutdown(action, "requested by brig client");
        Response::Accepted { message: format!("{} under way", action.name()) }
    }

    /// Re-reads the configuration. Invalid: nothing changes and every error is returned.
    /// Valid: added services start, removed ones stop, changed ones restart, the rest stay.
    pub(super) fn reload(&mut self) -> Response {
        let tree = config::load(&self.config_dir);
        if !tree.diagnostics.is_empty() {
            let details: Vec<String> = tree.diagnostics.iter().map(ToString::to_string).collect();
            log::error!("reload rejected, nothing changed: {}", details.join("; "));
            return Response::Error {
                message: format!(
                    "configuration has {}; nothing changed",
                    config::count(details.len(), "error")
                ),
                details,
            };
        }
        self.apply_system(&tree.system);
        let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        let now = Instant::now();
        for i in 0..self.units.len() {
            let name = self.units[i].name().to_string();
            match tree.service(&name) {
                None => {
                    self.units[i].removed = true;
                    if self.units[i].state.is_active() {
                        self.stop(i, now);
                    }
                    removed.push(name);
                }
                Some(new) if *new != self.units[i].svc => {
                    changed.push(name);
                    if self.units[i].state.is_active() {
                        self.units[i].replacement = Some(new.clone());
                        self.stop(i, now);
                    } else {
                        self.units[i].svc = new.clone();
                        self.units[i].reset_backoff();
                        self.units[i].set(State::Waiting);
                    }
                }
                Some(_) => {}
            }
        }
        for svc in &tree.services {
            if !self.units.iter().any(|u| u.name() == svc.name) {
                added.push(svc.name.clone());
                self.units.push(Unit::new(svc.clone()));
            }
        }
        // A dependency may have been fixed: look at blocked services again.
        for unit in &mut self.units {
            if matches!(unit.state, State::Blocked(_)) {
                unit.set(State::Waiting);
            }
        }
        self.broken = tree.broken;
        log::info!(
            "reload: added [{}], removed [{}], changed [{}]",
            added.join(" "),
            removed.join(" "),
            changed.join(" ")
        );
        // /etc/brig is valid again: a boot that becomes good from now on may save it.
        self.health.from_last_good = false;
        Response::Reloaded { added, removed, changed }
    }

    fn apply_system(&mut self, system: &config::System) {
        self.shutdown_grace = system.shutdown_grace;
        self.containers = crate::container::Paths::from_system(system);
        // Handing the watchdog over: a reload without [watchdog] lets go of the device (with
        // magic close where allowed), so a service started by the same reload can open it.
        if system.watchdog.is_none() {
            if let Some(dog) = self.watchdog.take() {
                dog.release();
            }
        }
        crate::log::set_level(system.log_level.filter());
        crate::log::with_rings(|r| r.set_capacity(system.log_buffer));
        if self.owns_system {
            let current = nix::unistd::gethostname().ok();
            if current.as_deref().and_then(|h| h.to_str()) != Some(system.hostname.as_str()) {
                if let Err(e) = nix::unistd::sethostname(&system.hostname) {
                    log::error!("sethostname {:?}: {} ({e:?})", system.hostname, e.desc());
                }
            }
        }
    }

    /// Drops services removed by a reload once their processes and pipes are gone.
    pub(super) fn purge_removed(&mut self) {
        while let Some(i) = self.units.iter().position(|u| u.removed && !u.state.is_active()) {
            if self.pipes.values().any(|(u, _, _)| *u == i) {
                return;
            }
            let unit = self.units.remove(i);
            crate::log::with_rings(|r| r.remove(unit.name()));
            for entry in self.pipes.values_mut() {
                if entry.0 > i {
                    entry.0 -= 1;
                }
            }
        }
    }
}

fn fail(name: &str, message: String) -> Outcome {
    Outcome { name: name.into(), ok: false, message }
}

fn to_line(e: crate::log::Entry) -> LogLine {
    LogLine { time_ms: e.time_ms, source: e.source, pid: e.pid, text: e.text }
}

/// The state's name for `brig status`, and its detail.
fn state_name(state: &State) -> (&'static str, Option<String>) {
    match state {
        State::Waiting => ("waiting", Some("for its dependencies".into())),
        State::Starting => ("starting", None),
        State::Running => ("running", None),
        State::Done => ("done", None),
        State::Exited => ("exited", None),
        State::Backoff { until } => {
            let left = until.saturating_duration_since(Instant::now());
            ("backoff", Some(format!("restart in {:.1}s", left.as_secs_f64())))
        }
        State::Stopping { .. } => ("stopping", None),
        State::Stopped => ("stopped", None),
        State::Failed(why) => ("failed", Some(why.clone())),
        State::Blocked(why) => ("blocked", Some(why.clone())),
    }
}

fn describe(unit: &Unit, now: Instant) -> ServiceStatus {
    let (state, detail) = state_name(&unit.state);
    let uptime_ms = unit
        .started_at
        .filter(|_| unit.state.is_active())
        .map(|t| u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX));
    let (memory_bytes, cpu_usec) =
        unit.group.as_ref().map_or((None, None), |g| cgroup::usage(&g.dir));
    let left = match unit.state {
        State::Exited | State::Done => unit.group.as_ref().map_or(0, |g| g.pids().len()),
        _ => 0,
    };
    let detail = match (detail, left) {
        (d, 0) => d,
        (_, n) => Some(format!("{n} processes left in its cgroup")),
    };
    ServiceStatus {
        name: unit.name().to_string(),
        state: state.into(),
        detail,
        pid: unit.pid.map(|p| p.as_raw()),
        uptime_ms,
        restarts: unit.restarts,
        last_exit: unit.last_exit.map(describe_exit),
        memory_bytes,
        cpu_usec,
    }
}

fn describe_exit(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("status {c}"),
        Exit::Signal(s) => format!("signal {}", s.as_str()),
        Exit::Setup(Some(step), errno) => format!("{} failed ({errno:?})", step.describe()),
        Exit::Setup(None, errno) => format!("setup failed ({errno:?})"),
        Exit::Spawn => "could not be started".into(),
        Exit::Oom(OomScope::Own) => "killed by OOM".into(),
        Exit::Oom(OomScope::Enclosing) => "killed by OOM (enclosing cgroup)".into(),
        Exit::Oom(OomScope::System) => "killed by OOM (system)".into(),
        Exit::Seccomp => "signal SIGSYS (seccomp)".into(),
    }
}
