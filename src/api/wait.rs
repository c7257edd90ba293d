//! `?wait=5s` on a device operation: the API subscribes to the gateway's event feed for
//! the device first, then sends the command, then waits for the command's final message
//! (same endpoint, same `reqID`, neither an `ack` nor a `notify`) and answers it as the
//! HTTP response (200, the JSON exactly as published on MQTT). No answer in time: 504.
//!
//! A waiting request holds one of the API's worker threads, so at most
//! [`super::MAX_WAITING`] wait at once (503 beyond), leaving a worker for everything else;
//! and a wait ends early when the API stops.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use simd_json::prelude::*;

use super::http::Response;
use super::routes::{bad_request, not_found, Ctx};
use crate::events::Next;

/// The longest `wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a wait looks whether the API is stopping.
const SLICE: Duration = Duration::from_millis(250);

/// `wait`'s value: a duration (`"5s"`, `"500ms"`, a bare number of seconds), above zero
/// and at most [`MAX_WAIT`].
pub(super) fn parse(v: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(v) = v else { return Ok(None) };
    let d = crate::config::duration::parse_duration(v.trim())
        .map_err(|e| format!("wait: {e} (e.g. wait=5s, at most 60s)"))?;
    if d.is_zero() || d > MAX_WAIT {
        return Err(format!(
            "wait: {v:?} is out of range: above 0 and at most 60s"
        ));
    }
    Ok(Some(d))
}

/// Decrements the waiting count when the wait ends, however it ends.
struct Slot<'a>(&'a Ctx);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) fn send_and_wait(
    ctx: &Ctx,
    id: &str,
    cmd: Vec<u8>,
    req_id: &str,
    wait: Duration,
) -> Response {
    if ctx.waiting.fetch_add(1, Ordering::SeqCst) >= super::MAX_WAITING {
        ctx.waiting.fetch_sub(1, Ordering::SeqCst);
        return Response::error(
            503,
            "TOO_MANY_WAITING",
            &format!(
                "{} requests already wait for devices' answers: retry, or send without wait \
                 and read the answer on MQTT or the event stream",
                super::MAX_WAITING
            ),
        );
    }
    let _slot = Slot(ctx);
    let Some(client) = ctx.admin.client(id) else {
        return not_found("Client not found");
    };
    let Some(feed) = ctx.admin.events() else {
        return Response::error(
            503,
            "NO_EVENT_FEED",
            "this gateway has no event feed to wait on",
        );
    };
    let Some(mut sub) = feed.subscribe(feed_key(ctx, &client).as_deref()) else {
        return Response::error(
            503,
            "TOO_MANY_SUBSCRIBERS",
            "the event feed has too many subscribers: retry without wait",
        );
    };
    if let Err(e) = ctx.admin.command(id, cmd) {
        return bad_request(&e);
    }
    let deadline = Instant::now() + wait;
    let mut lost = 0u64;
    loop {
        if ctx.stopping() {
            return Response::error(503, "STOPPING", "the management API is stopping");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let mut msg = format!(
                "no answer from {:?} to reqID {req_id} within {wait:?}; the command was sent \
                 and its answer will be published on MQTT",
                client.endpoint_name
            );
            if lost > 0 {
                msg.push_str(&format!(
                    " ({lost} events were skipped while this request fell behind the feed)"
                ));
            }
            return Response::error(504, "DEVICE_TIMEOUT", &msg)
                .with_header("X-Request-Id", req_id.to_string());
        }
        match sub.next(left.min(SLICE)) {
            Next::Event(e) if is_final(&e.payload, req_id) => {
                return Response::json(200, e.payload.clone())
                    .with_header("X-Request-Id", req_id.to_string());
            }
            Next::Event(_) | Next::Idle => {}
            Next::Lost(n) => lost += n,
            Next::Closed => return Response::error(503, "STOPPING", "the gateway is stopping"),
        }
    }
}

/// What the event feed calls the device: the value its topics hold in the mountpoint's
/// `${endpoint_name}`, else `${clientid}` (the `device_id` when it registered with one);
/// None when the mountpoint names neither (every event is then read, matched by reqID).
fn feed_key(ctx: &Ctx, client: &super::ClientInfo) -> Option<String> {
    let mut config = ctx.admin.gateway_config().into_bytes();
    let v = simd_json::to_borrowed_value(&mut config).ok()?;
    let mountpoint = v.get("mountpoint")?.as_str()?;
    if mountpoint.contains("${endpoint_name}") {
        Some(client.endpoint_name.clone())
    } else if mountpoint.contains("${clientid}") {
        Some(client.clientid.clone())
    } else {
        None
    }
}

/// Whether `payload` is the final message of the command `req_id`: its `reqID` (a number
/// or a string) and a `msgType` other than `ack` (the device will answer separately) and
/// `notify` (an observation's later values).
fn is_final(payload: &[u8], req_id: &str) -> bool {
    let mut copy = payload.to_vec();
    let Ok(v) = simd_json::to_borrowed_value(&mut copy) else {
        return false;
    };
    let same = match v.get("reqID") {
        Some(r) => match (r.as_u64(), r.as_str()) {
            (Some(n), _) => n.to_string() == req_id,
            (None, Some(s)) => s == req_id,
            _ => false,
        },
        None => false,
    };
    same && !matches!(
        v.get("msgType").and_then(|t| t.as_str()),
        Some("ack" | "notify")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_values() {
        assert_eq!(parse(None), Ok(None));
        assert_eq!(parse(Some("5s")), Ok(Some(Duration::from_secs(5))));
        assert_eq!(parse(Some("2")), Ok(Some(Duration::from_secs(2))));
        assert_eq!(parse(Some("500ms")), Ok(Some(Duration::from_millis(500))));
        assert!(parse(Some("0s")).is_err());
        assert!(parse(Some("61s")).is_err());
        assert!(parse(Some("soon")).is_err());
    }

    #[test]
    fn finals() {
        assert!(is_final(br#"{"reqID":7,"msgType":"read","data":{}}"#, "7"));
        assert!(is_final(
            br#"{"reqID":"a7","msgType":"coap_timeout"}"#,
            "a7"
        ));
        assert!(!is_final(br#"{"reqID":7,"msgType":"ack"}"#, "7"));
        assert!(!is_final(br#"{"reqID":7,"msgType":"notify"}"#, "7"));
        assert!(!is_final(br#"{"reqID":8,"msgType":"read"}"#, "7"));
        assert!(!is_final(br#"{"msgType":"register"}"#, "7"));
        assert!(!is_final(b"not json", "7"));
    }
}
