//! The management API's worker threads: they answer whole requests (calling
//! the gateway through [`super::Admin`], which may wait on the shards) and hand
//! the encoded responses back to the event loop, which writes them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use super::http::{self, Request, Response};
use super::routes::{self, Ctx};

/// A whole request for a worker; `id` names its connection.
pub(crate) struct Job {
    pub id: usize,
    pub req: Request,
    /// Whether the connection may stay open after the response.
    pub keep_alive: bool,
}

/// An encoded response for connection `id`.
pub(crate) struct Done {
    pub id: usize,
    pub bytes: Vec<u8>,
    pub keep_alive: bool,
    /// An event stream to hand the connection to (`bytes`: its head).
    pub stream: Option<super::sse::EventStream>,
}

/// The route's response; a panicking handler answers 500.
pub(crate) fn answer(ctx: &Ctx, req: &Request) -> Response {
    catch_unwind(AssertUnwindSafe(|| routes::handle(ctx, req))).unwrap_or_else(|_| {
        tracing::error!(method = %req.method, path = %req.path, "API handler panicked");
        Response::error(500, "INTERNAL_ERROR", "internal error")
    })
}

/// One worker: answers jobs until the event loop is gone.
pub(crate) fn run(
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    waker: &Waker,
    ctx: &Ctx,
    stop: &AtomicBool,
) {
    while let Ok(job) = jobs.recv() {
        if stop.load(Ordering::Relaxed) {
            continue;
        }
        let mut resp = answer(ctx, &job.req);
        let keep_alive = job.keep_alive && !stop.load(Ordering::Relaxed);
        let stream = resp.stream.take();
        let bytes = match stream {
            Some(_) => super::sse::head(),
            None => http::encode(&resp, keep_alive, job.req.method == "HEAD"),
        };
        let reply = Done {
            id: job.id,
            bytes,
            keep_alive,
            stream,
        };
        if done.send(reply).is_err() {
            return;
        }
        let _ = waker.wake();
    }
}
