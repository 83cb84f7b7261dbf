//! The control protocol between `brig <command>` and PID 1.
//!
//! Newline-delimited JSON over a Unix stream socket: the client sends one request line and
//! reads response lines until the server closes or, for `logs -f`, as long as it likes. Every
//! request carries the protocol version, so an old client talking to a new PID 1 (or the other
//! way round, after a firmware update) gets a clear error instead of a misread field.

use serde::{Deserialize, Serialize};

/// The version this build speaks.
pub const VERSION: u32 = 1;
/// Longest request line accepted; longer ones are rejected without being parsed.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Where PID 1 listens.
pub const SOCKET_PATH: &str = "/run/brig.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Services named, or all when empty.
    Status {
        names: Vec<String>,
    },
    Start {
        names: Vec<String>,
    },
    Stop {
        names: Vec<String>,
    },
    Restart {
        names: Vec<String>,
    },
    /// The last `lines` lines of one service (or of everything), then more if `follow`.
    Logs {
        name: Option<String>,
        lines: usize,
        follow: bool,
    },
    // Empty braces rather than unit variants: serde checks unknown fields only in these.
    Reload {},
    Reboot {},
    Poweroff {},
    Halt {},
    /// Test builds only: make PID 1 fail on purpose ("panic", "stall", "stall-shutdown").
    #[cfg(feature = "fault-injection")]
    Fault {
        kind: String,
    },
}

impl Request {
    /// Whether the request changes the system (and so needs root).
    pub fn changes_state(&self) -> bool {
        !matches!(self, Request::Status { .. } | Request::Logs { .. })
    }
}

/// The state of one service, as `brig status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// starting, running, done, exited, backoff, stopping, stopped, failed, blocked, waiting.
    pub state: String,
    /// Why it failed or is blocked, or the time left in backoff.
    pub detail: Option<String>,
    pub pid: Option<i32>,
    /// Milliseconds since the current process started.
    pub uptime_ms: Option<u64>,
    pub restarts: u32,
    /// How the last run ended: "status 3", "signal SIGKILL", "OOM", "exec failed (ENOENT)".
    pub last_exit: Option<String>,
    /// memory.current of the service's cgroup.
    pub memory_bytes: Option<u64>,
    /// usage_usec of cpu.stat in the service's cgroup.
    pub cpu_usec: Option<u64>,
}

/// The outcome of starting, stopping or restarting one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub name: String,
    pub ok: bool,
    pub message: String,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub time_ms: u64,
    pub source: String,
    pub pid: Option<i32>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Response {
    Status {
        services: Vec<ServiceStatus>,
        /// System-wide conditions an operator must know about (a degraded data partition, a
        /// boot on the last-known-good configuration).
        #[serde(default)]
        notes: Vec<String>,
        /// Names asked for that brig does not know (left out when there are none, so clients
        /// older than this field still read the common answer).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unknown: Vec<String>,
    },
    Outcomes {
        outcomes: Vec<Outcome>,
    },
    Log {
        line: LogLine,
    },
    /// Lines a follower missed because it read too slowly.
    Lost {
        lines: u64,
    },
    Reloaded {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
    },
    Accepted {
        message: String,
    },
    Error {
        message: String,
        details: Vec<String>,
    },
}

impl Response {
    pub fn error(message: impl Into<String>) -> Self {
        Response::Error { message: message.into(), details: Vec::new() }
    }
}

/// Decodes one request line (without its newline).
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    // Look at the version alone first, so a newer client's unknown commands get the right
    // error rather than a parse error.
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let v: Version = serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    if v.version != VERSION {
        return Err(format!(
            "protocol version {} not supported: this brig speaks version {VERSION}",
            v.version
        ));
    }
    let envelope: Envelope =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    Ok(envelope.request)
}

/// Encodes a message as one line, newline included.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    match serde_json::to_vec(message) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            bytes
        }
        // Serializing these plain structs cannot fail; answer something parseable anyway.
        Err(e) => format!("{{\"kind\":\"error\",\"message\":\"encode: {e}\",\"details\":[]}}\n")
            .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(request: Request) {
        let line = encode(&Envelope { version: VERSION, request: request.clone() });
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(decode_request(&line[..line.len() - 1]), Ok(request));
    }

    #[test]
    fn every_request_round_trips() {
        round_trip(Request::Status { names: vec![] });
        round_trip(Request::Start { names: vec!["web".into()] });
        round_trip(Request::Stop { names: vec!["a".into(), "b".into()] });
        round_trip(Request::Restart { names: vec!["web".into()] });
        round_trip(Request::Logs { name: Some("web".into()), lines: 20, follow: true });
        round_trip(Request::Reload {});
        round_trip(Request::Reboot {});
        round_trip(Request::Poweroff {});
        round_trip(Request::Halt {});
    }

    #[test]
    fn wrong_version_is_named_in_the_error() {
        let err = decode_request(br#"{"version":2,"request":{"command":"fly"}}"#).unwrap_err();
        assert!(err.contains("protocol version 2 not supported"), "{err}");
    }

    #[test]
    fn garbage_and_unknown_fields_are_rejected() {
        assert!(decode_request(b"\x00\xffgarbage").is_err());
        assert!(decode_request(br#"{"version":1,"request":{"command":"reload","x":1}}"#).is_err());
        assert!(decode_request(br#"{"version":1,"request":{"command":"format-disk"}}"#).is_err());
    }

    #[test]
    fn oversized_request_is_rejected_before_parsing() {
        let big = vec![b' '; MAX_REQUEST + 1];
        assert!(decode_request(&big).unwrap_err().contains("longer than"));
    }

    #[test]
    fn only_status_and_logs_are_read_only() {
        assert!(!Request::Status { names: vec![] }.changes_state());
        assert!(!Request::Logs { name: None, lines: 1, follow: false }.changes_state());
        assert!(Request::Reload {}.changes_state());
        assert!(Request::Stop { names: vec![] }.changes_state());
    }
}
