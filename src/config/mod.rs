//! Configuration: `system.toml` and one file per service under `services/`.
//!
//! Loading goes path -> text -> typed value, and never stops at the first bad file: every
//! problem becomes a [`Diagnostic`] with file:line:column, the good services are kept, and the
//! bad ones are listed as [`Broken`] so that their dependents can say why they did not start.
//! The same loader serves PID 1 at boot and `brig check` on a firmware tree.

pub mod duration;
mod graph;
pub mod isolation;
pub mod seccomp;
pub mod service;
pub mod system;

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use isolation::{Container, Network, Upper, Volume};
pub use service::{Ident, Kind, Restart, Service};
pub use system::System;

/// The directory PID 1 reads when the kernel command line does not say otherwise.
pub const DEFAULT_DIR: &str = "/etc/brig";

/// One problem in one file, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl Diagnostic {
    fn new(file: &Path, text: &str, span: Option<Range<usize>>, message: String) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            position: span.map(|s| line_col(text, s.start)),
            message,
        }
    }

    /// A decoding error: like `new`, with the key the span falls on (`limits.memory_max`)
    /// put in front of the message unless the message already names it.
    fn decoding(file: &Path, text: &str, span: Option<Range<usize>>, message: String) -> Self {
        let key = span.as_ref().and_then(|s| key_at(text, s.start));
        let message = match key {
            Some(key) => {
                let last = key.rsplit('.').next().unwrap_or(&key);
                let named = [format!("{key}:"), format!("{key}."), format!("{last}:")];
                if named.iter().any(|n| message.starts_with(n))
                    || message.contains(&format!("`{last}`"))
                {
                    message
                } else {
                    format!("{key}: {message}")
                }
            }
            None => message,
        };
        Diagnostic::new(file, text, span, message)
    }

    fn io(file: &Path, op: &str, err: &io::Error) -> Self {
        Diagnostic { file: file.to_path_buf(), position: None, message: format!("{op}: {err}") }
    }
}

/// A diagnostic about top-level `key` of a file that loaded (for checks made afterwards, such
/// as `brig check --root`), placed at the key's value when the file still reads.
pub fn diagnostic_at_key(file: &Path, key: &str, message: String) -> Diagnostic {
    let text = read_file(file).unwrap_or_default();
    // IgnoredAny: only the span is wanted; decoding the values as `toml::Value` would bring
    // toml's whole Value decoder into the binary for it.
    type Keys = std::collections::BTreeMap<String, toml::Spanned<serde::de::IgnoredAny>>;
    let span = toml::from_str::<Keys>(&text)
        .ok()
        .and_then(|table| table.get(key).map(toml::Spanned::span));
    Diagnostic::new(file, &text, span, message)
}

/// A service whose file exists but could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub name: String,
    pub reason: String,
}

/// Everything read from a config directory.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub system: System,
    /// Valid services, sorted by name.
    pub services: Vec<Service>,
    pub broken: Vec<Broken>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Tree {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Reads `dir/system.toml` and `dir/services/*.toml`.
pub fn load(dir: &Path) -> Tree {
    let mut tree = Tree::default();
    load_system(&dir.join("system.toml"), &mut tree);
    let mut spans = Vec::new();
    for path in service_files(&dir.join("services"), &mut tree.diagnostics) {
        load_service(&path, &mut tree, &mut spans);
    }
    graph::check(&mut tree, &spans);
    tree
}

fn load_system(path: &Path, tree: &mut Tree) {
    let text = match read_file(path) {
        Ok(text) => text,
        // No system.toml at all is a normal, minimal setup.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tree.diagnostics.push(Diagnostic::io(path, "cannot read, using defaults", &e));
            return;
        }
    };
    match system::parse(&text) {
        Ok(system) => tree.system = system,
        Err(e) => {
            let message = format!("{} (using defaults for the whole file)", e.message);
            tree.diagnostics.push(Diagnostic::decoding(path, &text, e.span, message));
        }
    }
}

/// The `*.toml` files of the services directory, sorted so that errors come out in a stable
/// order.
fn service_files(dir: &Path, diagnostics: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            diagnostics.push(Diagnostic::io(dir, "cannot list services", &e));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn load_service(
    path: &Path,
    tree: &mut Tree,
    spans: &mut Vec<(String, String, service::DependencySpans)>,
) {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if !service::valid_name(&name) {
        let message = format!(
            "{name:?} is not a valid service name (letters, digits, '_', '-', '.', '@'; the file \
             name is the service name)"
        );
        tree.diagnostics.push(Diagnostic::new(path, "", None, message));
        return;
    }
    let text = match read_file(path) {
        Ok(text) => text,
        Err(e) => {
            tree.diagnostics.push(Diagnostic::io(path, "cannot read", &e));
            tree.broken.push(Broken { name, reason: format!("its file cannot be read ({e})") });
            return;
        }
    };
    match service::parse(&name, path.to_path_buf(), &text) {
        Ok((svc, deps)) => {
            spans.push((name, text, deps));
            tree.services.push(svc);
        }
        Err(e) => {
            tree.diagnostics.push(Diagnostic::decoding(path, &text, e.span, e.message));
            tree.broken.push(Broken { name, reason: "has a configuration error".into() });
        }
    }
}

/// The dotted key whose value (or table header) holds byte `offset` of a TOML text:
/// the last `[table]` header before it and the last `key =` line at or before its line.
/// Lexical, for messages only: None where the text does not look like that.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut table: Option<String> = None;
    let mut key: Option<String> = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        if start > offset {
            break;
        }
        start += line.len();
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let name = header.trim_start_matches('[').split(']').next().unwrap_or("").trim();
            if name.is_empty() {
                continue; // an array value continued on this line: `[1, 2]`
            }
            if !name.contains(['"', ',', ' ']) || name.starts_with('"') {
                table = Some(name.to_string());
                key = None;
                continue;
            }
        }
        let Some((lhs, _)) = line.split_once('=') else { continue };
        let lhs = lhs.trim();
        let plain = |c: char| c.is_ascii_alphanumeric() || "_-.\"".contains(c);
        if !lhs.is_empty() && lhs.chars().all(plain) && !line.starts_with('{') {
            key = Some(lhs.trim_matches('"').to_string());
        }
    }
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// "1 error", "2 errors": a count with its noun.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The largest config file brig reads: far above any real one, far below harm to PID 1.
const MAX_FILE: u64 = 1 << 20;

