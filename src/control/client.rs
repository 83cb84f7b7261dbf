//! The client side: `brig status|start|stop|restart|logs|reload|reboot|poweroff|halt`.
//!
//! Exit codes: 0 success; 1 the request was carried out and something failed (a service did
//! not start, a reload was rejected); 2 usage error; 3 brig could not be reached (no socket,
//! PID 1 is not brig, permission denied, or the connection broke).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::protocol::{self, Envelope, LogLine, Outcome, Request, Response, ServiceStatus};

pub const USAGE: &str = "\
control commands (talk to the running brig over its socket):
  status [--json] [NAME...]      state of every service, or of those named
  start NAME...                  start and wait until running (or done, for a oneshot)
  stop NAME...                   stop and wait until the process is gone
  restart NAME...                stop then start; clears a failed service's failure count
  logs [-f] [-n N] [NAME]        recent output (brig's own lines too without NAME); -f follows
  reload                         re-read the config: add, remove and restart what changed
  reboot | poweroff | halt       orderly shutdown
options for all of them:
  --socket PATH                  control socket (default /run/brig.sock)";

/// Exit codes, documented in the README.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNREACHABLE: i32 = 3;

/// Runs a control command; `cmd` is already known to be one.
pub fn main(cmd: &str, args: &[String]) -> i32 {
    let parsed = match parse(cmd, args) {
        Ok(p) => p,
        Err(e) if e == "help" => {
            println!("{USAGE}");
            return EXIT_OK;
        }
        Err(e) => {
            eprintln!("brig {cmd}: {e}\n\n{USAGE}");
            return EXIT_USAGE;
        }
    };
    let stream = match connect(&parsed.socket) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("brig {cmd}: {message}");
            return EXIT_UNREACHABLE;
        }
    };
    match exchange(stream, &parsed) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("brig {cmd}: connection to brig failed: {e}");
            EXIT_UNREACHABLE
        }
    }
}

pub fn is_command(cmd: &str) -> bool {
    matches!(
        cmd,
        "status"
            | "start"
            | "stop"
            | "restart"
            | "logs"
            | "reload"
            | "reboot"
            | "poweroff"
            | "halt"
    ) || (cfg!(feature = "fault-injection") && cmd == "fault")
}

#[derive(Debug)]
struct Parsed {
    request: Request,
    json: bool,
    socket: String,
}

fn parse(cmd: &str, args: &[String]) -> Result<Parsed, String> {
    let mut names = Vec::new();
    let mut json = false;
    let mut follow = false;
    let mut lines = 20usize;
    let mut socket = protocol::SOCKET_PATH.to_string();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" if cmd == "status" => json = true,
            "-f" | "--follow" if cmd == "logs" => follow = true,
            "-n" | "--lines" if cmd == "logs" => {
                let n = it.next().ok_or("-n needs a number")?;
                lines = n.parse().map_err(|_| format!("-n: {n:?} is not a number"))?;
            }
            "--socket" => socket = it.next().ok_or("--socket needs a path")?.clone(),
            "-h" | "--help" => return Err("help".into()),
            a if a.starts_with('-') => return Err(format!("unknown option {a:?}")),
            name => names.push(name.to_string()),
        }
    }
    let need_names = |names: &Vec<String>| {
        if names.is_empty() {
            Err(format!("{cmd} needs at least one service name"))
        } else {
            Ok(())
        }
    };
    let none = |names: &Vec<String>| match names.first() {
        Some(extra) => Err(format!("{cmd} takes no argument, got {extra:?}")),
        None => Ok(()),
    };
    let request = match cmd {
        "status" => Request::Status { names },
        "start" => need_names(&names).map(|()| Request::Start { names })?,
        "stop" => need_names(&names).map(|()| Request::Stop { names })?,
        "restart" => need_names(&names).map(|()| Request::Restart { names })?,
        "logs" if names.len() > 1 => return Err("logs takes at most one service name".into()),
        "logs" => Request::Logs { name: names.pop(), lines, follow },
        "reload" => none(&names).map(|()| Request::Reload {})?,
        "reboot" => none(&names).map(|()| Request::Reboot {})?,
        "poweroff" => none(&names).map(|()| Request::Poweroff {})?,
        "halt" => none(&names).map(|()| Request::Halt {})?,
        #[cfg(feature = "fault-injection")]
        "fault" if names.len() == 1 => Request::Fault { kind: names.remove(0) },
        other => return Err(format!("unknown command {other:?}")),
    };
    Ok(Parsed { request, json, socket })
}

