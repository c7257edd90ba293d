//! `GET /api/v5/gateways/lwm2m/events[?clientid=]`: the gateway's live events as
//! Server-Sent Events (`text/event-stream`). A worker checks the credentials and
//! subscribes to the feed ([`crate::events`]); the event loop then hands the
//! connection to a thread of its own that writes events until the client goes away
//! or the API stops. At most [`MAX_STREAMS`] are open (503 beyond), so streams
//! never take the workers or the event loop.
//!
//! Each event is `id: <seq>`, `event: <msgType>` (or `message`), `data: <json>`
//! (see [`crate::events::Event::to_json`]); `event: lost` with `{"lost":N}` when
//! this client fell behind; a `: keepalive` comment every [`KEEPALIVE`].

use std::fmt;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::WRITE_TIMEOUT;
use super::http::{Request, Response};
use crate::events::{Next, Subscription};

/// Event streams open at most.
pub(crate) const MAX_STREAMS: usize = 16;
/// A comment line at least this often, so proxies and clients see the stream alive.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often a stream's thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(500);

/// A subscription on its way to its thread, holding one of the [`MAX_STREAMS`] places.
pub(crate) struct EventStream {
    sub: Subscription,
    _slot: Slot,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventStream")
    }
}

/// One of the open streams counted in `open`; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_STREAMS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The route: a response carrying the stream, or why not.
pub(super) fn open(
    admin: &dyn super::Admin,
    open_streams: &Arc<AtomicUsize>,
    req: &Request,
) -> Response {
    let Some(feed) = admin.events() else {
        return Response::error(404, "NOT_FOUND", "this gateway has no event feed");
    };
    let clientid = req.param("clientid").filter(|c| !c.is_empty());
    let Some(slot) = Slot::take(open_streams) else {
        return Response::error(
            503,
            "SERVICE_UNAVAILABLE",
            &format!("too many event streams open (at most {MAX_STREAMS})"),
        );
    };
    let Some(sub) = feed.subscribe(clientid) else {
        return Response::error(503, "SERVICE_UNAVAILABLE", "too many event listeners");
    };
    let mut r = Response::json(200, Vec::new());
    r.content_type = "text/event-stream";
    r.stream = Some(EventStream { sub, _slot: slot });
    r
}

/// The response head: no length, the body ends when the connection closes.
pub(super) fn head() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
      X-Accel-Buffering: no\r\nConnection: close\r\n\r\nretry: 2000\n\n"
        .to_vec()
}

/// Starts the thread writing `stream`'s events to `socket` (whose head is `head`).
pub(super) fn spawn(
    socket: TcpStream,
    head: Vec<u8>,
    stream: EventStream,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("api-events".into())
        .spawn(move || {
            if let Err(e) = serve(socket, &head, stream, &stop) {
                tracing::debug!(error = %e, "event stream closed");
            }
        })
        .map(|_| ())
}

fn serve(
    mut socket: TcpStream,
    head: &[u8],
    mut stream: EventStream,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let _ = socket.set_nodelay(true);
    socket.write_all(head)?;
    let mut last_write = Instant::now();
    let mut out = Vec::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) {
        out.clear();
        match stream.sub.next(POLL) {
            Next::Event(e) => {
                let kind = e.msg_type.as_deref().unwrap_or("message");
                let kind: String = kind.chars().filter(|c| !c.is_control()).collect();
                let _ = write!(out, "id: {}\nevent: {kind}\n", e.seq);
                // One data line per line, should a payload ever hold a newline.
                for line in e.to_json().lines() {
                    let _ = writeln!(out, "data: {line}");
                }
                out.push(b'\n');
            }
            Next::Lost(n) => {
                let _ = write!(out, "event: lost\ndata: {{\"lost\":{n}}}\n\n");
            }
            Next::Idle if last_write.elapsed() >= KEEPALIVE => {
                out.extend_from_slice(b": keepalive\n\n")
            }
            Next::Idle if peer_closed(&mut socket)? => return Ok(()),
            Next::Idle => continue,
            Next::Closed => return Ok(()),
        }
        socket.write_all(&out)?;
        last_write = Instant::now();
    }
    Ok(())
}

/// Whether the client closed its side (it sends nothing on an event stream, so
/// anything readable is its end); looked at while idle, so its place comes back
/// without waiting for a write to fail.
fn peer_closed(socket: &mut TcpStream) -> std::io::Result<bool> {
    use std::io::Read;
    socket.set_nonblocking(true)?;
    let mut buf = [0u8; 64];
    let closed = match socket.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    socket.set_nonblocking(false)?;
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_and_their_places_come_back() {
        let open = Arc::new(AtomicUsize::new(0));
        let slots: Vec<Slot> = (0..MAX_STREAMS)
            .map(|_| Slot::take(&open).unwrap())
            .collect();
        assert!(Slot::take(&open).is_none());
        drop(slots);
        assert_eq!(open.load(Ordering::Acquire), 0);
    }
}
