//! Loading the kernel modules named in system.toml, with their dependencies, by finit_module(2).
//!
//! Names are resolved through `modules.dep` as written by depmod; brig does not link kmod.
//! A module that is already loaded or built in is fine; one that cannot be found or loaded is
//! an error for that module only, and boot goes on.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// `modules.dep`: module name -> (path relative to the modules dir, its dependencies' paths).
#[derive(Debug, Default)]
pub struct DepTable {
    entries: HashMap<String, (String, Vec<String>)>,
}

/// The module name of a path such as `kernel/fs/overlayfs/overlay.ko.xz`, with `-` as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl DepTable {
    pub fn parse(text: &str) -> Self {
        let mut entries = HashMap::new();
        for line in text.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(str::to_string).collect();
            entries.insert(module_name(module), (module.to_string(), deps));
        }
        DepTable { entries }
    }

    /// Paths to load for `name`, dependencies first. None if the table does not know it.
    pub fn load_order(&self, name: &str) -> Option<Vec<String>> {
        let (path, deps) = self.entries.get(&name.replace('-', "_"))?;
        // depmod lists dependencies so that the last one must be loaded first.
        let mut order: Vec<String> = deps.iter().rev().cloned().collect();
        order.push(path.clone());
        Some(order)
    }
}

/// Where modules for the running kernel live.
pub fn modules_dir() -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new("/lib/modules").join(release)
}

/// Loads each named module; logs one line per module that could not be loaded.
pub fn load_all(names: &[String], dir: &Path, sys_module: &Path) {
    if names.is_empty() {
        return;
    }
    let dep_path = dir.join("modules.dep");
    let table = match std::fs::read_to_string(&dep_path) {
        Ok(text) => DepTable::parse(&text),
        Err(e) => {
            log::error!(
                "modules: cannot read {}: {e}; not loading {}",
                dep_path.display(),
                names.join(", ")
            );
            return;
        }
    };
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let soft = SoftDeps::parse(
        &std::fs::read_to_string(dir.join("modules.softdep")).unwrap_or_default(),
        &std::fs::read_to_string(dir.join("modules.alias")).unwrap_or_default(),
    );
    for name in names {
        let norm = name.replace('-', "_");
        if sys_module.join(&norm).exists() {
            log::debug!("module {name}: already loaded");
            continue;
        }
        let Some(order) = table.load_order(&norm) else {
            if builtin.lines().any(|l| module_name(l) == norm) {
                log::debug!("module {name}: built into the kernel");
            } else {
                log::error!("module {name}: not found in {}", dep_path.display());
            }
            continue;
        };
        // Soft dependencies (ext4 wants crc32c) are what the module looks up at run time;
        // missing ones are the module's business, so they are only tried.
        for pre in soft.pre(&norm) {
            if let Some(paths) = table.load_order(&pre) {
                if let Err(e) = paths.iter().try_for_each(|p| insert(&dir.join(p))) {
                    log::debug!("module {name}: soft dependency {pre}: {e}");
                }
            }
        }
        match order.iter().try_for_each(|p| insert(&dir.join(p))) {
            Ok(()) => log::info!("module {name}: loaded"),
            Err(e) => log::error!("module {name}: {e}"),
        }
    }
}

/// `modules.softdep` with the names resolved through `modules.alias` (exact aliases only).
#[derive(Debug, Default)]
pub struct SoftDeps {
    pre: HashMap<String, Vec<String>>,
}

impl SoftDeps {
    pub fn parse(softdep: &str, alias: &str) -> Self {
        let aliases: HashMap<&str, &str> = alias
            .lines()
            .filter_map(|l| l.strip_prefix("alias "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        let mut pre = HashMap::new();
        for line in softdep.lines() {
            let Some(rest) = line.strip_prefix("softdep ") else { continue };
            let mut words = rest.split_whitespace();
            let Some(module) = words.next() else { continue };
            let mut in_pre = false;
            let mut list = Vec::new();
            for word in words {
                match word {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    w if in_pre => {
                        list.push(aliases.get(w).copied().unwrap_or(w).replace('-', "_"))
                    }
                    _ => {}
                }
            }
            pre.insert(module.replace('-', "_"), list);
        }
        SoftDeps { pre }
    }

    /// Modules to try before `name`.
    pub fn pre(&self, name: &str) -> Vec<String> {
        self.pre.get(name).cloned().unwrap_or_default()
    }
}

/// Loads one module file. Already loaded (EEXIST) counts as success.
fn insert(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let compressed = [".xz", ".zst", ".gz"].iter().any(|ext| path.to_string_lossy().ends_with(ext));
    let mut flags = nix::kmod::ModuleInitFlags::empty();
    if compressed {
        // MODULE_INIT_COMPRESSED_FILE (Linux 6.4): the kernel decompresses the file itself.
        flags = nix::kmod::ModuleInitFlags::from_bits_retain(4);
    }
    let params = CString::default();
    match nix::kmod::finit_module(&file, &params, flags) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(format!("finit_module {}: {} ({e:?})", path.display(), e.desc())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/overlayfs/overlay.ko:
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/drivers/net/virtio-net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
";

    #[test]
    fn dependencies_load_first_in_reverse_listing_order() {
        let t = DepTable::parse(DEP);
        assert_eq!(
            t.load_order("bridge").unwrap(),
            vec!["kernel/net/llc/llc.ko", "kernel/net/802/stp.ko", "kernel/net/bridge/bridge.ko"]
        );
        assert_eq!(t.load_order("overlay").unwrap(), vec!["kernel/fs/overlayfs/overlay.ko"]);
    }

    #[test]
    fn dashes_and_underscores_name_the_same_module() {
        let t = DepTable::parse(DEP);
        assert_eq!(t.load_order("virtio_net").unwrap().len(), 3);
        assert_eq!(t.load_order("virtio-net").unwrap().len(), 3);
        assert!(t.load_order("nosuch").is_none());
    }

    #[test]
    fn soft_dependencies_resolve_through_aliases() {
        let soft = SoftDeps::parse(
            "# comment\nsoftdep ext4 pre: crc32c post: mbcache_extra\n",
            "alias crc32c crc32c_generic\nalias fs-ext4 ext4\n",
        );
        assert_eq!(soft.pre("ext4"), vec!["crc32c_generic"]);
        assert!(soft.pre("overlay").is_empty());
    }

    #[test]
    fn module_names_strip_directories_and_suffixes() {
        assert_eq!(module_name("kernel/drivers/net/virtio-net.ko.xz"), "virtio_net");
        assert_eq!(module_name("overlay.ko"), "overlay");
    }
}
