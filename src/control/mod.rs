//! The control socket: PID 1's side of `brig status`, `start`, `stop`, `logs`, `reload`, ...
//!
//! A Unix stream socket under /run, mode 0600, created close-on-exec. Every connection is
//! non-blocking, has a bounded input buffer and a deadline for its request, and an output
//! buffer drained as the client reads: a silent, slow, garbage-sending or half-closed client
//! costs PID 1 a few KiB and a file descriptor until its deadline, never a wait. The peer's
//! uid comes from SO_PEERCRED; only root may change anything (the file mode already keeps
//! others out; the check stays in case someone loosens it).
//!
//! The server only moves bytes and decodes requests; the supervisor executes them.

pub mod client;
pub mod protocol;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use protocol::{LogLine, Request, Response};

/// Time a client has to send its complete request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 128;
/// A flood of refused connections is logged once per this period: a line per refusal would
/// flood the kernel log, and PID 1 itself waits while the kernel prints it on a slow console.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long the listener rests after accept failed for want of descriptors (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM): the connection stays queued, and a level-triggered listener would wake
/// the loop at once, every turn.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);
/// Output kept for one client; a follower that falls further behind loses lines.
const MAX_OUTPUT: usize = 256 * 1024;
/// Token of the listening socket in the supervisor's epoll set.
pub const LISTEN_TOKEN: u64 = u64::MAX - 1;

/// A failed step of setting up the socket, with the path and the OS error.
#[derive(Debug)]
pub struct ControlError {
    pub op: &'static str,
    pub path: PathBuf,
    pub error: io::Error,
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.error)
    }
}

/// What a connection is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Reading its request.
    Reading,
    /// Its request is being carried out; the supervisor will answer.
    Busy,
    /// Receiving new log lines of `name` (all when None) after sequence `after`.
    Following { name: Option<String>, after: u64 },
    /// Answer queued: close once it is written.
    Closing,
}

struct Conn {
    stream: UnixStream,
    uid: u32,
    input: Vec<u8>,
    output: Vec<u8>,
    phase: Phase,
    deadline: Option<Instant>,
    /// Whether EPOLLOUT is in the interest set.
    want_write: bool,
}

/// A request ready for the supervisor.
pub struct Incoming {
    pub conn: RawFd,
    pub request: Request,
}

/// Events counted between log lines, so a flood of them is one line per REFUSAL_LOG_EVERY.
#[derive(Default)]
struct Tally {
    since_logged: u64,
    logged: Option<Instant>,
}

impl Tally {
    /// Counts one event at `now`; Some(events since the last line) when a line is due.
    fn count(&mut self, now: Instant) -> Option<u64> {
        self.since_logged += 1;
        if self.logged.is_some_and(|t| now < t + REFUSAL_LOG_EVERY) {
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.since_logged))
    }
}

pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    conns: HashMap<RawFd, Conn>,
    /// Connections refused as over MAX_CONNECTIONS: one line per REFUSAL_LOG_EVERY, not one
    /// per connection.
    refused: Tally,
    /// The listener is out of the epoll set until then (accept failed for want of resources).
    paused_until: Option<Instant>,
    /// accept failures, reported the same way.
    accept_failures: Tally,
}

