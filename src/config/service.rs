//! One service file, `services/NAME.toml`, decoded strictly into a [`Service`].
//!
//! Field-level checks (absolute `exec`, durations, signal names, env keys) happen during
//! decoding, so toml attaches the span of the offending value to the error. Checks that need
//! the other files (dependencies, cycles) live in `graph.rs` and use the spans kept here.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::Deserialize as DeriveDeserialize;
use toml::Spanned;

use super::duration::Dur;
use super::isolation::{decode_rlimits, Caps, ContainerFile, LimitsFile, Rlimit, Scalar};
use super::isolation::{Container, Limits};
use super::seccomp::Seccomp;

/// How a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, DeriveDeserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A long-running daemon in the foreground: ready once its exec succeeded.
    #[default]
    Simple,
    /// A task that runs to completion: ready once it exited 0.
    Oneshot,
}

/// When a service that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, DeriveDeserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

/// A user or group, by name (looked up when the service starts) or by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ident {
    Name(String),
    Id(u32),
}

/// Restart backoff and crash-loop detection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart; doubled after each failure, up to `max`.
    pub first: Duration,
    pub max: Duration,
    /// This many failures within `window` mark the service failed.
    pub limit: u32,
    pub window: Duration,
    /// A run at least this long resets the delay and the failure count.
    pub stable: Duration,
}

/// A validated service definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub file: PathBuf,
    pub description: Option<String>,
    pub exec: Vec<String>,
    pub kind: Kind,
    pub env: BTreeMap<String, String>,
    pub workdir: PathBuf,
    pub user: Option<Ident>,
    pub group: Option<Ident>,
    pub restart: Restart,
    pub after: Vec<String>,
    pub requires: Vec<String>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub backoff: Backoff,
    /// Standard streams on /dev/console instead of the log (shells, gettys).
    pub console: bool,
    /// cgroup v2 files written into the service's group before it starts.
    pub limits: Limits,
    /// Capabilities kept (bounding, permitted, effective, inheritable, ambient); None: leave
    /// them as they are (root keeps all), except in a container, which keeps none.
    pub capabilities: Option<Caps>,
    /// Set by the file, or implied by `[seccomp]`.
    pub no_new_privs: bool,
    pub rlimits: Vec<Rlimit>,
    /// The system call filter installed right before exec, when set.
    pub seccomp: Option<Seccomp>,
    /// Run in its own namespaces over an image, when set.
    pub container: Option<Container>,
    /// The boot is good only once this service is up; its failure for good reboots.
    pub critical: bool,
}

impl Service {
    /// Names of every service this one waits for, `requires` first.
    pub fn dependencies(&self) -> impl Iterator<Item = &String> {
        self.requires.iter().chain(self.after.iter().filter(|a| !self.requires.contains(a)))
    }
}

/// Dependency names with their byte ranges in the file, for diagnostics in `graph.rs`.
#[derive(Debug, Clone, Default)]
pub struct DependencySpans {
    pub entries: Vec<(String, Range<usize>)>,
}

/// The absolute program path and its arguments.
struct Exec(Vec<String>);

/// A signal given by name: `"SIGTERM"` or `"TERM"`.
struct SignalName(Signal);

/// An environment variable name: no `=`, no NUL, not empty.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct EnvKey(String);

#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    description: Option<String>,
    exec: Exec,
    #[serde(rename = "type", default)]
    kind: Kind,
    #[serde(default)]
    env: BTreeMap<EnvKey, NoNul>,
    workdir: Option<Spanned<String>>,
    user: Option<Ident>,
    group: Option<Ident>,
    restart: Option<Restart>,
    #[serde(default)]
    after: Vec<Spanned<String>>,
    #[serde(default)]
    requires: Vec<Spanned<String>>,
    stop_signal: Option<SignalName>,
    stop_timeout: Option<Dur>,
    restart_delay: Option<Dur>,
    restart_delay_max: Option<Dur>,
    restart_limit: Option<Spanned<u32>>,
    restart_window: Option<Spanned<Dur>>,
    stable_after: Option<Dur>,
    #[serde(default)]
    console: bool,
    limits: Option<LimitsFile>,
    capabilities: Option<Caps>,
    #[serde(default)]
    no_new_privs: bool,
    rlimits: Option<Spanned<BTreeMap<String, Scalar>>>,
    seccomp: Option<Spanned<BTreeMap<String, Scalar>>>,
    container: Option<Spanned<ContainerFile>>,
    #[serde(default)]
    critical: bool,
}

