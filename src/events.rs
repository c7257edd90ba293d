//! The live event feed: everything the gateway publishes to MQTT (registrations,
//! updates, ends, responses, notifications, Sends), handed to in-process listeners
//! (the web console's event stream, the API's `?wait=`) as it is published.
//!
//! Publishing costs one atomic load while nobody listens. With listeners, each
//! event is copied once and queued for every listener whose filter it matches;
//! a listener that falls behind by more than [`QUEUE`] events loses the oldest
//! and is told how many ([`Next::Lost`]): a slow browser never holds up a shard.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

/// Events a listener may have waiting; older ones are dropped beyond it.
pub const QUEUE: usize = 1024;
/// Listeners at most (the API's event streams and waiting requests together).
pub const MAX_LISTENERS: usize = 64;

/// One message the gateway published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Increasing in publication order (across shards: the order they reached the feed).
    pub seq: u64,
    /// Unix time (ms) at publication.
    pub ts_ms: u64,
    pub topic: String,
    /// The endpoint name, read from the topic with the mountpoint template (None when
    /// the mountpoint names no endpoint).
    pub clientid: Option<String>,
    /// The payload's `"msgType"`.
    pub msg_type: Option<String>,
    /// The JSON exactly as published.
    pub payload: Vec<u8>,
}

impl Event {
    /// `{"seq":..,"ts":..,"topic":"..","clientid":"..","msgType":"..","message":<payload>}`;
    /// a payload that is not JSON (the gateway publishes none) goes in as a string.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(96 + self.topic.len() + self.payload.len());
        out.extend_from_slice(b"{\"seq\":");
        crate::json::uint(&mut out, self.seq);
        out.extend_from_slice(b",\"ts\":");
        crate::json::uint(&mut out, self.ts_ms);
        out.push(b',');
        crate::json::key(&mut out, "topic");
        crate::json::string(&mut out, &self.topic);
        out.push(b',');
        crate::json::key(&mut out, "clientid");
        match &self.clientid {
            Some(c) => crate::json::string(&mut out, c),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b',');
        crate::json::key(&mut out, "msgType");
        match &self.msg_type {
            Some(t) => crate::json::string(&mut out, t),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b',');
        crate::json::key(&mut out, "message");
        let mut probe = self.payload.clone();
        if simd_json::to_borrowed_value(&mut probe).is_ok() {
            out.extend_from_slice(&self.payload);
        } else {
            crate::json::string(&mut out, &String::from_utf8_lossy(&self.payload));
        }
        out.push(b'}');
        String::from_utf8(out).unwrap_or_default()
    }
}

/// What [`Subscription::next`] found.
#[derive(Debug)]
pub enum Next {
    Event(Arc<Event>),
    /// This listener fell behind: that many events were skipped before the next one.
    Lost(u64),
    /// Nothing within the timeout.
    Idle,
    /// The gateway is stopping.
    Closed,
}

struct Listener {
    id: u64,
    clientid: Option<String>,
    queue: VecDeque<Arc<Event>>,
    lost: u64,
}

#[derive(Default)]
struct State {
    listeners: Vec<Listener>,
    closed: bool,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    /// Whether anyone listens: the one thing a publisher reads when nobody does.
    active: AtomicBool,
    seq: AtomicU64,
    template: Template,
}

/// The feed; clone the `Arc` to share it between the shards and the API.
pub struct EventFeed {
    shared: Arc<Shared>,
}

