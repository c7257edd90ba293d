//! The management API's event loop: one thread accepts and drives every
//! connection on non-blocking sockets (mio), so a slow or idle client costs a
//! buffer, never a thread. Whole requests go to the worker threads
//! (`workers.rs`) and their responses come back to be written; `/health` is
//! answered here, so it answers while every worker is busy. At
//! [`MAX_CONNECTIONS`] the connection that has waited longest in its phase
//! (idle or reading a request; one writing a response only if none is) is
//! closed to admit the new one, so a flood of slow clients cannot shut the
//! door on the next request.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use super::conn::{Conn, Expired, Phase, Step};
use super::http::{self, Request, Response};
use super::routes::{self, Ctx};
use super::stats::ApiStats;
use super::workers::{answer, Done, Job};

/// Open connections at most; beyond it the longest-waiting one is closed.
pub const MAX_CONNECTIONS: usize = 256;
pub(crate) const LISTENER: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);
/// The longest sleep, and the retry delay after a failed accept.
const MAX_SLEEP: Duration = Duration::from_secs(1);
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

pub(crate) struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    jobs: Sender<Job>,
    done: Receiver<Done>,
    ctx: Arc<Ctx>,
    stats: Arc<ApiStats>,
    stop: Arc<AtomicBool>,
    conns: HashMap<usize, Conn>,
    next_id: usize,
    accept_failed: bool,
}

impl EventLoop {
    pub(super) fn new(
        poll: Poll,
        listener: TcpListener,
        jobs: Sender<Job>,
        done: Receiver<Done>,
        ctx: Arc<Ctx>,
        stats: Arc<ApiStats>,
        stop: Arc<AtomicBool>,
    ) -> EventLoop {
        EventLoop {
            poll,
            listener,
            jobs,
            done,
            ctx,
            stats,
            stop,
            conns: HashMap::new(),
            next_id: WAKER.0 + 1,
            accept_failed: false,
        }
    }

    /// Runs until the stop flag is set (and the waker woken); every
    /// connection is closed on return.
    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Relaxed) {
            let timeout = self.sleep(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "management API poll failed");
                    std::thread::sleep(ACCEPT_RETRY);
                }
                continue;
            }
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(now),
                    WAKER => {}
                    Token(id) => self.drive(id, now),
                }
            }
            if self.accept_failed {
                self.accept(now);
            }
            while let Ok(mut d) = self.done.try_recv() {
                if let Some(stream) = d.stream.take() {
                    self.hand_to_stream(d.id, d.bytes, stream);
                    continue;
                }
                if let Some(c) = self.conns.get_mut(&d.id) {
                    c.respond(&d.bytes, d.keep_alive, now);
                    self.drive(d.id, now);
                }
            }
            self.expire(now);
        }
        self.stats.open.store(0, Ordering::Relaxed);
    }

    /// How long to wait for events: until the next deadline.
    fn sleep(&self, now: Instant) -> Duration {
        let next = self.conns.values().filter_map(Conn::deadline).min();
        let mut d = next.map_or(MAX_SLEEP, |t| t.saturating_duration_since(now));
        if self.accept_failed {
            d = d.min(ACCEPT_RETRY);
        }
        d.min(MAX_SLEEP)
    }

    fn accept(&mut self, now: Instant) {
        self.accept_failed = false;
        loop {
            let mut stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // e.g. out of file descriptors: free one and retry soon.
                    tracing::debug!(error = %e, "management API accept failed");
                    self.evict_one();
                    self.accept_failed = true;
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS && !self.evict_one() {
                // Every connection is at a worker: refuse this one.
                let resp = Response::error(503, "SERVICE_UNAVAILABLE", "too many connections");
                let _ = stream.write(&http::encode(&resp, false, false));
                ApiStats::add(&self.stats.busy);
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, Token(id), interest)
            {
                tracing::debug!(error = %e, "management API connection not registered");
                continue;
            }
            self.conns.insert(id, Conn::new(stream, now));
            ApiStats::add(&self.stats.accepted);
            self.stats
                .open
                .store(self.conns.len() as u64, Ordering::Relaxed);
            self.drive(id, now);
        }
    }

    /// Moves a connection on until it waits; hands whole requests over.
    fn drive(&mut self, id: usize, now: Instant) {
        loop {
            let step = match self.conns.get_mut(&id) {
                Some(c) => c.drive(now),
                None => return,
            };
            match step {
                Step::Wait => return,
                Step::Close => return self.close(id),
                Step::Dispatch(req, keep_alive) => {
                    let Some((bytes, keep_alive)) = self.hand_over(id, req, keep_alive) else {
                        return;
                    };
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.respond(&bytes, keep_alive, now);
                    }
                }
            }
        }
    }

    /// Gives the request to a worker, or returns the response to write at
    /// once: `/health`'s, or a 503 when the workers' queue is full.
    fn hand_over(&self, id: usize, req: Request, keep_alive: bool) -> Option<(Vec<u8>, bool)> {
        if routes::is_health(&req) {
            let keep_alive = keep_alive && !self.stop.load(Ordering::Relaxed);
            let resp = answer(&self.ctx, &req);
            return Some((
                http::encode(&resp, keep_alive, req.method == "HEAD"),
                keep_alive,
            ));
        }
        match self.jobs.try_send(Job {
            id,
            req,
            keep_alive,
        }) {
            Ok(()) => None,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                ApiStats::add(&self.stats.busy);
                let resp = Response::error(503, "SERVICE_UNAVAILABLE", "server busy, retry");
                Some((http::encode(&resp, false, false), false))
            }
        }
    }

    /// Gives connection `id` to an event stream's thread (its response head first);
    /// the event loop forgets it.
    fn hand_to_stream(&mut self, id: usize, head: Vec<u8>, stream: super::sse::EventStream) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.stats
            .open
            .store(self.conns.len() as u64, Ordering::Relaxed);
        let socket = std::net::TcpStream::from(c.stream);
        if let Err(e) = super::sse::spawn(socket, head, stream, self.stop.clone()) {
            tracing::warn!(error = %e, "event stream thread not started");
        }
    }

    fn close(&mut self, id: usize) {
        if let Some(mut c) = self.conns.remove(&id) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
        self.stats
            .open
            .store(self.conns.len() as u64, Ordering::Relaxed);
    }

    /// Closes the connection that has waited longest (not one at a worker);
    /// false if there is none.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase() != Phase::Busy)
            .min_by_key(|(_, c)| (c.phase() == Phase::Writing, c.since()))
            .map(|(&id, _)| id);
        let Some(id) = victim else {
            return false;
        };
        if let Some(c) = self.conns.get_mut(&id) {
            c.evict();
        }
        ApiStats::add(&self.stats.evicted);
        self.close(id);
        true
    }

    /// Applies the time limits: idle connections and unread responses are
    /// closed, late requests answered 408.
    fn expire(&mut self, now: Instant) {
        let due: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            match c.expire(now) {
                Expired::Request => {
                    ApiStats::add(&self.stats.request_timeout);
                    self.drive(id, now);
                }
                Expired::Idle => {
                    ApiStats::add(&self.stats.idle_timeout);
                    self.close(id);
                }
                Expired::Write => {
                    ApiStats::add(&self.stats.write_timeout);
                    self.close(id);
                }
            }
        }
    }
}