/// A string that can become a C string.
struct NoNul(String);

/// A problem found in one file: a message and, where known, the byte range it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl FileError {
    fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        FileError { span: Some(span), message: message.into() }
    }
}

impl From<toml::de::Error> for FileError {
    fn from(e: toml::de::Error) -> Self {
        FileError { span: e.span(), message: e.message().trim_end().to_string() }
    }
}

/// Whether `name` may name a service (it becomes a file name, a cgroup and a log tag).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b))
}

/// In a user namespace the service's numeric user and group (root without them) are ids of
/// the container, so they must be mapped. Names are looked up and checked when it starts.
fn mapped_credentials(
    u: &super::isolation::UserNamespace,
    user: Option<&Ident>,
    group: Option<&Ident>,
) -> Result<(), String> {
    let uid = match user {
        Some(Ident::Id(id)) => Some(*id),
        Some(Ident::Name(_)) => None,
        None => Some(0),
    };
    if let Some(uid) = uid.filter(|id| !u.uid.contains(*id)) {
        return Err(format!(
            "container.uid_map: {} does not map the service's uid {uid} (user = {})",
            u.uid,
            user.map_or("root, the default".into(), |_| uid.to_string())
        ));
    }
    let gid = match (group, user) {
        (Some(Ident::Id(id)), _) => Some(*id),
        (None, None) => Some(0),
        _ => None,
    };
    if let Some(gid) = gid.filter(|id| !u.gid.contains(*id)) {
        return Err(format!("container.gid_map: {} does not map the service's gid {gid}", u.gid));
    }
    Ok(())
}

/// Decodes and checks one service file. `name` comes from the file name.
pub fn parse(
    name: &str,
    file: PathBuf,
    text: &str,
) -> Result<(Service, DependencySpans), FileError> {
    let raw: ServiceFile = toml::from_str(text)?;
    build(name, file, raw)
}

/// A service brig makes up itself (the rescue shell, the boot-is-good command), with the same
/// defaults as a file would get.
pub fn synthetic(
    name: &str,
    exec: &[String],
    kind: Kind,
    console: bool,
) -> Result<Service, FileError> {
    // Written out as TOML and decoded like a file: decoding a `toml::Table` instead would
    // instantiate the whole derived decoder a second time, for toml's `Value` (about 100 KiB
    // of x86_64 code).
    let mut text = String::from("exec = [");
    for (i, arg) in exec.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        push_toml_string(&mut text, arg);
    }
    let kind = match kind {
        Kind::Simple => "simple",
        Kind::Oneshot => "oneshot",
    };
    text.push_str(&format!("]\ntype = \"{kind}\"\nconsole = {console}\n"));
    let raw: ServiceFile = toml::from_str(&text)?;
    build(name, PathBuf::from(format!("(built-in {name})")), raw).map(|(svc, _)| svc)
}