/// Connects, explaining the usual reasons it cannot.
fn connect(path: &str) -> Result<UnixStream, String> {
    match UnixStream::connect(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
            let pid1 = pid1.trim();
            // Only the usual socket says anything about PID 1; another one (--socket) may
            // belong to a brig that is not PID 1 at all.
            let usual = path == protocol::SOCKET_PATH;
            if usual && !pid1.is_empty() && pid1 != "brig" && pid1 != "init" {
                Err(format!("{path} does not exist: PID 1 is {pid1:?}, not brig"))
            } else {
                Err(format!("{path} does not exist: is brig running as PID 1?"))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(format!("{path}: permission denied (the control socket is for root only)"))
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(format!("{path}: connection refused (stale socket: brig is not listening)"))
        }
        Err(e) => Err(format!("{path}: {e}")),
    }
}

fn exchange(mut stream: UnixStream, parsed: &Parsed) -> io::Result<i32> {
    let follow = matches!(parsed.request, Request::Logs { follow: true, .. });
    // Start and stop wait for the service; PID 1 bounds that wait, this only guards against a
    // PID 1 that stopped answering.
    let limit = if follow { None } else { Some(Duration::from_secs(300)) };
    stream.set_read_timeout(limit)?;
    let envelope = Envelope { version: protocol::VERSION, request: parsed.request.clone() };
    stream.write_all(&protocol::encode(&envelope))?;
    let mut code = EXIT_OK;
    let mut got_any = false;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        got_any = true;
        // from_slice like PID 1's decode_request: one serde_json reader in the binary, not two.
        let response: Response = serde_json::from_slice(line.as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad answer: {e}")))?;
        code = code.max(show(&response, parsed.json));
    }
    // `logs` of a service that has printed nothing yet is an empty answer, not a lost PID 1:
    // the server sends one line per log line and closes.
    let logs = matches!(parsed.request, Request::Logs { .. });
    if !got_any && !logs {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "brig closed without answering"));
    }
    Ok(code)
}

/// Prints one response; returns the exit code it implies.
fn show(response: &Response, json: bool) -> i32 {
    match response {
        Response::Status { services, notes, unknown } => {
            if json {
                println!("{}", serde_json::to_string_pretty(services).unwrap_or_default());
            } else {
                for note in notes {
                    println!("! {note}");
                }
                if !services.is_empty() {
                    print!("{}", status_table(services));
                }
            }
            for name in unknown {
                eprintln!("brig: no service named {name:?}");
            }
            if unknown.is_empty() {
                EXIT_OK
            } else {
                EXIT_FAILED
            }
        }
        Response::Outcomes { outcomes } => {
            for Outcome { name, ok, message } in outcomes {
                println!("{name}: {}{message}", if *ok { "" } else { "FAILED: " });
            }
            if outcomes.iter().all(|o| o.ok) {
                EXIT_OK
            } else {
                EXIT_FAILED
            }
        }
        Response::Log { line } => {
            println!("{}", format_log(line));
            EXIT_OK
        }
        Response::Lost { lines } => {
            println!("-- {lines} lines lost: this client read too slowly --");
            EXIT_OK
        }
        Response::Reloaded { added, removed, changed } => {
            let list = |v: &Vec<String>| if v.is_empty() { "-".to_string() } else { v.join(" ") };
            println!(
                "reloaded: added {}; removed {}; changed {}",
                list(added),
                list(removed),
                list(changed)
            );
            EXIT_OK
        }
        Response::Accepted { message } => {
            println!("{message}");
            EXIT_OK
        }
        Response::Error { message, details } => {
            eprintln!("error: {message}");
            for d in details {
                eprintln!("  {d}");
            }
            EXIT_FAILED
        }
    }
}

