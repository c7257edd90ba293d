//! One management API connection: its buffered input and output, where it is
//! in the request cycle, and the time limit of each phase. Driven by the event
//! loop (`event_loop.rs`) on a non-blocking socket; never blocks.
//!
//! ```text
//! Idle ──first byte──▶ Reading ──whole request──▶ Busy (a worker) ──▶ Writing ──▶ Idle
//!  │ 5 s: close         │ 10 s: 408, close                             │ 10 s without progress: close
//! ```

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::http::{self, Parsed, Reject, Request, Response};

/// A connection waiting for the first byte of a request (fresh, or kept alive
/// after a response) is closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request's head and body must arrive within this of its first byte (the
/// slow-client limit); past it the server answers 408 and closes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A response the client does not read for this long is abandoned (closed).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served on one kept-alive connection before it is closed.
const MAX_REQUESTS: usize = 1000;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for the first byte of a request.
    Idle,
    /// Part of a request has come.
    Reading,
    /// A worker handles its request.
    Busy,
    /// Sending a response; then idle, or closed.
    Writing,
}

/// What to do with a connection after driving it.
#[derive(Debug)]
pub(super) enum Step {
    /// Wait for readiness, a deadline or the worker.
    Wait,
    /// Hand this request to a worker; `keep_alive`: whether the connection may
    /// stay open after the response.
    Dispatch(Request, bool),
    /// Close it.
    Close,
}

/// Which limit a connection ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expired {
    /// No request began within [`IDLE_TIMEOUT`]: close.
    Idle,
    /// A request did not complete within [`REQUEST_TIMEOUT`]: a 408 is queued.
    Request,
    /// The client did not read its response within [`WRITE_TIMEOUT`]: close.
    Write,
}

pub(super) struct Conn {
    pub stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    phase: Phase,
    /// When the current phase began (Writing: the last progress).
    since: Instant,
    close_after: bool,
    continue_sent: bool,
    served: usize,
}

impl Conn {
    pub(super) fn new(stream: TcpStream, now: Instant) -> Conn {
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            phase: Phase::Idle,
            since: now,
            close_after: false,
            continue_sent: false,
            served: 0,
        }
    }

    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    /// When the current phase began.
    pub(super) fn since(&self) -> Instant {
        self.since
    }

    /// When the current phase runs out (none while a worker has the request).
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle => Some(self.since + IDLE_TIMEOUT),
            Phase::Reading => Some(self.since + REQUEST_TIMEOUT),
            Phase::Busy => None,
            Phase::Writing => Some(self.since + WRITE_TIMEOUT),
        }
    }

    /// Queues an encoded response; the next request is read after it when
    /// `keep_alive`, else the connection closes once it is sent.
    pub(super) fn respond(&mut self, bytes: &[u8], keep_alive: bool, now: Instant) {
        self.output.extend_from_slice(bytes);
        self.phase = Phase::Writing;
        self.since = now;
        self.close_after = !keep_alive;
    }

    /// The deadline passed: which limit, with a 408 queued for a late request
    /// (drive the connection to send it). Close the connection otherwise.
    pub(super) fn expire(&mut self, now: Instant) -> Expired {
        match self.phase {
            Phase::Reading => {
                self.reject(
                    Reject(
                        408,
                        "REQUEST_TIMEOUT",
                        "request not received in time".into(),
                    ),
                    now,
                );
                Expired::Request
            }
            Phase::Idle => Expired::Idle,
            Phase::Busy | Phase::Writing => Expired::Write,
        }
    }

    /// Tells a connection about to be closed to make room that the server is
    /// full, if nothing else is being written to it (best effort, no wait).
    pub(super) fn evict(&mut self) {
        // Take what the client sent, so that closing sends FIN rather than RST
        // (which could discard the answer before the client reads it).
        while let Ok(true) = self.read() {
            self.input.clear();
        }
        if self.written == self.output.len() && self.phase != Phase::Busy {
            let resp = Response::error(503, "SERVICE_UNAVAILABLE", "too many connections");
            let _ = self.stream.write(&http::encode(&resp, false, false));
        }
    }

    /// Writes, reads and parses as far as possible without blocking.
    pub(super) fn drive(&mut self, now: Instant) -> Step {
        loop {
            match self.flush(now) {
                Ok(true) => {}
                Ok(false) if self.phase == Phase::Writing => return Step::Wait,
                // A 100 Continue still queued: keep reading the body meanwhile.
                Ok(false) => {}
                Err(_) => return Step::Close,
            }
            match self.phase {
                Phase::Busy => return Step::Wait,
                Phase::Writing if self.close_after => return Step::Close,
                Phase::Writing => {
                    self.phase = Phase::Idle;
                    self.since = now;
                    self.continue_sent = false;
                }
                Phase::Idle | Phase::Reading => match http::take_request(&mut self.input) {
                    Ok(Parsed::Request(req)) => {
                        self.served += 1;
                        self.phase = Phase::Busy;
                        let keep_alive = req.keep_alive && self.served < MAX_REQUESTS;
                        return Step::Dispatch(req, keep_alive);
                    }
                    Err(reject) => self.reject(reject, now),
                    Ok(Parsed::Partial { expects_continue }) => {
                        if expects_continue && !self.continue_sent {
                            self.continue_sent = true;
                            self.output.extend_from_slice(CONTINUE);
                            continue;
                        }
                        if self.phase == Phase::Idle && !self.input.is_empty() {
                            self.phase = Phase::Reading;
                            self.since = now;
                        }
                        match self.read() {
                            Ok(true) => {}
                            Ok(false) => return Step::Wait,
                            // The peer is gone or half-closed before a whole request.
                            Err(_) if self.phase == Phase::Reading => self.reject(
                                Reject(400, "BAD_REQUEST", "incomplete request".into()),
                                now,
                            ),
                            Err(_) => return Step::Close,
                        }
                    }
                },
            }
        }
    }

    fn reject(&mut self, Reject(status, code, message): Reject, now: Instant) {
        let resp = Response::error(status, code, &message);
        self.respond(&http::encode(&resp, false, false), false, now);
    }

    /// Reads what is there: true if bytes came, false if none are waiting; an
    /// error for end of stream.
    fn read(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        loop {
            return match self.stream.read(&mut chunk) {
                Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Writes queued output: true once all of it is sent.
    fn flush(&mut self, now: Instant) -> io::Result<bool> {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    if self.phase == Phase::Writing {
                        self.since = now;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.output.clear();
        self.written = 0;
        Ok(true)
    }
}
