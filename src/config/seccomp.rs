//! The `[seccomp]` table of a service file: which system calls are allowed or denied, and what
//! a filtered call gets.
//!
//! Every name is resolved for the architecture brig runs on while the file loads, and the
//! filter is compiled once as a check, so `brig check` and a reload report an unknown system
//! call or errno with the file, the table's line and the key. Each start compiles the filter
//! again in PID 1 (src/seccomp.rs) rather than keeping BPF code in the configuration.

use std::collections::BTreeMap;
use std::ops::Range;

use super::isolation::Scalar;
use super::service::FileError;
use crate::seccomp::{self, Action, Mode};

/// A validated `[seccomp]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seccomp {
    pub mode: Mode,
    /// The listed system calls as written, with their numbers on this architecture.
    pub syscalls: Vec<(String, i64)>,
    pub action: Action,
}

impl Seccomp {
    /// The BPF program, built in PID 1 before the clone.
    pub fn compile(&self) -> Result<seccomp::Program, String> {
        let numbers: Vec<i64> = self.syscalls.iter().map(|(_, n)| *n).collect();
        seccomp::compile(self.mode, &numbers, self.action)
    }
}

/// Checks the `[seccomp]` table, whose span is `table`. It is decoded as a map of [`Scalar`]s,
/// the type `[rlimits]` uses: a typed table would add about 20 KB of decoder to the binary. So
/// errors point at the table rather than at the entry; the message names the key and value.
pub(super) fn decode(
    table: BTreeMap<String, Scalar>,
    span: Range<usize>,
) -> Result<Seccomp, FileError> {
    // A constant: on armv7 and mipsel the decoder below is not even in the binary.
    let result = if seccomp::SUPPORTED { decode_table(table) } else { Err(unsupported()) };
    result.map_err(|message| FileError { span: Some(span), message })
}

fn unsupported() -> String {
    format!("seccomp filters are not supported on this architecture ({})", std::env::consts::ARCH)
}

fn decode_table(table: BTreeMap<String, Scalar>) -> Result<Seccomp, String> {
    let (mut allow, mut deny, mut action, mut errno) = (None, None, None, None);
    for (key, value) in table {
        let slot = match key.as_str() {
            "allow" => &mut allow,
            "deny" => &mut deny,
            "action" => &mut action,
            "errno" => &mut errno,
            _ => {
                return Err(format!("seccomp: unknown key {key:?} (allow, deny, action or errno)"))
            }
        };
        *slot = Some(value);
    }
    let (mode, key, list) = match (allow, deny) {
        (Some(list), None) => (Mode::Allow, "seccomp.allow", list),
        (None, Some(list)) => (Mode::Deny, "seccomp.deny", list),
        (Some(_), Some(_)) => {
            return Err("seccomp: allow and deny exclude each other: list the system calls that \
                        may run, or those that may not"
                .into())
        }
        (None, None) => {
            return Err("seccomp: needs allow = [...] (only these system calls run) or deny = \
                        [...] (these do not)"
                .into())
        }
    };
    let syscalls = syscall_list(key, list)?;
    let action = match (string(action, "seccomp.action")?.as_deref(), errno) {
        (Some("kill"), Some(_)) => {
            return Err(
                "seccomp.errno: only with action = \"errno\" (a killed process gets none)".into()
            )
        }
        (Some("kill"), None) => Action::Kill,
        (None | Some("errno"), errno) => match string(errno, "seccomp.errno")? {
            None => Action::Errno(libc::EPERM),
            Some(name) => Action::Errno(seccomp::errno_number(&name).ok_or_else(|| {
                format!(
                    "seccomp.errno: unknown errno name {name:?} (for example \"EPERM\", \
                     \"EACCES\", \"ENOSYS\")"
                )
            })?),
        },
        (Some(other), _) => {
            return Err(format!("seccomp.action: {other:?} is not \"errno\" or \"kill\""))
        }
    };
    let filter = Seccomp { mode, syscalls, action };
    filter.compile().map_err(|e| format!("seccomp: {e}"))?;
    Ok(filter)
}

/// `allow` or `deny`: system call names, each known on this architecture, none twice.
fn syscall_list(key: &str, list: Scalar) -> Result<Vec<(String, i64)>, String> {
    let Scalar::List(items) = list else {
        return Err(format!("{key}: expected a list of system call names"));
    };
    if items.is_empty() {
        return Err(format!("{key}: the list is empty"));
    }
    let mut syscalls: Vec<(String, i64)> = Vec::with_capacity(items.len());
    for item in items {
        let Scalar::Str(name) = item else {
            return Err(format!("{key}: expected a list of system call names"));
        };
        let Some(number) = seccomp::syscall_number(&name) else {
            return Err(format!(
                "{key}: unknown system call {name:?} (on {}; names as in syscalls(2), such as \
                 \"mkdirat\")",
                std::env::consts::ARCH
            ));
        };
        if syscalls.iter().any(|(n, _)| *n == name) {
            return Err(format!("{key}: {name:?} is listed twice"));
        }
        syscalls.push((name, number));
    }
    Ok(syscalls)
}