pub fn status_table(services: &[ServiceStatus]) -> String {
    let header =
        ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "MEMORY", "CPU", "DETAIL"];
    let rows: Vec<[String; 9]> = services
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.state.clone(),
                s.pid.map_or("-".into(), |p| p.to_string()),
                s.uptime_ms.map_or("-".into(), |ms| human_duration(ms / 1000)),
                s.restarts.to_string(),
                s.last_exit.clone().unwrap_or_else(|| "-".into()),
                s.memory_bytes.map_or("-".into(), human_bytes),
                s.cpu_usec.map_or("-".into(), |us| format!("{:.2}s", us as f64 / 1e6)),
                s.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let text: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
    out
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b < 1024 => format!("{b}B"),
        b if b < 1024 * 1024 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{:.1}M", b as f64 / (1024.0 * 1024.0)),
    }
}

/// `2026-12-03T16:40:01.123Z web[42]: text` (UTC: appliances rarely carry a time zone).
fn format_log(line: &LogLine) -> String {
    let secs = line.time_ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    let stamp = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        line.time_ms % 1000
    );
    match line.pid {
        Some(pid) => format!("{stamp} {}[{pid}]: {}", line.source, line.text),
        None => format!("{stamp} {}: {}", line.source, line.text),
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn commands_parse_into_requests() {
        let p = parse("logs", &args(&["-f", "-n", "5", "web"])).unwrap();
        assert_eq!(p.request, Request::Logs { name: Some("web".into()), lines: 5, follow: true });
        let p = parse("status", &args(&["--json"])).unwrap();
        assert!(p.json);
        assert!(parse("stop", &[]).unwrap_err().contains("at least one"));
        assert!(parse("reload", &args(&["x"])).unwrap_err().contains("takes no argument"));
        assert!(parse("start", &args(&["--bogus", "x"])).unwrap_err().contains("unknown option"));
    }

    #[test]
    fn log_timestamps_are_utc_dates() {
        let line = LogLine {
            time_ms: 1_796_313_601_123,
            source: "web".into(),
            pid: Some(7),
            text: "hi".into(),
        };
        assert_eq!(format_log(&line), "2026-12-03T16:00:01.123Z web[7]: hi");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn status_table_aligns_columns() {
        let s = ServiceStatus {
            name: "httpd".into(),
            state: "running".into(),
            detail: None,
            pid: Some(42),
            uptime_ms: Some(125_000),
            restarts: 0,
            last_exit: None,
            memory_bytes: Some(1536),
            cpu_usec: Some(250_000),
        };
        let table = status_table(&[s]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME   STATE    PID  UPTIME"), "{table}");
        assert!(lines[1].starts_with("httpd  running  42   2m5s"), "{table}");
        assert!(lines[1].contains("1.5K"), "{table}");
    }

    #[test]
    fn logs_of_a_service_without_output_is_an_empty_answer() {
        // Regression: `brig logs NAME` before NAME printed anything failed with exit 3,
        // "brig closed without answering", because PID 1 answers with no line at all.
        for (cmd, want) in [("logs", Some(EXIT_OK)), ("status", None)] {
            let parsed = parse(cmd, &args(&["quiet"])).unwrap();
            let (client, server) = UnixStream::pair().unwrap();
            server.shutdown(std::net::Shutdown::Write).unwrap();
            let got = exchange(client, &parsed).ok();
            drop(server);
            assert_eq!(got, want, "{cmd}");
        }
    }

    #[test]
    fn missing_socket_is_explained() {
        let err = connect("/nonexistent/brig.sock").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        // Regression: a mistyped --socket blamed whatever runs as PID 1 of the host.
        assert!(!err.contains("not brig"), "{err}");
    }
}
