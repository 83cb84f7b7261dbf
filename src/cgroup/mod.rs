//! cgroup v2: where each service's group lives and what it has used.
//!
//! Layout (documented in the README): every service has `/sys/fs/cgroup/services/NAME`.

use std::path::{Path, PathBuf};

/// Where the unified hierarchy is mounted at boot.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup directory of service `name` under the hierarchy at `root`.
pub fn service_dir(root: &Path, name: &str) -> PathBuf {
    root.join("services").join(name)
}

/// memory.current and the usage_usec line of cpu.stat of a cgroup; None where the file is
/// absent (controller not enabled, or no group).
pub fn usage(dir: &Path) -> (Option<u64>, Option<u64>) {
    let memory = std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let cpu = std::fs::read_to_string(dir.join("cpu.stat")).ok().and_then(|t| {
        t.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok())
    });
    (memory, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_reads_memory_current_and_cpu_usage() {
        let dir = std::env::temp_dir().join(format!("brig-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(usage(&dir), (None, None));
        std::fs::write(dir.join("memory.current"), "81920\n").unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 1234\nuser_usec 1000\n").unwrap();
        assert_eq!(usage(&dir), (Some(81920), Some(1234)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
