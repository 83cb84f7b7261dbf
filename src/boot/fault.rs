//! Test builds only (`--features fault-injection`): faults PID 1 can be told to commit, so
//! QEMU tests can prove the watchdog and the fatal-error policy. Never in a firmware build.

use std::time::Duration;

use crate::control::protocol::Response;
use crate::supervisor::Supervisor;

/// Set by "stall-shutdown": the final shutdown step then hangs before reboot(2).
pub static STALL_SHUTDOWN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[allow(clippy::panic)]
pub fn inject(kind: &str, _sup: &mut Supervisor) -> Response {
    match kind {
        "panic" => panic!("fault injected on request"),
        "stall" => {
            log::warn!("fault: stalling the main loop on request");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "stall-shutdown" => {
            STALL_SHUTDOWN.store(true, std::sync::atomic::Ordering::Relaxed);
            Response::Accepted { message: "the next shutdown will hang before reboot".into() }
        }
        other => Response::error(format!("unknown fault {other:?} (panic, stall, stall-shutdown)")),
    }
}
