//! Logging for PID 1 and for the output of services.
//!
//! Messages go to syslog (`/dev/log`, facility daemon) when a syslog daemon listens there, and
//! to the kernel log (`/dev/kmsg`) before that or whenever it is gone, so nothing is lost while
//! syslogd restarts. Every write is non-blocking: when the syslog socket is full a line is
//! dropped and counted, never waited for. Service output written to `/dev/kmsg` is rate limited,
//! because the kernel prints it synchronously on a console that may be a 115200-baud serial line.
//! Outside PID 1 (`brig check`, the client) messages go to stderr.
//!
//! The `syslog` crate is not used: it connects blocking sockets and would make PID 1 wait on a
//! stalled syslogd; the RFC 3164 framing brig needs is one `format!`.

mod lines;
pub mod ring;

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use lines::LineBuffer;
pub use ring::{Entry, Rings};

/// syslog facility "daemon", shifted into place (RFC 3164).
const FACILITY_DAEMON: u8 = 3 << 3;
/// The kernel truncates longer /dev/kmsg records; stay below with room for the prefix.
const MAX_RECORD: usize = 900;
/// Messages kept while /dev/kmsg is not yet mounted.
const EARLY_KEEP: usize = 64;

/// Where messages go.
enum Target {
    /// PID 1: syslog when it listens, else the kernel log. Until /dev is mounted, messages wait
    /// in `early`.
    System { kmsg: Option<File>, syslog: Option<UnixDatagram>, early: Vec<String> },
    /// Command-line use: standard error.
    Stderr,
}

struct Sink {
    target: Target,
    kmsg_bucket: TokenBucket,
    /// What the last failed send to /dev/log said, and until when service lines skip it.
    syslog_pause: Option<(Pause, Instant)>,
}

/// Why service lines do not try /dev/log for a moment: under a flood, one failing sendto per
/// line would be most of PID 1's work.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// The daemon's queue is full: drop.
    Busy,
    /// No daemon listens: go to the kernel log.
    Absent,
}

/// How long service lines skip /dev/log after a failed send.
const SYSLOG_PAUSE: Duration = Duration::from_millis(20);

static SINK: Mutex<Sink> = Mutex::new(Sink {
    target: Target::Stderr,
    kmsg_bucket: TokenBucket::new(50, 20),
    syslog_pause: None,
});

/// History for `brig logs`: brig's own messages and every service line, bounded per source.
static RINGS: Mutex<Rings> = Mutex::new(Rings::new(16 * 1024));