/// Reads a config file: a regular file only (a FIFO would block PID 1 in open or read, a
/// link to /dev/zero would never end), opened without blocking, at most MAX_FILE bytes.
fn read_file(path: &Path) -> io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_FILE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "larger than 1 MiB"));
    }
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text)?;
    Ok(text)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_after_loading_point_at_the_key() {
        let dir = tempdir("at-key");
        let file = dir.join("s.toml");
        write(&dir, "s.toml", "description = \"x\"\n\nexec = [\"/bin/nope\"]\nuser = \"www\"\n");
        let d = diagnostic_at_key(&file, "exec", "exec: /bin/nope does not exist".into());
        assert_eq!(d.position, Some((3, 8)));
        assert_eq!(diagnostic_at_key(&file, "user", String::new()).position, Some((4, 8)));
        assert_eq!(diagnostic_at_key(&file, "group", String::new()).position, None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn decoding_errors_name_the_key_their_span_falls_on() {
        let text = "exec = [\"/x\",\n  \"-v\"]\n\n[limits]\nmemory_max = \"12XB\"\n\
                    [container]\nvolumes = [{ target = \"/t\", tmpfs = \"0\" }]\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap());
        assert_eq!(at("\"-v\"").as_deref(), Some("exec"));
        assert_eq!(at("\"12XB\"").as_deref(), Some("limits.memory_max"));
        assert_eq!(at("[container]").as_deref(), Some("container"));
        assert_eq!(at("tmpfs").as_deref(), Some("container.volumes"));
        let file = Path::new("svc.toml");
        let span = text.find("\"12XB\"").map(|s| s..s + 6);
        let d = Diagnostic::decoding(file, text, span.clone(), "\"12XB\" is not a size".into());
        assert_eq!(d.to_string(), "svc.toml:5:14: limits.memory_max: \"12XB\" is not a size");
        // Already named: left alone.
        let named = "memory_max: too large".to_string();
        assert_eq!(Diagnostic::decoding(file, text, span, named.clone()).message, named);
    }

    #[test]
    fn fifos_and_devices_in_the_config_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("brig-cfg-fifo-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("services")).unwrap();
        let fifo = dir.join("services/f.toml");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a live C string.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
        std::os::unix::fs::symlink("/dev/zero", dir.join("services/z.toml")).unwrap();
        std::fs::write(dir.join("services/ok.toml"), "exec = [\"/bin/true\"]\n").unwrap();
        // Regression: this load blocked in open(2) on the FIFO until someone wrote to it.
        let tree = load(&dir);
        let errors: Vec<String> = tree.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(tree.services.len(), 1, "{errors:?}");
        assert_eq!(errors.iter().filter(|e| e.contains("not a regular file")).count(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\nbb = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 11), (2, 6));
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("brig-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn one_broken_file_keeps_the_others_and_reports_file_line_col() {
        let dir = tempdir("broken");
        write(&dir, "services/good.toml", "exec = [\"/bin/true\"]\n");
        write(&dir, "services/bad.toml", "exec = [\"/bin/true\"]\nrestart = always\n");
        let tree = load(&dir);
        assert_eq!(tree.services.len(), 1);
        assert_eq!(tree.services[0].name, "good");
        assert_eq!(
            tree.broken,
            vec![Broken { name: "bad".into(), reason: "has a configuration error".into() }]
        );
        assert_eq!(tree.diagnostics.len(), 1);
        let shown = tree.diagnostics[0].to_string();
        assert!(
            shown.starts_with(&format!("{}:2:11: ", dir.join("services/bad.toml").display())),
            "{shown}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn empty_system_toml_boots_with_defaults() {
        let dir = tempdir("empty-system");
        write(&dir, "system.toml", "");
        let tree = load(&dir);
        assert!(tree.diagnostics.is_empty());
        assert_eq!(tree.system, System::default());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn broken_system_toml_falls_back_to_defaults_with_a_diagnostic() {
        let dir = tempdir("bad-system");
        write(&dir, "system.toml", "hostname = \"gw\"\nshutdown_grace = 5\n");
        let tree = load(&dir);
        assert_eq!(tree.system, System::default());
        assert_eq!(tree.diagnostics.len(), 1);
        assert_eq!(tree.diagnostics[0].position, Some((2, 18)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_directory_is_an_empty_config() {
        let tree = load(Path::new("/nonexistent/brig-config"));
        assert!(tree.services.is_empty());
        assert!(tree.diagnostics.is_empty());
    }

    #[test]
    fn invalid_file_name_is_reported() {
        let dir = tempdir("bad-name");
        write(&dir, "services/a b.toml", "exec = [\"/bin/true\"]\n");
        let tree = load(&dir);
        assert!(tree.services.is_empty());
        assert!(tree.diagnostics[0].message.contains("not a valid service name"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
