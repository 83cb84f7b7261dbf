//! The life of one service: its state, and the pure decisions about it (is it settled, may it
//! start, what happens after it exited). No system calls here, so every rule is unit tested.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::spawn::Step;
use crate::cgroup::{OomCounters, OomScope};
use crate::config::{duration, Kind, Restart, Service};
use crate::log::LineBuffer;
use crate::seccomp::Action;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for dependencies.
    Waiting,
    /// Forked; exec not yet confirmed.
    Starting,
    /// Exec succeeded and the process runs.
    Running,
    /// A oneshot that exited 0.
    Done,
    /// Exited and, by its restart policy, stays down.
    Exited,
    /// Will be started again at `until`.
    Backoff { until: Instant },
    /// Told to stop; SIGKILL follows at `deadline`.
    Stopping { deadline: Instant, killed: bool },
    /// Stopped on request (shutdown).
    Stopped,
    /// Gave up: crash loop, or a failure its policy does not restart.
    Failed(String),
    /// Never started because a required service is unusable.
    Blocked(String),
}

impl State {
    /// Whether a process of this service may be alive.
    pub fn is_active(&self) -> bool {
        // A unit whose main process is gone but whose cgroup still drains keeps its state
        // until the group is empty, so it counts as active through its state.
        matches!(self, State::Starting | State::Running | State::Stopping { .. })
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
    /// A setup step or the exec itself failed in the child.
    Setup(Option<Step>, Errno),
    /// fork or the preparation in PID 1 failed.
    Spawn,
    /// SIGKILLed by the kernel's OOM killer (memory.events oom_kill went up), answering to
    /// the limit of this scope.
    Oom(OomScope),
    /// Killed with SIGSYS by its own seccomp filter (`action = "kill"`): it made a system call
    /// the filter forbids.
    Seccomp,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

/// What to do after a process ended outside of a stop request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Done,
    StayDown,
    Restart { delay: Duration, failure: u32 },
    GiveUp { failures: u32 },
}

pub struct Unit {
    pub svc: Service,
    pub state: State,
    /// Set the first time the unit reached a state that boot does not wait for.
    pub settled: bool,
    pub pid: Option<Pid>,
    pub started_at: Option<Instant>,
    pub exec_error: Option<(Option<Step>, Errno)>,
    pub last_exit: Option<Exit>,
    /// Times of recent failures inside the restart window.
    failures: VecDeque<Instant>,
    next_delay: Duration,
    pub restarts: u32,
    pub lines: LineBuffer,
    pub dropped_lines: u64,
    /// When the last "lines dropped" warning went out.
    pub drop_reported: Option<Instant>,
    /// Start again once the current stop completes (restart, or start during a stop).
    pub restart_requested: bool,
    /// A new definition from a reload, applied once the running instance stopped.
    pub replacement: Option<Service>,
    /// Gone from the configuration: dropped once stopped.
    pub removed: bool,
    /// The service's cgroup while it has one.
    pub group: Option<crate::cgroup::Group>,
    /// The OOM counters of its group and the enclosing ones when the current run started.
    pub oom_counters: OomCounters,
    /// The move-mount + chroot fallback of its container root has been logged.
    pub switch_reported: bool,
    /// How the service ended, as its container's init reported it.
    pub init_exit: Option<Exit>,
    /// The main process ended with this; waiting for the rest of the cgroup to go.
    /// The main process ended with this exit and the rest of the group was sent the stop
    /// signal; SIGKILL follows at the instant, if they are still there.
    pub draining: Option<(Exit, Option<Instant>)>,
    /// The pid that tags output lines: the main process, also after it ended while what it
    /// left behind still writes.
    pub output_pid: i32,
    /// Labels of the container setup steps of the current run.
    pub labels: Vec<String>,
}

impl Unit {
    pub fn new(svc: Service) -> Self {
        let next_delay = svc.backoff.first;
        Unit {
            svc,
            state: State::Waiting,
            settled: false,
            pid: None,
            started_at: None,
            exec_error: None,
            last_exit: None,
            failures: VecDeque::new(),
            next_delay,
            restarts: 0,
            lines: LineBuffer::default(),
            dropped_lines: 0,
            drop_reported: None,
            restart_requested: false,
            replacement: None,
            removed: false,
            group: None,
            oom_counters: OomCounters::default(),
            switch_reported: false,
            init_exit: None,
            draining: None,
            output_pid: 0,
            labels: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.svc.name
    }

    /// Moves to `state`, noting when the unit first settled.
    pub fn set(&mut self, state: State) {
        // A running oneshot has not settled: boot is ready only once it finished.
        let settles = match state {
            State::Running => self.svc.kind == Kind::Simple,
            State::Done | State::Exited | State::Failed(_) | State::Blocked(_) => true,
            _ => false,
        };
        if settles {
            self.settled = true;
        }
        self.state = state;
    }

    /// Whether dependents of this unit may start now.
    pub fn satisfies_dependents(&self) -> bool {
        match self.svc.kind {
            Kind::Simple => self.state == State::Running,
            Kind::Oneshot => self.state == State::Done,
        }
    }

    /// Why a dependent that requires this unit can never start, if it cannot.
    pub fn unusable_reason(&self) -> Option<String> {
        match &self.state {
            State::Failed(why) => Some(format!("has failed ({why})")),
            State::Blocked(why) => Some(format!("was not started ({why})")),
            State::Exited if self.svc.kind == Kind::Simple => Some("has exited".into()),
            State::Stopped => Some("was stopped".into()),
            _ => None,
        }
    }

    /// Decides what follows the end of a run at `now`, and updates the backoff state.
    pub fn after_exit(&mut self, exit: Exit, now: Instant) -> Next {
        let ran = self.started_at.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        if self.svc.kind == Kind::Oneshot && exit.success() {
            return Next::Done;
        }
        let restart = match self.svc.restart {
            Restart::Always => true,
            Restart::OnFailure => !exit.success(),
            Restart::Never => false,
        };
        if !restart {
            return Next::StayDown;
        }
        let backoff = &self.svc.backoff;
        // A run that lasted counts as healthy: start the backoff and the count from scratch.
        if ran >= backoff.stable {
            self.failures.clear();
            self.next_delay = backoff.first;
        }
        while self
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > backoff.window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        let failures = u32::try_from(self.failures.len()).unwrap_or(u32::MAX);
        if failures >= backoff.limit {
            return Next::GiveUp { failures };
        }
        let delay = self.next_delay;
        self.next_delay = self.next_delay.saturating_mul(2).min(backoff.max);
        Next::Restart { delay, failure: failures }
    }

    /// Forgets past failures: an operator's start or a new definition gets a fresh budget.
    pub fn reset_backoff(&mut self) {
        self.failures.clear();
        self.next_delay = self.svc.backoff.first;
    }

    /// Names the cause of an exit where brig knows it: SECCOMP_RET_KILL_PROCESS ends a process
    /// as if by SIGSYS, so a SIGSYS death under a filter that kills is the filter's doing.
    pub fn name_exit(&self, exit: Exit) -> Exit {
        let kills = self.svc.seccomp.as_ref().is_some_and(|f| f.action == Action::Kill);
        match exit {
            Exit::Signal(Signal::SIGSYS) if kills => Exit::Seccomp,
            other => other,
        }
    }

    /// One-line description of how the last run ended.
    pub fn describe_exit(&self, exit: Exit) -> String {
        match exit {
            Exit::Code(c) => format!("exited with status {c}"),
            Exit::Signal(s) => format!("killed by signal {}", s.as_str()),
            Exit::Setup(step, errno) => {
                let step = step.map_or("setup", |s| s.describe());
                format!("{step} failed ({errno:?})")
            }
            Exit::Spawn => "could not be started".into(),
            Exit::Oom(scope) => format!("killed by OOM ({})", scope.describe()),
            Exit::Seccomp => "killed by SIGSYS (seccomp: a system call its filter forbids)".into(),
        }
    }

    pub fn window_text(&self) -> String {
        duration::display(self.svc.backoff.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::service::parse;

    fn unit(extra: &str) -> Unit {
        let text = format!("exec = [\"/bin/false\"]\n{extra}");
        Unit::new(parse("t", "t.toml".into(), &text).unwrap().0)
    }

    fn crash(u: &mut Unit, at: Instant) -> Next {
        u.started_at = Some(at);
        u.after_exit(Exit::Code(3), at + Duration::from_millis(1))
    }

    #[test]
    fn crash_loop_doubles_the_delay_then_gives_up() {
        let mut u = unit("restart_delay = \"100ms\"\nrestart_limit = 4\n");
        let t = Instant::now();
        let mut delays = Vec::new();
        let mut at = t;
        loop {
            match crash(&mut u, at) {
                Next::Restart { delay, .. } => {
                    delays.push(delay.as_millis());
                    at += delay;
                }
                Next::GiveUp { failures } => {
                    assert_eq!(failures, 4);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delays, vec![100, 200, 400]);
    }

    #[test]
    fn delay_is_capped() {
        let mut u =
            unit("restart_delay = \"1s\"\nrestart_delay_max = \"3s\"\nrestart_limit = 10\n");
        let t = Instant::now();
        let got: Vec<u128> = (0..5)
            .map(|i| match crash(&mut u, t + Duration::from_secs(i * 5)) {
                Next::Restart { delay, .. } => delay.as_millis(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![1000, 2000, 3000, 3000, 3000]);
    }

    #[test]
    fn service_that_ran_past_stable_period_keeps_being_restarted() {
        let mut u = unit("restart_limit = 2\nstable_after = \"1s\"\n");
        let mut at = Instant::now();
        for _ in 0..10 {
            u.started_at = Some(at);
            at += Duration::from_secs(2);
            assert!(matches!(u.after_exit(Exit::Code(1), at), Next::Restart { failure: 1, .. }));
        }
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut u = unit("restart_limit = 2\nrestart_window = \"10s\"\n");
        let t = Instant::now();
        assert!(matches!(crash(&mut u, t), Next::Restart { .. }));
        assert!(matches!(crash(&mut u, t + Duration::from_secs(11)), Next::Restart { .. }));
        assert!(matches!(crash(&mut u, t + Duration::from_secs(12)), Next::GiveUp { .. }));
    }

    #[test]
    fn clean_exit_is_final_with_on_failure_and_restarted_with_always() {
        let mut u = unit("restart = \"on-failure\"\n");
        assert_eq!(u.after_exit(Exit::Code(0), Instant::now()), Next::StayDown);
        let mut u = unit("restart = \"always\"\n");
        assert!(matches!(u.after_exit(Exit::Code(0), Instant::now()), Next::Restart { .. }));
    }

    #[test]
    fn oneshot_success_is_done_and_failure_stays_down_by_default() {
        let mut u = unit("type = \"oneshot\"\n");
        assert_eq!(u.after_exit(Exit::Code(0), Instant::now()), Next::Done);
        assert_eq!(u.after_exit(Exit::Code(1), Instant::now()), Next::StayDown);
    }

    #[test]
    fn exec_failure_counts_as_a_failure() {
        let mut u = unit("restart = \"on-failure\"\n");
        let next = u.after_exit(Exit::Setup(Some(Step::Exec), Errno::ENOENT), Instant::now());
        assert!(matches!(next, Next::Restart { failure: 1, .. }));
    }

    #[test]
    fn sigsys_under_a_killing_filter_is_named_and_restarted_as_usual() {
        let mut u = unit("[seccomp]\ndeny = [\"mount\"]\naction = \"kill\"\n");
        let exit = u.name_exit(Exit::Signal(Signal::SIGSYS));
        assert_eq!(exit, Exit::Seccomp);
        assert_eq!(
            u.describe_exit(exit),
            "killed by SIGSYS (seccomp: a system call its filter forbids)"
        );
        assert!(matches!(u.after_exit(exit, Instant::now()), Next::Restart { failure: 1, .. }));
        assert_eq!(u.name_exit(Exit::Signal(Signal::SIGSEGV)), Exit::Signal(Signal::SIGSEGV));
        // Without a killing filter a SIGSYS came from elsewhere (kill(1), the program's own
        // filter): it stays a plain signal.
        let u = unit("[seccomp]\ndeny = [\"mount\"]\n");
        assert_eq!(u.name_exit(Exit::Signal(Signal::SIGSYS)), Exit::Signal(Signal::SIGSYS));
    }

    #[test]
    fn settled_is_sticky() {
        let mut u = unit("");
        u.set(State::Running);
        u.set(State::Backoff { until: Instant::now() });
        assert!(u.settled);
    }
}