/// Runs `f` on the log history. None only if a panic poisoned the lock, which PID 1's
/// panic=abort build cannot produce.
pub fn with_rings<R>(f: impl FnOnce(&mut Rings) -> R) -> Option<R> {
    RINGS.lock().ok().map(|mut r| f(&mut r))
}

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let text = record.args().to_string();
            with_rings(|r| r.push("brig", None, &text));
            if let Ok(mut sink) = SINK.lock() {
                sink.write(severity(record.level()), "brig", None, &text, false);
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger writing to stderr, for command-line use.
pub fn init_stderr(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Installs the logger for PID 1. Messages are kept until [`open_kernel_log`] succeeds.
pub fn init_system(level: log::LevelFilter) {
    if let Ok(mut sink) = SINK.lock() {
        sink.target = Target::System { kmsg: None, syslog: None, early: Vec::new() };
    }
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

/// Opens /dev/kmsg (once /dev is mounted) and the syslog client socket, then writes out the
/// messages kept so far. Returns the error of opening /dev/kmsg, for the caller to report.
pub fn open_kernel_log() -> io::Result<()> {
    let kmsg = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open("/dev/kmsg");
    let Ok(mut sink) = SINK.lock() else {
        return Ok(());
    };
    let Target::System { kmsg: slot, syslog, early } = &mut sink.target else {
        return Ok(());
    };
    let result = match kmsg {
        Ok(file) => {
            *slot = Some(file);
            Ok(())
        }
        Err(e) => Err(e),
    };
    // An unbound datagram socket: each message is sent to /dev/log by address, so a syslogd
    // that restarts is found again without reconnect logic.
    *syslog = UnixDatagram::unbound().ok().filter(|s| s.set_nonblocking(true).is_ok());
    let kept = std::mem::take(early);
    for line in kept {
        sink.write_raw(&line, true);
    }
    result
}

/// Sends everything to the kernel log from now on (shutdown: syslogd is going away).
pub fn bypass_syslog() {
    if let Ok(mut sink) = SINK.lock() {
        if let Target::System { syslog, .. } = &mut sink.target {
            *syslog = None;
        }
    }
}

/// Logs one line of a service's output with the service's name as tag. Returns false when
/// the line was dropped (log full or rate limit hit), so the caller can count it.
pub fn service_line(name: &str, pid: i32, line: &str) -> bool {
    // A NUL would end the record early for syslogd, which reads what follows as a new
    // message with a priority and tag of the service's choosing; escapes would reach the
    // terminal of whoever reads `brig logs`. Control bytes are shown as \xNN.
    let line = escape_controls(line);
    let line = line.as_ref();
    with_rings(|r| r.push(name, Some(pid), line));
    match SINK.lock() {
        Ok(mut sink) => sink.write(6, name, Some(pid), line, true),
        Err(_) => false,
    }
}

/// `line` with every control character but tab written as `\xNN` (borrowed when it has none).
fn escape_controls(line: &str) -> std::borrow::Cow<'_, str> {
    let control = |c: char| (c < ' ' && c != '\t') || c == '\u{7f}';
    if !line.contains(control) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if control(c) {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Severity numbers of RFC 3164 for the `log` levels.
fn severity(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

impl Sink {
    /// Formats and writes one message; returns whether it went out.
    fn write(&mut self, sev: u8, tag: &str, pid: Option<i32>, text: &str, limited: bool) -> bool {
        let mut text = text.trim_end();
        if text.len() > MAX_RECORD {
            let mut cut = MAX_RECORD;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text = &text[..cut];
        }
        if let Target::Stderr = self.target {
            let _ = match pid {
                Some(pid) => writeln!(io::stderr(), "{tag}[{pid}]: {text}"),
                None => writeln!(io::stderr(), "{tag}: {text}"),
            };
            return true;
        }
        let pri = FACILITY_DAEMON | sev;
        let line = match pid {
            Some(pid) => format!("<{pri}>{tag}[{pid}]: {text}"),
            None => format!("<{pri}>{tag}: {text}"),
        };
        self.write_raw(&line, limited)
    }

    fn write_raw(&mut self, line: &str, limited: bool) -> bool {
        let Target::System { kmsg, syslog, early } = &mut self.target else {
            return false;
        };
        let now = Instant::now();
        let paused = match self.syslog_pause {
            Some((why, until)) if limited && now < until => Some(why),
            _ => None,
        };
        match (syslog.as_ref(), paused) {
            (_, Some(Pause::Busy)) => return false,
            (Some(sock), None) => match sock.send_to(line.as_bytes(), "/dev/log") {
                Ok(_) => {
                    self.syslog_pause = None;
                    return true;
                }
                // The daemon is there but behind: drop rather than wait.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.syslog_pause = Some((Pause::Busy, now + SYSLOG_PAUSE));
                    if limited {
                        return false;
                    }
                }
                // No syslogd (yet, or any more): fall through to the kernel log.
                Err(_) => self.syslog_pause = Some((Pause::Absent, now + SYSLOG_PAUSE)),
            },
            _ => {}
        }
        match kmsg {
            Some(file) => {
                if limited && !self.kmsg_bucket.take(now) {
                    return false;
                }
                file.write_all(format!("{line}\n").as_bytes()).is_ok()
            }
            None => {
                if early.len() < EARLY_KEEP {
                    early.push(line.to_string());
                }
                false
            }
        }
    }
}

/// Allows `burst` events at once and `rate` per second on average.
struct TokenBucket {
    burst: u32,
    rate: u32,
    tokens: u32,
    last: Option<Instant>,
}

impl TokenBucket {
    const fn new(burst: u32, rate: u32) -> Self {
        TokenBucket { burst, rate, tokens: burst, last: None }
    }

    fn take(&mut self, now: Instant) -> bool {
        let last = *self.last.get_or_insert(now);
        let earned = now.saturating_duration_since(last).as_millis() * u128::from(self.rate) / 1000;
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
            // Advance only by the time that produced whole tokens, so fractions are kept.
            let used = Duration::from_millis(u64::from(earned) * 1000 / u64::from(self.rate));
            self.last = Some(last + used);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_in_service_output_cannot_forge_a_syslog_record() {
        let forged = "hello\0<10>sshd[1]: Accepted password for root";
        assert_eq!(escape_controls(forged), "hello\\x00<10>sshd[1]: Accepted password for root");
        assert_eq!(escape_controls("a\tb\x1b[2Jc\x7f"), "a\tb\\x1b[2Jc\\x7f");
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 10);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // A long pause refills to the burst size only.
        let later = t0 + Duration::from_secs(10);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }

    #[test]
    fn severities_follow_rfc3164() {
        assert_eq!(severity(log::Level::Error), 3);
        assert_eq!(severity(log::Level::Info), 6);
    }
}
