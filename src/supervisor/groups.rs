//! The supervisor's side of cgroups: a unit's group is created (with its limits) before each
//! start, signalled and killed as a whole at stop, and the unit is down only once the group is
//! empty. An OOM kill is recognised by the `oom_kill` counter of memory.events.
//!
//! Emptiness is checked when children are reaped (the processes of a killed service are
//! PID 1's orphans, or die with their PID namespace) and, while a group drains, on a short
//! timer, since a process can leave without PID 1 seeing it (brig not PID 1, or a process
//! re-parented to a sub-reaper).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::unit::Exit;
use super::Supervisor;
use crate::cgroup::{OomKill, OomScope};
use crate::config::{Kind, Restart};

/// How often a draining group is looked at when no child exit says so.
pub const DRAIN_POLL: Duration = Duration::from_millis(100);

impl Supervisor {
    /// Creates the cgroup of unit `i` with its limits. Err: logged, the start fails.
    pub(super) fn prepare_group(&mut self, i: usize) -> Result<(), String> {
        let unit = &mut self.units[i];
        let Some(tree) = &self.cgroups else {
            if !unit.svc.limits.is_empty() {
                return Err("limits need a cgroup2 hierarchy, and there is none".into());
            }
            return Ok(());
        };
        let group = tree.group(unit.name());
        group.create(&unit.svc.limits.files).map_err(|e| e.to_string())?;
        unit.oom_counters = group.oom_counters();
        unit.group = Some(group);
        Ok(())
    }

    /// Called when the main process of unit `i` ended with `exit`: the exit to report (an
    /// OOM kill is named as such), or None while the rest of its group is still being killed.
    pub(super) fn group_exit(&mut self, i: usize, exit: Exit) -> Option<Exit> {
        let unit = &mut self.units[i];
        let Some(group) = &unit.group else { return Some(exit) };
        let oom = group.oom_since(&unit.oom_counters);
        if let Some(OomKill { scope: OomScope::Enclosing, limit: Some(dir), .. }) = &oom {
            log::warn!(
                "service {}: OOM kill under the memory limit of {}, not its own",
                unit.name(),
                dir.display()
            );
        }
        let exit = match (exit, oom) {
            (Exit::Signal(Signal::SIGKILL), Some(k)) => Exit::Oom(k.scope),
            (exit, Some(k)) => {
                // The OOM killer picked other processes of the service, not its main one.
                log::warn!(
                    "service {}: {} of its processes killed by OOM ({})",
                    unit.name(),
                    k.kills,
                    k.scope.describe()
                );
                exit
            }
            (exit, None) => exit,
        };
        // A oneshot that succeeded, or a daemon that exited 0 for good (it forked into the
        // background), may leave processes behind on purpose: they stay in its group, status
        // shows them, and `brig stop` removes them. A daemon about to be restarted must not
        // run beside leftovers of its previous instance.
        let final_exit = unit.svc.kind == Kind::Oneshot || unit.svc.restart != Restart::Always;
        let keep = exit.success() && final_exit;
        let populated = group.populated();
        if keep || !populated {
            // An empty group goes (a finished oneshot's too); what a finished service left
            // keeps its group, for status to show and `stop` to remove.
            if !populated {
                group.remove();
                unit.group = None;
            }
            return Some(exit);
        }
        // Like a stop: the stop signal first, SIGKILL after stop_timeout, so helpers of a
        // crashed daemon can still clean up.
        let sig = unit.svc.stop_signal;
        log::info!(
            "service {}: main process gone, sending {sig} to the rest of its cgroup",
            unit.name()
        );
        group.signal(sig);
        if sig != Signal::SIGCONT {
            // Stopped processes would not see the signal until continued.
            group.signal(Signal::SIGCONT);
        }
        unit.draining = Some((exit, Some(Instant::now() + unit.svc.stop_timeout)));
        None
    }

    /// Finishes the units whose group has emptied since their main process ended, and kills
    /// what is left once stop_timeout has passed.
    pub(super) fn settle_drained(&mut self, now: Instant) {
        for i in 0..self.units.len() {
            let unit = &mut self.units[i];
            let Some((exit, kill_at)) = unit.draining else { continue };
            if let Some(group) = unit.group.as_ref().filter(|g| g.populated()) {
                if kill_at.is_some_and(|at| now >= at) {
                    log::warn!(
                        "service {}: the rest of its cgroup did not exit within {}, sending SIGKILL",
                        unit.name(),
                        crate::config::duration::display(unit.svc.stop_timeout)
                    );
                    if let Err(e) = group.kill() {
                        log::error!("service {}: {e}", unit.name());
                    }
                    unit.draining = Some((exit, None));
                }
                continue;
            }
            unit.draining = None;
            if let Some(g) = &unit.group {
                g.remove();
            }
            self.drain(i, None);
            self.after_run(i, exit, now);
        }
    }