impl Server {
    /// Creates the socket at `path` (replacing a stale one) with mode 0600.
    pub fn bind(path: &Path) -> Result<Server, ControlError> {
        let err = |op, error| ControlError { op, path: path.to_path_buf(), error };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("remove stale socket", e)),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err("mkdir", e))?;
        }
        // The umask makes the socket 0600 from its first moment, without a chmod race.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(|e| err("bind", e))?;
        listener.set_nonblocking(true).map_err(|e| err("set non-blocking", e))?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            conns: HashMap::new(),
            refused: Tally::default(),
            paused_until: None,
            accept_failures: Tally::default(),
        })
    }

    pub fn register(&self, epoll: &Epoll) -> nix::Result<()> {
        epoll.add(self.listener.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, LISTEN_TOKEN))
    }

    pub fn owns(&self, fd: RawFd) -> bool {
        self.conns.contains_key(&fd)
    }

    /// Accepts every pending connection.
    pub fn accept(&mut self, epoll: &Epoll, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the connection stays queued. Rest the listener
                    // rather than wake on it at once, every turn; say so once per period.
                    if let Some(n) = self.accept_failures.count(now) {
                        log::warn!(
                            "control: accept on {}: {e} ({n} time(s)); clients wait",
                            self.path.display()
                        );
                    }
                    if epoll.delete(self.listener.as_fd()).is_ok() {
                        self.paused_until = Some(now + ACCEPT_PAUSE);
                    }
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                if let Some(n) = self.refused.count(now) {
                    log::warn!(
                        "control: {MAX_CONNECTIONS} clients connected; refused {n} connection(s)"
                    );
                }
                continue;
            }
            let uid = match getsockopt(&stream, PeerCredentials) {
                Ok(cred) => cred.uid(),
                Err(e) => {
                    log::warn!("control: SO_PEERCRED: {} ({e:?})", e.desc());
                    continue;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, fd as u64);
            if let Err(e) = epoll.add(stream.as_fd(), event) {
                log::warn!("control: epoll_ctl add: {} ({e:?})", e.desc());
                continue;
            }
            let conn = Conn {
                stream,
                uid,
                input: Vec::new(),
                output: Vec::new(),
                phase: Phase::Reading,
                deadline: Some(now + REQUEST_TIMEOUT),
                want_write: false,
            };
            self.conns.insert(fd, conn);
        }
    }

    /// Handles readiness of a connection. Returns a request once one is complete and allowed.
    pub fn on_event(&mut self, epoll: &Epoll, fd: RawFd, flags: EpollFlags) -> Option<Incoming> {
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush(epoll, fd);
        }
        let conn = self.conns.get_mut(&fd)?;
        if conn.phase != Phase::Reading {
            // Followers and busy clients have nothing more to say; a hang-up ends them.
            if flags
                .intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLERR)
                || !drain_input(&mut conn.stream)
            {
                self.close(epoll, fd);
            }
            return None;
        }
        let mut buf = [0u8; 4096];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    // Closed before a complete request: nothing to answer.
                    self.close(epoll, fd);
                    return None;
                }
                Ok(n) => {
                    // Only the new bytes can hold the newline: rescanning the whole buffer
                    // made a 64 KiB garbage line cost PID 1 half a megabyte of scanning.
                    let scanned = conn.input.len();
                    conn.input.extend_from_slice(&buf[..n]);
                    let newline = conn.input[scanned..].iter().position(|&b| b == b'\n');
                    if let Some(end) = newline.map(|i| scanned + i) {
                        let line: Vec<u8> = conn.input.drain(..=end).collect();
                        return self.decode(epoll, fd, &line[..line.len() - 1]);
                    }
                    if conn.input.len() > protocol::MAX_REQUEST {
                        let msg = format!("request longer than {} bytes", protocol::MAX_REQUEST);
                        self.answer(epoll, fd, &Response::error(msg));
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(epoll, fd);
                    return None;
                }
            }
        }
    }

    fn decode(&mut self, epoll: &Epoll, fd: RawFd, line: &[u8]) -> Option<Incoming> {
        let uid = self.conns.get(&fd)?.uid;
        match protocol::decode_request(line) {
            Err(message) => {
                self.answer(epoll, fd, &Response::error(message));
                None
            }
            Ok(request) if request.changes_state() && uid != 0 => {
                let message = format!("permission denied: uid {uid} may not change the system");
                self.answer(epoll, fd, &Response::error(message));
                None
            }
            Ok(request) => {
                if let Some(conn) = self.conns.get_mut(&fd) {
                    conn.phase = Phase::Busy;
                    conn.deadline = None;
                }
                Some(Incoming { conn: fd, request })
            }
        }
    }

    /// Sends the final answer of a request and closes once it is written.
    pub fn answer(&mut self, epoll: &Epoll, fd: RawFd, response: &Response) {
        if let Some(conn) = self.conns.get_mut(&fd) {
            conn.output.extend_from_slice(&protocol::encode(response));
            conn.phase = Phase::Closing;
            // A client that stops reading gets a little time, not forever.
            conn.deadline = Some(Instant::now() + REQUEST_TIMEOUT);
        }
        self.flush(epoll, fd);
    }

    /// Sends several responses (log lines) and closes once they are written.
    pub fn answer_all(&mut self, epoll: &Epoll, fd: RawFd, responses: &[Response]) {
        if let Some(conn) = self.conns.get_mut(&fd) {
            for response in responses {
                conn.output.extend_from_slice(&protocol::encode(response));
            }
            conn.phase = Phase::Closing;
            conn.deadline = Some(Instant::now() + REQUEST_TIMEOUT);
        }
        self.flush(epoll, fd);
    }

    /// Sends the backlog `lines` and keeps the connection for new lines of `name`.
    pub fn follow(
        &mut self,
        epoll: &Epoll,
        fd: RawFd,
        name: Option<String>,
        lines: &[LogLine],
        after: u64,
    ) {
        if let Some(conn) = self.conns.get_mut(&fd) {
            for line in lines {
                conn.output
                    .extend_from_slice(&protocol::encode(&Response::Log { line: line.clone() }));
            }
            conn.phase = Phase::Following { name, after };
        }
        self.flush(epoll, fd);
    }

    /// Followers and what they have seen: (connection, source filter, last sequence).
    pub fn followers(&self) -> Vec<(RawFd, Option<String>, u64)> {
        self.conns
            .iter()
            .filter_map(|(fd, c)| match &c.phase {
                Phase::Following { name, after } => Some((*fd, name.clone(), *after)),
                _ => None,
            })
            .collect()
    }

    /// Queues new lines for a follower; lines that do not fit its buffer are counted as lost.
    pub fn feed(&mut self, epoll: &Epoll, fd: RawFd, lines: &[LogLine], last: u64) {
        let Some(conn) = self.conns.get_mut(&fd) else { return };
        let mut lost = 0u64;
        for line in lines {
            if conn.output.len() > MAX_OUTPUT {
                lost += 1;
                continue;
            }
            conn.output.extend_from_slice(&protocol::encode(&Response::Log { line: line.clone() }));
        }
        if lost > 0 {
            conn.output.extend_from_slice(&protocol::encode(&Response::Lost { lines: lost }));
        }
        if let Phase::Following { after, .. } = &mut conn.phase {
            *after = last;
        }
        self.flush(epoll, fd);
    }

    /// Writes what the socket takes now; watches for writability when something is left.
    fn flush(&mut self, epoll: &Epoll, fd: RawFd) {
        let Some(conn) = self.conns.get_mut(&fd) else { return };
        while !conn.output.is_empty() {
            match conn.stream.write(&conn.output) {
                Ok(0) => break,
                Ok(n) => {
                    conn.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(epoll, fd);
                    return;
                }
            }
        }
        if conn.output.is_empty() && conn.phase == Phase::Closing {
            self.close(epoll, fd);
            return;
        }
        let want = !conn.output.is_empty();
        if want != conn.want_write {
            conn.want_write = want;
            let mut flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            if want {
                flags |= EpollFlags::EPOLLOUT;
            }
            let mut event = EpollEvent::new(flags, fd as u64);
            let _ = epoll.modify(conn.stream.as_fd(), &mut event);
        }
    }

    pub fn close(&mut self, epoll: &Epoll, fd: RawFd) {
        if let Some(conn) = self.conns.remove(&fd) {
            let _ = epoll.delete(conn.stream.as_fd());
        }
    }

    /// Closes connections whose deadline passed, and takes a rested listener back.
    pub fn expire(&mut self, epoll: &Epoll, now: Instant) {
        if self.paused_until.is_some_and(|t| now >= t) {
            match self.register(epoll) {
                Ok(()) => self.paused_until = None,
                Err(e) => {
                    log::error!("control: epoll_ctl add listener: {} ({e:?})", e.desc());
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                }
            }
        }
        let late: Vec<RawFd> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            log::debug!("control: closing a client that missed its deadline");
            self.close(epoll, fd);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().filter_map(|c| c.deadline).chain(self.paused_until).min()
    }
}

/// Reads and discards whatever a client sends after its request, a bounded amount per call so
/// a client that keeps writing cannot hold the loop. False at end-of-file.
fn drain_input(stream: &mut UnixStream) -> bool {
    let mut buf = [0u8; 1024];
    for _ in 0..64 {
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
        }
    }
    true
}