/// Appends `s` as a TOML basic string: quotes and backslashes escaped, control characters as
/// `\uXXXX`, everything else as it is.
fn push_toml_string(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn build(
    name: &str,
    file: PathBuf,
    raw: ServiceFile,
) -> Result<(Service, DependencySpans), FileError> {
    let mut spans = DependencySpans::default();
    let requires = names_once(&raw.requires, "requires", &mut spans)?;
    let after = names_once(&raw.after, "after", &mut spans)?;
    for (dep, span) in &spans.entries {
        if dep == name {
            return Err(FileError::at(span.clone(), format!("service {name:?} depends on itself")));
        }
    }
    let workdir = match raw.workdir {
        Some(w) if !w.get_ref().starts_with('/') => {
            return Err(FileError::at(w.span(), "workdir must be an absolute path"))
        }
        Some(w) => PathBuf::from(w.into_inner()),
        None => PathBuf::from("/"),
    };
    let limit = match raw.restart_limit {
        Some(l) if *l.get_ref() == 0 => {
            return Err(FileError::at(l.span(), "restart_limit must be at least 1"))
        }
        Some(l) => l.into_inner(),
        None => 5,
    };
    let first = raw.restart_delay.map_or(Duration::from_millis(100), |d| d.0);
    let backoff = Backoff {
        first,
        max: raw.restart_delay_max.map_or(Duration::from_secs(30), |d| d.0).max(first),
        limit,
        window: match raw.restart_window {
            // A zero window forgets every failure at once: the service would never give up.
            Some(w) if w.get_ref().0 < Duration::from_secs(1) => {
                return Err(FileError::at(w.span(), "restart_window must be at least 1s"))
            }
            Some(w) => w.into_inner().0,
            None => Duration::from_secs(60),
        },
        stable: raw.stable_after.map_or(Duration::from_secs(10), |d| d.0),
    };
    let restart = raw.restart.unwrap_or(match raw.kind {
        Kind::Simple => Restart::Always,
        Kind::Oneshot => Restart::Never,
    });
    let rlimits = match raw.rlimits {
        Some(table) => {
            let span = table.span();
            decode_rlimits(table.into_inner()).map_err(|m| FileError::at(span, m))?
        }
        None => Vec::new(),
    };
    let seccomp = match raw.seccomp {
        Some(table) => {
            let span = table.span();
            Some(super::seccomp::decode(table.into_inner(), span)?)
        }
        None => None,
    };
    let container = match raw.container {
        Some(c) => {
            let span = c.span();
            let c = c.into_inner().into_container();
            if let Some(u) = &c.user_namespace {
                mapped_credentials(u, raw.user.as_ref(), raw.group.as_ref())
                    .map_err(|m| FileError::at(span, m))?;
            }
            Some(c)
        }
        None => None,
    };
    let capabilities = match (raw.capabilities, &container) {
        (None, Some(_)) => Some(Caps::default()),
        (caps, _) => caps,
    };
    let service = Service {
        name: name.to_string(),
        file,
        description: raw.description,
        exec: raw.exec.0,
        kind: raw.kind,
        env: raw.env.into_iter().map(|(k, v)| (k.0, v.0)).collect(),
        workdir,
        user: raw.user,
        group: raw.group,
        restart,
        after,
        requires,
        stop_signal: raw.stop_signal.map_or(Signal::SIGTERM, |s| s.0),
        stop_timeout: raw.stop_timeout.map_or(Duration::from_secs(10), |d| d.0),
        backoff,
        console: raw.console,
        limits: raw.limits.map(LimitsFile::into_limits).unwrap_or_default(),
        capabilities,
        // The kernel installs a seccomp filter only under no_new_privs (or for CAP_SYS_ADMIN).
        no_new_privs: raw.no_new_privs || seccomp.is_some(),
        rlimits,
        seccomp,
        container,
        critical: raw.critical,
    };
    Ok((service, spans))
}

/// Checks a dependency list for bad names and repeats, recording each entry's span.
fn names_once(
    list: &[Spanned<String>],
    key: &str,
    spans: &mut DependencySpans,
) -> Result<Vec<String>, FileError> {
    let mut names: Vec<String> = Vec::with_capacity(list.len());
    for entry in list {
        let dep = entry.get_ref();
        if !valid_name(dep) {
            return Err(FileError::at(
                entry.span(),
                format!("{key}: {dep:?} is not a service name"),
            ));
        }
        if names.contains(dep) {
            return Err(FileError::at(entry.span(), format!("{key}: {dep:?} is listed twice")));
        }
        names.push(dep.clone());
        spans.entries.push((dep.clone(), entry.span()));
    }
    Ok(names)
}

impl<'de> Deserialize<'de> for Exec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let argv = Vec::<NoNul>::deserialize(d)?;
        let argv: Vec<String> = argv.into_iter().map(|a| a.0).collect();
        match argv.first() {
            None => Err(de::Error::custom("exec must name a program: [\"/path/to/program\", ...]")),
            Some(p) if !p.starts_with('/') => Err(de::Error::custom(format!(
                "exec program {p:?} must be an absolute path (brig does not search PATH)"
            ))),
            Some(_) => Ok(Exec(argv)),
        }
    }
}

impl<'de> Deserialize<'de> for NoNul {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.contains('\0') {
            return Err(de::Error::custom("strings passed to a program cannot contain NUL"));
        }
        Ok(NoNul(s))
    }
}