/// An optional string value.
fn string(value: Option<Scalar>, key: &str) -> Result<Option<String>, String> {
    match value {
        None => Ok(None),
        Some(Scalar::Str(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{key}: expected a string")),
    }
}

#[cfg(test)]
// The filters are built and run on the build machine; armv7 and mipsel have none.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::service::{parse, Service};

    fn parse_ok(text: &str) -> Service {
        parse("svc", PathBuf::from("svc.toml"), text).unwrap().0
    }

    /// The message and the 1-based line of an error.
    fn parse_err(text: &str) -> (String, usize) {
        let e = parse("svc", PathBuf::from("svc.toml"), text).unwrap_err();
        let line = text[..e.span.unwrap().start].matches('\n').count() + 1;
        (e.message, line)
    }

    #[test]
    fn deny_list_resolves_names_and_defaults_to_eperm_with_no_new_privs() {
        let s = parse_ok("exec = [\"/x\"]\n[seccomp]\ndeny = [\"mkdirat\", \"umount2\"]\n");
        let f = s.seccomp.unwrap();
        assert_eq!(f.mode, Mode::Deny);
        assert_eq!(
            f.syscalls,
            vec![("mkdirat".into(), libc::SYS_mkdirat), ("umount2".into(), libc::SYS_umount2)]
        );
        assert_eq!(f.action, Action::Errno(libc::EPERM));
        assert!(s.no_new_privs, "the kernel needs no_new_privs for the filter");
        assert!(!parse_ok("exec = [\"/x\"]\n").no_new_privs);
    }

    #[test]
    fn allow_list_with_kill_or_a_named_errno() {
        let s = parse_ok(
            "exec = [\"/x\"]\n[seccomp]\nallow = [\"read\", \"exit_group\"]\naction = \"kill\"\n",
        );
        let f = s.seccomp.unwrap();
        assert_eq!((f.mode, f.action), (Mode::Allow, Action::Kill));
        let s = parse_ok(
            "exec = [\"/x\"]\n\
             seccomp = { deny = [\"reboot\"], action = \"errno\", errno = \"eacces\" }\n",
        );
        assert_eq!(s.seccomp.unwrap().action, Action::Errno(libc::EACCES));
    }

    #[test]
    fn containers_take_a_filter_too() {
        let s = parse_ok(
            "exec = [\"/x\"]\n[seccomp]\ndeny = [\"mount\"]\n[container]\nimage = \"web\"\n",
        );
        assert!(s.seccomp.is_some() && s.container.is_some());
    }

    #[test]
    fn unknown_system_call_is_named_with_its_key_at_the_table() {
        let text = "exec = [\"/x\"]\n\n[seccomp]\ndeny = [\"mount\", \"mkdri\"]\n";
        let (message, line) = parse_err(text);
        assert!(message.starts_with("seccomp.deny: unknown system call \"mkdri\""), "{message}");
        assert_eq!(line, 3, "the [seccomp] line");
        let (message, _) = parse_err("exec = [\"/x\"]\n[seccomp]\nallow = [\"sethostnam\"]\n");
        assert!(message.starts_with("seccomp.allow: unknown system call \"sethostnam\""));
    }

    #[test]
    fn table_errors_name_the_key() {
        let cases = [
            ("dney = [\"mount\"]", "seccomp: unknown key \"dney\""),
            ("allow = [\"read\"]\ndeny = [\"mount\"]", "allow and deny exclude each other"),
            ("action = \"kill\"", "seccomp: needs allow = [...]"),
            ("deny = []", "seccomp.deny: the list is empty"),
            ("deny = \"mount\"", "seccomp.deny: expected a list"),
            ("deny = [\"mount\", \"mount\"]", "seccomp.deny: \"mount\" is listed twice"),
            ("deny = [\"mount\"]\nerrno = \"EFOO\"", "seccomp.errno: unknown errno name \"EFOO\""),
            ("deny = [\"mount\"]\naction = \"trap\"", "seccomp.action: \"trap\" is not"),
            (
                "deny = [\"mount\"]\naction = \"kill\"\nerrno = \"EPERM\"",
                "seccomp.errno: only with",
            ),
        ];
        for (table, want) in cases {
            let (message, line) = parse_err(&format!("exec = [\"/x\"]\n[seccomp]\n{table}\n"));
            assert!(message.contains(want), "{table}: {message}");
            assert_eq!(line, 2, "{table}");
        }
    }

    #[test]
    fn other_architectures_name_theirs() {
        // What armv7 and mipsel builds say for any [seccomp] table ("arm", "mips").
        let message = unsupported();
        assert_eq!(
            message,
            format!(
                "seccomp filters are not supported on this architecture ({})",
                std::env::consts::ARCH
            )
        );
    }
}