    /// Whether some unit waits for its group to empty (the loop then polls).
    pub(super) fn draining(&self) -> bool {
        self.units.iter().any(|u| u.draining.is_some())
    }

    /// Sends `sig` to every process of unit `i`: its whole cgroup, or without one its
    /// process group. Returns false when the unit has nothing left to signal.
    pub(super) fn signal_unit(&self, i: usize, sig: Signal) -> bool {
        let unit = &self.units[i];
        match (&unit.group, unit.pid) {
            (Some(g), _) => {
                if sig == Signal::SIGKILL {
                    if let Err(e) = g.kill() {
                        log::error!("service {}: {e}", unit.name());
                    }
                } else {
                    g.signal(sig);
                }
                true
            }
            (_, Some(pid)) => {
                super::signal_group(pid, sig);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Group;
    use crate::config::service::parse;
    use crate::config::Tree;
    use crate::supervisor::unit::State;
    use std::path::PathBuf;

    fn sup_with_group(tag: &str, events: &str, procs_populated: bool) -> (Supervisor, PathBuf) {
        sup_with_service(tag, "exec = [\"/x\"]\n", events, procs_populated)
    }

    fn sup_with_service(
        tag: &str,
        text: &str,
        events: &str,
        procs_populated: bool,
    ) -> (Supervisor, PathBuf) {
        let svc = parse("hog", "hog.toml".into(), text).unwrap().0;
        let tree = Tree { services: vec![svc], ..Tree::default() };
        let mut s = Supervisor::new(tree, crate::supervisor::Setup::default()).unwrap();
        let dir = std::env::temp_dir().join(format!("brig-groups-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.events"), events).unwrap();
        let populated = if procs_populated { "populated 1\n" } else { "populated 0\n" };
        std::fs::write(dir.join("cgroup.events"), populated).unwrap();
        s.units[0].group = Some(Group { dir: dir.clone() });
        s.units[0].oom_counters = s.units[0].group.as_ref().unwrap().oom_counters();
        (s, dir)
    }

    #[test]
    fn sigkill_counted_by_memory_events_is_reported_as_oom() {
        let (mut s, dir) = sup_with_group("oom", "oom 1\noom_kill 1\n", false);
        std::fs::write(dir.join("memory.events"), "oom 2\noom_kill 2\n").unwrap();
        let exit = Exit::Oom(OomScope::Own);
        assert_eq!(s.group_exit(0, Exit::Signal(Signal::SIGKILL)), Some(exit));
        assert_eq!(s.units[0].describe_exit(exit), "killed by OOM (memory.max reached)");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn finished_oneshot_with_an_empty_group_gives_the_group_up() {
        let text = "exec = [\"/x\"]\ntype = \"oneshot\"\n";
        let (mut s, dir) = sup_with_service("oneshot-empty", text, "oom_kill 0\n", false);
        assert_eq!(s.group_exit(0, Exit::Code(0)), Some(Exit::Code(0)));
        assert_eq!(s.units[0].group, None, "status would show the stale group's usage");
        // With processes left behind, the group stays for status and stop.
        let (mut s, dir2) = sup_with_service("oneshot-left", text, "oom_kill 0\n", true);
        assert_eq!(s.group_exit(0, Exit::Code(0)), Some(Exit::Code(0)));
        assert!(s.units[0].group.is_some());
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(dir2);
    }

    #[test]
    fn sigkill_without_a_new_oom_kill_stays_a_signal() {
        let (mut s, dir) = sup_with_group("kill", "oom 1\noom_kill 1\n", false);
        let exit = Exit::Signal(Signal::SIGKILL);
        assert_eq!(s.group_exit(0, exit), Some(exit));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn service_is_not_down_while_its_group_still_has_processes() {
        let (mut s, dir) = sup_with_group("drain", "oom_kill 1\n", true);
        // cgroup.kill is a plain file here: the write succeeds, nothing dies.
        std::fs::write(dir.join("cgroup.kill"), "").unwrap();
        let start = Instant::now();
        assert_eq!(s.group_exit(0, Exit::Code(1)), None);
        assert!(s.draining());
        // The leftovers get the stop signal and stop_timeout (10 s) before SIGKILL.
        s.settle_drained(start + Duration::from_secs(9));
        assert_eq!(std::fs::read_to_string(dir.join("cgroup.kill")).unwrap(), "");
        s.settle_drained(start + Duration::from_secs(11));
        assert_eq!(std::fs::read_to_string(dir.join("cgroup.kill")).unwrap(), "1");
        assert!(s.draining());
        std::fs::write(dir.join("cgroup.events"), "populated 0\n").unwrap();
        s.units[0].set(State::Running);
        s.settle_drained(start + Duration::from_secs(12));
        assert!(!s.draining());
        assert_eq!(s.units[0].last_exit, Some(Exit::Code(1)));
        let _ = std::fs::remove_dir_all(dir);
    }
}
