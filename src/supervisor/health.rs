//! Boot health, for devices updated in the field: when a boot counts as good, what the failure
//! of a critical service does, and the rescue shell.
//!
//! The boot is good once the system is ready and every service marked `critical` has been up
//! for `[boot] good_after` without interruption. Then brig saves the configuration as the
//! last-known-good copy, resets its boot counter, and runs `[boot] good_command`, which is
//! where an A/B updater (RAUC, SWUpdate) or U-Boot's boot counter learn that this image works.
//! A critical service that fails for good reboots the device instead, so the bootloader can
//! fall back to the other slot.

use std::path::Path;
use std::time::Instant;

use super::unit::{State, Unit};
use super::Supervisor;
use crate::config::service::synthetic;
use crate::config::system::Boot;
use crate::config::{duration, Kind};
use crate::shutdown::Action;

pub struct Health {
    cfg: Boot,
    /// The real system init: writes the last-known-good config and the boot counter.
    persistent: bool,
    /// Running the last-known-good copy because the config directory is broken: a good boot
    /// must not save that directory over the copy.
    pub(super) from_last_good: bool,
    good: bool,
    /// Since when every critical service has been up.
    up_since: Option<Instant>,
}

impl Health {
    pub fn new(cfg: Boot, persistent: bool, from_last_good: bool) -> Self {
        Health { cfg, persistent, from_last_good, good: false, up_since: None }
    }

    /// When the boot will count as good if nothing changes.
    pub fn deadline(&self) -> Option<Instant> {
        if self.good {
            return None;
        }
        self.up_since.map(|t| t + self.cfg.good_after)
    }
}

impl Supervisor {
    pub(super) fn check_health(&mut self, now: Instant) {
        if self.health.good || !self.ready_announced {
            return;
        }
        let all_up = self.units.iter().filter(|u| u.svc.critical).all(Unit::satisfies_dependents);
        if !all_up {
            self.health.up_since = None;
            return;
        }
        let since = *self.health.up_since.get_or_insert(now);
        if now < since + self.health.cfg.good_after {
            return;
        }
        self.health.good = true;
        log::info!(
            "boot is good: every critical service up for {}",
            duration::display(self.health.cfg.good_after)
        );
        if self.health.persistent {
            self.save_good_state();
        }
        let command = self.health.cfg.good_command.clone();
        if !command.is_empty() {
            self.add_unit("boot-good", &command, Kind::Oneshot, false);
        }
    }

    fn save_good_state(&self) {
        let state = Path::new(crate::boot::STATE_DIR);
        let from_last_good = self.health.from_last_good;
        let saved = std::fs::create_dir_all(state)
            .map_err(|e| format!("mkdir {}: {e}", state.display()))
            .and_then(|()| {
                if from_last_good {
                    // The config directory is the broken one this copy stood in for.
                    return Ok(());
                }
                crate::storage::save_snapshot(&self.config_dir, &state.join("last-good"))
                    .map_err(|e| e.to_string())
            })
            .and_then(|()| {
                crate::storage::write_atomic(&state.join("boots-since-good"), b"0\n")
                    .map_err(|e| e.to_string())
            });
        match saved {
            Ok(()) if from_last_good => log::info!(
                "kept the last-known-good configuration: {} is still broken",
                self.config_dir.display()
            ),
            Ok(()) => log::info!(
                "saved {} as the last-known-good configuration",
                self.config_dir.display()
            ),
            Err(e) => log::error!("saving the last-known-good configuration: {e}"),
        }
    }

    /// A critical service failed for good: reboot, so the bootloader can fall back.
    pub(super) fn critical_failed(&mut self, i: usize) {
        let name = self.units[i].name().to_string();
        if !self.health.cfg.reboot_on_critical_failure {
            log::error!("critical service {name} failed; [boot] reboot_on_critical_failure is off");
            return;
        }
        log::error!("critical service {name} failed for good: rebooting");
        self.begin_shutdown(Action::Reboot, &format!("critical service {name} failed"));
    }

    /// Starts a shell on the console, restarted whenever it exits.
    pub(super) fn add_rescue_shell(&mut self, argv: Vec<String>, why: &str) {
        log::warn!("starting a rescue shell on the console: {why}");
        self.add_unit("rescue", &argv, Kind::Simple, true);
    }

    /// When boot settled and nothing at all runs, an operator at the console needs a shell.
    pub(super) fn rescue_if_nothing_runs(&mut self) {
        if !self.health.persistent || self.units.iter().any(|u| u.name() == "rescue") {
            return;
        }
        let up = self.units.iter().any(|u| matches!(u.state, State::Running | State::Done));
        if !up && (!self.units.is_empty() || !self.broken.is_empty()) {
            let shell = self.health.cfg.rescue_shell.clone();
            self.add_rescue_shell(shell, "no service could be started");
        }
    }

    fn add_unit(&mut self, name: &str, argv: &[String], kind: Kind, console: bool) {
        match synthetic(name, argv, kind, console) {
            Ok(svc) => {
                let mut unit = Unit::new(svc);
                // Ready is already announced; these do not hold anything up.
                unit.settled = true;
                self.units.push(unit);
            }
            Err(e) => log::error!("{name}: {}", e.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadline_follows_the_first_moment_all_were_up() {
        let mut h = Health::new(
            Boot { good_after: Duration::from_secs(5), ..Boot::default() },
            false,
            false,
        );
        assert_eq!(h.deadline(), None);
        let t = Instant::now();
        h.up_since = Some(t);
        assert_eq!(h.deadline(), Some(t + Duration::from_secs(5)));
        h.good = true;
        assert_eq!(h.deadline(), None);
    }
}