impl EventFeed {
    /// `mountpoint`: the configured topic prefix (`lwm2m/${endpoint_name}/`), used to
    /// read the endpoint name back out of a topic.
    pub fn new(mountpoint: &str) -> EventFeed {
        EventFeed {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                ready: Condvar::new(),
                active: AtomicBool::new(false),
                seq: AtomicU64::new(1),
                template: Template::parse(mountpoint),
            }),
        }
    }

    /// Whether anyone listens (publishers may skip building anything otherwise).
    pub fn active(&self) -> bool {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Listens to every event, or to one endpoint's; None when [`MAX_LISTENERS`]
    /// already listen or the feed is closed.
    pub fn subscribe(&self, clientid: Option<&str>) -> Option<Subscription> {
        let mut st = self.shared.state.lock();
        if st.closed || st.listeners.len() >= MAX_LISTENERS {
            return None;
        }
        let id = st.next_id;
        st.next_id += 1;
        st.listeners.push(Listener {
            id,
            clientid: clientid.map(str::to_string),
            queue: VecDeque::new(),
            lost: 0,
        });
        self.shared.active.store(true, Ordering::Relaxed);
        Some(Subscription {
            shared: self.shared.clone(),
            id,
        })
    }

    /// Hands a published message to the listeners whose filter it matches.
    pub fn publish(&self, topic: &str, payload: &[u8]) {
        if !self.active() {
            return;
        }
        let clientid = self.shared.template.endpoint(topic).map(str::to_string);
        let mut st = self.shared.state.lock();
        if !st
            .listeners
            .iter()
            .any(|l| l.clientid.is_none() || l.clientid == clientid)
        {
            return;
        }
        let event = Arc::new(Event {
            seq: self.shared.seq.fetch_add(1, Ordering::Relaxed),
            ts_ms: unix_ms(),
            topic: topic.to_string(),
            clientid,
            msg_type: msg_type(payload),
            payload: payload.to_vec(),
        });
        for l in st.listeners.iter_mut() {
            if l.clientid.is_some() && l.clientid != event.clientid {
                continue;
            }
            if l.queue.len() >= QUEUE {
                l.queue.pop_front();
                l.lost += 1;
            }
            l.queue.push_back(event.clone());
        }
        drop(st);
        self.shared.ready.notify_all();
    }

    /// Ends every subscription ([`Next::Closed`]) and refuses new ones.
    pub fn close(&self) {
        self.shared.state.lock().closed = true;
        self.shared.ready.notify_all();
    }

    /// Listeners now.
    pub fn listeners(&self) -> usize {
        self.shared.state.lock().listeners.len()
    }
}

/// One listener; it stops listening when dropped.
pub struct Subscription {
    shared: Arc<Shared>,
    id: u64,
}