impl<'de> Deserialize<'de> for EnvKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.contains('=') || s.contains('\0') {
            return Err(de::Error::custom(format!(
                "env: {s:?} is not a variable name (no '=', not empty)"
            )));
        }
        Ok(EnvKey(s))
    }
}

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let upper = s.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
        match Signal::from_str(&full) {
            Ok(Signal::SIGKILL) | Ok(Signal::SIGSTOP) => Err(de::Error::custom(format!(
                "stop_signal {s:?} cannot be caught: brig sends SIGKILL itself after stop_timeout"
            ))),
            Ok(sig) => Ok(SignalName(sig)),
            Err(_) => Err(de::Error::custom(format!("stop_signal: unknown signal {s:?}"))),
        }
    }
}

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdentVisitor;
        impl Visitor<'_> for IdentVisitor {
            type Value = Ident;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a user or group name, or a numeric id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ident, E> {
                if v.is_empty() || v.contains(['\0', ':', '\n']) {
                    return Err(E::custom(format!("{v:?} is not a user or group name")));
                }
                Ok(Ident::Name(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ident, E> {
                // u32::MAX is (uid_t)-1, which setuid and setgid take as "no change".
                u32::try_from(v)
                    .ok()
                    .filter(|&id| id != u32::MAX)
                    .map(Ident::Id)
                    .ok_or_else(|| E::custom(format!("{v} is not a valid user or group id")))
            }
        }
        d.deserialize_any(IdentVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Network, Upper, Volume};

    #[test]
    fn synthetic_services_keep_their_arguments_exactly() {
        let argv: Vec<String> =
            ["/bin/sh", "-c", "echo \"a\\b\" 'c'\t\u{1}\u{7f}\u{85} \u{e9}=[x]", ""]
                .map(String::from)
                .to_vec();
        let svc = synthetic("rescue", &argv, Kind::Simple, true).unwrap();
        assert_eq!(svc.exec, argv);
        assert_eq!(svc.kind, Kind::Simple);
        assert!(svc.console);
        assert_eq!(svc.restart, Restart::Always);
        assert_eq!(svc.file, PathBuf::from("(built-in rescue)"));
        let svc = synthetic("good", &argv[..1], Kind::Oneshot, false).unwrap();
        assert_eq!((svc.exec.len(), svc.kind, svc.console), (1, Kind::Oneshot, false));
        assert_eq!(svc.restart, Restart::Never);
        // The same checks as for a file.
        assert!(synthetic("x", &["sh".to_string()], Kind::Simple, false).is_err());
        assert!(synthetic("x", &[], Kind::Simple, false).is_err());
        assert!(synthetic("x", &["/bin/a\0b".to_string()], Kind::Simple, false).is_err());
    }

    fn parse_ok(text: &str) -> Service {
        parse("svc", PathBuf::from("svc.toml"), text).unwrap().0
    }

    fn parse_err(text: &str) -> FileError {
        parse("svc", PathBuf::from("svc.toml"), text).unwrap_err()
    }

    #[test]
    fn minimal_service_gets_documented_defaults() {
        let s = parse_ok("exec = [\"/bin/true\"]\n");
        assert_eq!(s.kind, Kind::Simple);
        assert_eq!(s.restart, Restart::Always);
        assert_eq!(s.stop_signal, Signal::SIGTERM);
        assert_eq!(s.stop_timeout, Duration::from_secs(10));
        assert_eq!(s.backoff.first, Duration::from_millis(100));
        assert_eq!(s.backoff.max, Duration::from_secs(30));
        assert_eq!(s.backoff.limit, 5);
        assert_eq!(s.workdir, PathBuf::from("/"));
        assert!(!s.console);
    }

    #[test]
    fn oneshot_defaults_to_no_restart() {
        let s = parse_ok("exec = [\"/bin/true\"]\ntype = \"oneshot\"\n");
        assert_eq!(s.restart, Restart::Never);
    }

    #[test]
    fn relative_exec_is_rejected_at_its_span() {
        let text = "exec = [\"bin/httpd\"]\n";
        let e = parse_err(text);
        assert!(e.message.contains("absolute path"), "{e:?}");
        assert_eq!(&text[e.span.unwrap()], "[\"bin/httpd\"]");
    }

    #[test]
    fn bad_duration_points_at_the_value() {
        let text = "exec = [\"/bin/true\"]\nstop_timeout = \"10 sec\"\n";
        let e = parse_err(text);
        assert!(e.message.contains("bad duration"), "{e:?}");
        assert_eq!(&text[e.span.unwrap()], "\"10 sec\"");
    }

    #[test]
    fn zero_restart_window_is_rejected_at_its_value() {
        let text = "exec = [\"/x\"]\nrestart_delay = \"0s\"\nrestart_window = \"0s\"\n";
        let e = parse_err(text);
        assert!(e.message.contains("at least 1s"), "{e:?}");
        assert_eq!(&text[e.span.unwrap()], "\"0s\"");
    }

    #[test]
    fn misspelled_key_is_an_error() {
        let e = parse_err("exec = [\"/bin/true\"]\nrestrat = \"always\"\n");
        assert!(e.message.contains("unknown field `restrat`"), "{e:?}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let e = parse_err("exec = \"/bin/true\"\n");
        assert!(e.message.contains("invalid type"), "{e:?}");
    }

    #[test]
    fn self_and_repeated_dependencies_are_errors() {
        assert!(parse_err("exec = [\"/bin/true\"]\nafter = [\"svc\"]\n")
            .message
            .contains("depends on itself"));
        assert!(parse_err("exec = [\"/bin/true\"]\nrequires = [\"a\", \"a\"]\n")
            .message
            .contains("listed twice"));
    }

    #[test]
    fn signal_names_with_and_without_prefix() {
        assert_eq!(
            parse_ok("exec = [\"/x\"]\nstop_signal = \"HUP\"\n").stop_signal,
            Signal::SIGHUP
        );
        assert_eq!(
            parse_ok("exec = [\"/x\"]\nstop_signal = \"SIGINT\"\n").stop_signal,
            Signal::SIGINT
        );
        assert!(parse_err("exec = [\"/x\"]\nstop_signal = \"SIGKILL\"\n")
            .message
            .contains("cannot be caught"));
        assert!(parse_err("exec = [\"/x\"]\nstop_signal = \"SIGFOO\"\n")
            .message
            .contains("unknown signal"));
    }

    #[test]
    fn user_by_name_or_number() {
        assert_eq!(
            parse_ok("exec = [\"/x\"]\nuser = \"www\"\n").user,
            Some(Ident::Name("www".into()))
        );
        assert_eq!(parse_ok("exec = [\"/x\"]\nuser = 33\n").user, Some(Ident::Id(33)));
        let e = parse_err("exec = [\"/x\"]\nuser = 4294967295\n");
        assert!(e.message.contains("not a valid user or group id"), "{e:?}");
        assert!(parse_err("exec = [\"/x\"]\nuser = -1\n").message.contains("not a valid"));
    }

    #[test]
    fn env_key_with_equals_is_rejected() {
        let e = parse_err("exec = [\"/x\"]\nenv = { \"A=B\" = \"c\" }\n");
        assert!(e.message.contains("not a variable name"), "{e:?}");
    }

    #[test]
    fn limits_are_translated_to_cgroup_files_in_write_order() {
        let s = parse_ok(
            "exec = [\"/x\"]\n[limits]\nmemory_max = \"64M\"\nmemory_high = \"48M\"\n\
             cpu_max = \"50%\"\npids_max = 32\nio_weight = 200\ncpu_weight = 50\n\
             memory_swap_max = 0\ncgroup = { \"memory.oom.group\" = \"1\", \
             \"cpu.uclamp.max\" = \"max 1\" }\n",
        );
        let files: Vec<(&str, &str)> =
            s.limits.files.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
        assert_eq!(
            files,
            vec![
                ("memory.high", "50331648"),
                ("memory.max", "67108864"),
                ("memory.swap.max", "0"),
                ("cpu.max", "50000 100000"),
                ("cpu.weight", "50"),
                ("pids.max", "32"),
                ("io.weight", "default 200"),
                ("cpu.uclamp.max", "max 1"),
                ("memory.oom.group", "1"),
            ]
        );
    }

    #[test]
    fn invalid_limit_names_the_field_at_its_value() {
        let text = "exec = [\"/x\"]\n[limits]\nmemory_max = \"lots\"\n";
        let e = parse_err(text);
        assert!(e.message.contains("is not a size"), "{e:?}");
        assert_eq!(&text[e.span.unwrap()], "\"lots\"");
        let e = parse_err("exec = [\"/x\"]\n[limits]\ncpu_weight = 0\n");
        assert!(e.message.contains("out of range"), "{e:?}");
        let e = parse_err("exec = [\"/x\"]\n[limits]\nmemory_maximum = 1\n");
        assert!(e.message.contains("unknown field `memory_maximum`"), "{e:?}");
        let e = parse_err("exec = [\"/x\"]\n[limits]\ncgroup = { \"cgroup.procs\" = \"1\" }\n");
        assert!(e.message.contains("brig's own"), "{e:?}");
        // Regression: the raw file was written after memory_max and silently won.
        let e = parse_err(
            "exec = [\"/x\"]\n[limits]\nmemory_max = \"64M\"\ncgroup = { \"memory.max\" = \"1G\" }\n",
        );
        assert!(e.message.contains("\"memory.max\" has its own key: write memory_max"), "{e:?}");
    }

    #[test]
    fn unknown_capability_is_an_error_at_its_list() {
        let text = "exec = [\"/x\"]\ncapabilities = [\"CAP_NET_RAW\", \"CAP_FLY\"]\n";
        let e = parse_err(text);
        assert!(e.message.contains("unknown capability \"CAP_FLY\""), "{e:?}");
        assert!(e.span.is_some());
        let s = parse_ok("exec = [\"/x\"]\ncapabilities = [\"net_bind_service\", \"CAP_KILL\"]\n");
        assert_eq!(s.capabilities, Some(Caps((1 << 10) | (1 << 5))));
    }

    #[test]
    fn plain_service_keeps_capabilities_and_container_drops_them_by_default() {
        assert_eq!(parse_ok("exec = [\"/x\"]\n").capabilities, None);
        let s = parse_ok("exec = [\"/x\"]\n[container]\nimage = \"web\"\n");
        assert_eq!(s.capabilities, Some(Caps(0)));
        let c = s.container.unwrap();
        assert_eq!(c.upper, Upper::Ephemeral);
        assert_eq!(c.network, Network::Host);
        assert!(!c.read_only);
        assert!(c.volumes.is_empty());
    }

    #[test]
    fn container_table_is_strict() {
        let e = parse_err("exec = [\"/x\"]\n[container]\nimage = \"web\"\nuper = \"persistent\"\n");
        assert!(e.message.contains("unknown field `uper`"), "{e:?}");
        let e = parse_err("exec = [\"/x\"]\n[container]\nimage = \"../etc\"\n");
        assert!(e.message.contains("container.image"), "{e:?}");
        // No image: the host's root is the base.
        let s = parse_ok("exec = [\"/x\"]\n[container]\nnetwork = \"none\"\n");
        assert_eq!(s.container.unwrap().image, "/");
        let e = parse_err(
            "exec = [\"/x\"]\n[container]\nimage = \"w\"\nvolumes = [{ target = \"/d\" }]\n",
        );
        assert!(e.message.contains("exactly one of"), "{e:?}");
        // Regressions: both were accepted, and did something else than they said.
        let e = parse_err(
            "exec = [\"/x\"]\n[container]\nvolumes = [{ target = \"/t\", tmpfs = \"1M\", \
             read_only = true }]\n",
        );
        assert!(e.message.contains("read_only is for bind volumes"), "{e:?}");
        let e = parse_err(
            "exec = [\"/x\"]\n[container]\nvolumes = [{ target = \"/t\", tmpfs = \"0K\" }]\n",
        );
        assert!(e.message.contains("not a size above 0"), "{e:?}");
        for (volumes, why) in [
            ("{ target = \"/proc\", bind = \"/proc\" }", "would cover"),
            ("{ target = \"/sys/fs\", tmpfs = \"1M\" }", "would cover"),
            ("{ target = \"/dev\", tmpfs = \"1M\" }", "would cover"),
            (
                "{ target = \"/d\", tmpfs = \"1M\" }, { target = \"/d\", bind = \"/x\" }",
                "two volumes",
            ),
        ] {
            let e = parse_err(&format!("exec = [\"/x\"]\n[container]\nvolumes = [{volumes}]\n"));
            assert!(e.message.contains(why), "{volumes}: {e:?}");
        }
        parse_ok("exec = [\"/x\"]\n[container]\nvolumes = [{ target = \"/dev/net\", bind = \"/dev/net\" }]\n");
        for target in ["/", "/.", "//", "/a//b", "/a/./b", "/a/../b", "/a/"] {
            let e = parse_err(&format!(
                "exec = [\"/x\"]\n[container]\nvolumes = [{{ target = \"{target}\", tmpfs = \"1M\" }}]\n"
            ));
            assert!(e.message.contains("must be an absolute path below /"), "{target}: {e:?}");
        }
    }

    #[test]
    fn user_namespace_must_map_the_service_ids() {
        let s =
            parse_ok("exec = [\"/x\"]\n[container]\nimage = \"w\"\nuid_map = \"0:100000:1000\"\n");
        let u = s.container.unwrap().user_namespace.unwrap();
        assert_eq!((u.uid.host, u.gid.host), (100000, 100000));
        let e = parse_err(
            "exec = [\"/x\"]\nuser = 5000\n[container]\nimage = \"w\"\nuid_map = \"0:100000:1000\"\n",
        );
        assert!(e.message.contains("does not map the service's uid 5000"), "{e:?}");
        assert!(e.span.is_some());
        let e = parse_err(
            "exec = [\"/x\"]\n[container]\nimage = \"w\"\nuid_map = \"1000:100000:10\"\n",
        );
        assert!(e.message.contains("uid 0 (user = root, the default)"), "{e:?}");
        let e = parse_err(
            "exec = [\"/x\"]\nuser = 1\ngroup = 77\n[container]\nimage = \"w\"\n\
             uid_map = \"0:100000:10\"\n",
        );
        assert!(
            e.message.contains("container.gid_map: 0:100000:10 does not map the service's gid 77"),
            "{e:?}"
        );
        // A name is resolved at start, in the image.
        parse_ok("exec = [\"/x\"]\nuser = \"www\"\n[container]\nimage = \"w\"\nuid_map = \"0:100000:10\"\n");
    }

    #[test]
    fn volumes_bind_and_tmpfs() {
        let s = parse_ok(
            "exec = [\"/x\"]\n[container]\nimage = \"/images/web\"\nupper = \"persistent\"\n\
             network = \"none\"\nhostname = \"web\"\nread_only = true\nvolumes = [\n\
             { target = \"/data\", bind = \"/var/web\", read_only = true },\n\
             { target = \"/tmp\", tmpfs = \"8M\" },\n]\n",
        );
        let c = s.container.unwrap();
        assert_eq!(c.image, "/images/web");
        assert_eq!(c.hostname.as_deref(), Some("web"));
        assert_eq!(
            c.volumes,
            vec![
                Volume::Bind { source: "/var/web".into(), target: "/data".into(), read_only: true },
                Volume::Tmpfs { target: "/tmp".into(), size: "8388608".into() },
            ]
        );
    }

    #[test]
    fn rlimits_take_one_value_or_a_pair() {
        let s = parse_ok(
            "exec = [\"/x\"]\nno_new_privs = true\n[rlimits]\nnofile = [64, 128]\ncore = 0\n",
        );
        assert!(s.no_new_privs);
        assert_eq!(s.rlimits.len(), 2);
        assert!(s.rlimits.contains(&Rlimit {
            resource: libc::RLIMIT_NOFILE as i32,
            soft: 64,
            hard: 128
        }));
        let e = parse_err("exec = [\"/x\"]\n[rlimits]\nfiles = 1\n");
        assert!(e.message.contains("unknown limit \"files\""), "{e:?}");
        let e = parse_err("exec = [\"/x\"]\n[rlimits]\nnofile = [10, 5]\n");
        assert!(e.message.contains("soft <= hard"), "{e:?}");
    }

    #[test]
    fn service_names_are_restricted() {
        assert!(valid_name("httpd"));
        assert!(valid_name("getty@ttyS0"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a b"));
    }
}