impl Subscription {
    /// The next event for this listener, waiting at most `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock();
        loop {
            if st.closed {
                return Next::Closed;
            }
            let Some(l) = st.listeners.iter_mut().find(|l| l.id == self.id) else {
                return Next::Closed;
            };
            if l.lost > 0 {
                return Next::Lost(std::mem::take(&mut l.lost));
            }
            if let Some(ev) = l.queue.pop_front() {
                return Next::Event(ev);
            }
            if self.shared.ready.wait_until(&mut st, deadline).timed_out() {
                return Next::Idle;
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.listeners.retain(|l| l.id != self.id);
        if st.listeners.is_empty() {
            self.shared.active.store(false, Ordering::Relaxed);
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The payload's top-level `"msgType"` string, if it is a JSON object with one.
fn msg_type(payload: &[u8]) -> Option<String> {
    use simd_json::prelude::*;
    let mut bytes = payload.to_vec();
    let v = simd_json::to_borrowed_value(&mut bytes).ok()?;
    v.get_str("msgType").map(str::to_string)
}

/// The mountpoint as literal pieces and placeholders, to read a topic's endpoint name.
#[derive(Debug)]
struct Template {
    /// Literal text, then (placeholder, literal) pairs.
    head: String,
    parts: Vec<(String, String)>,
}

impl Template {
    fn parse(mountpoint: &str) -> Template {
        let mut head = String::new();
        let mut parts: Vec<(String, String)> = Vec::new();
        let mut rest = mountpoint;
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            let lit = &rest[..start];
            match parts.last_mut() {
                Some((_, tail)) => tail.push_str(lit),
                None => head.push_str(lit),
            }
            parts.push((rest[start + 2..start + len].to_string(), String::new()));
            rest = &rest[start + len + 1..];
        }
        match parts.last_mut() {
            Some((_, tail)) => tail.push_str(rest),
            None => head.push_str(rest),
        }
        Template { head, parts }
    }

    /// The value of `${endpoint_name}` (or `${clientid}`, the same in LwM2M) in `topic`.
    fn endpoint<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let mut at = topic.strip_prefix(self.head.as_str())?;
        let mut found = None;
        for (name, lit) in &self.parts {
            // A value ends at the next literal text (or at the next '/' when the
            // placeholder is followed by another one).
            let end = if lit.is_empty() {
                at.find('/').unwrap_or(at.len())
            } else {
                at.find(lit.as_str())?
            };
            let value = &at[..end];
            if name == "endpoint_name" || (name == "clientid" && found.is_none()) {
                found = Some(value);
            }
            at = &at[end + lit.len()..];
        }
        found.filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_read_from_the_topic_with_the_mountpoint() {
        let t = Template::parse("lwm2m/${endpoint_name}/");
        assert_eq!(t.endpoint("lwm2m/ep-1/up/resp"), Some("ep-1"));
        assert_eq!(t.endpoint("other/ep-1/up/resp"), None);
        let t = Template::parse("site/${username}/dev-${clientid}/");
        assert_eq!(t.endpoint("site/u1/dev-ep9/up/notify"), Some("ep9"));
        let t = Template::parse("lwm2m/");
        assert_eq!(t.endpoint("lwm2m/up/resp"), None);
    }

    #[test]
    fn nobody_listening_costs_nothing_and_a_listener_sees_its_endpoint_only() {
        let feed = EventFeed::new("lwm2m/${endpoint_name}/");
        feed.publish("lwm2m/a/up/resp", br#"{"msgType":"read"}"#);
        assert!(!feed.active());
        let mut all = feed.subscribe(None).unwrap();
        let mut only_b = feed.subscribe(Some("b")).unwrap();
        feed.publish("lwm2m/a/up/resp", br#"{"msgType":"read","reqID":1}"#);
        feed.publish("lwm2m/b/up/notify", br#"{"msgType":"notify"}"#);
        let Next::Event(e) = all.next(Duration::ZERO) else {
            panic!("no event")
        };
        assert_eq!(e.clientid.as_deref(), Some("a"));
        assert_eq!(e.msg_type.as_deref(), Some("read"));
        assert!(
            matches!(all.next(Duration::ZERO), Next::Event(e) if e.clientid.as_deref() == Some("b"))
        );
        assert!(matches!(all.next(Duration::ZERO), Next::Idle));
        assert!(
            matches!(only_b.next(Duration::ZERO), Next::Event(e) if e.msg_type.as_deref() == Some("notify"))
        );
        assert!(matches!(only_b.next(Duration::ZERO), Next::Idle));
        drop(all);
        drop(only_b);
        assert!(!feed.active());
    }

    #[test]
    fn a_listener_that_falls_behind_loses_the_oldest_and_is_told() {
        let feed = EventFeed::new("lwm2m/${endpoint_name}/");
        let mut sub = feed.subscribe(None).unwrap();
        for i in 0..QUEUE + 5 {
            feed.publish("lwm2m/a/up/notify", format!("{{\"seq\":{i}}}").as_bytes());
        }
        assert!(matches!(sub.next(Duration::ZERO), Next::Lost(5)));
        let Next::Event(e) = sub.next(Duration::ZERO) else {
            panic!("no event")
        };
        assert_eq!(e.payload, b"{\"seq\":5}");
        feed.close();
        assert!(matches!(sub.next(Duration::ZERO), Next::Closed));
        assert!(feed.subscribe(None).is_none());
    }

    #[test]
    fn the_event_json_embeds_the_message() {
        let e = Event {
            seq: 7,
            ts_ms: 1000,
            topic: "lwm2m/a/up/resp".into(),
            clientid: Some("a".into()),
            msg_type: Some("read".into()),
            payload: br#"{"msgType":"read"}"#.to_vec(),
        };
        assert_eq!(
            e.to_json(),
            r#"{"seq":7,"ts":1000,"topic":"lwm2m/a/up/resp","clientid":"a","msgType":"read","message":{"msgType":"read"}}"#
        );
    }

    #[test]
    fn listeners_are_bounded() {
        let feed = EventFeed::new("lwm2m/");
        let subs: Vec<_> = (0..MAX_LISTENERS)
            .map(|_| feed.subscribe(None).unwrap())
            .collect();
        assert!(feed.subscribe(None).is_none());
        drop(subs);
        assert_eq!(feed.listeners(), 0);
    }
}
