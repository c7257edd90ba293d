//! The management API's own counters, appended to `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::Writer;

/// Written by the event loop, read by `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ApiStats {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    /// No request began within the idle timeout.
    pub idle_timeout: AtomicU64,
    /// A request was not complete within the request timeout (answered 408).
    pub request_timeout: AtomicU64,
    /// A response was not read within the write timeout.
    pub write_timeout: AtomicU64,
    /// Closed at the connection limit to admit a new connection.
    pub evicted: AtomicU64,
    /// Answered 503: every worker busy and their queue full, or the limit
    /// reached with every connection at a worker.
    pub busy: AtomicU64,
}

impl ApiStats {
    pub(super) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn write(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut w = Writer::new(out);
        w.counter(
            "lwm2m_api_connections_total",
            "Management API connections accepted.",
            &[],
            get(&self.accepted),
        );
        w.gauge(
            "lwm2m_api_connections_open",
            "Management API connections open.",
            &[],
            get(&self.open),
        );
        for (reason, c) in [
            ("idle_timeout", &self.idle_timeout),
            ("request_timeout", &self.request_timeout),
            ("write_timeout", &self.write_timeout),
            ("evicted", &self.evicted),
            ("busy", &self.busy),
        ] {
            w.counter(
                "lwm2m_api_connections_closed_total",
                "Management API connections the server closed, by reason: idle_timeout (no \
                 request began within 5 s), request_timeout (a request incomplete 10 s after \
                 its first byte, answered 408), write_timeout (a response unread for 10 s), \
                 evicted (closed at the connection limit to admit a new one), busy (answered \
                 503, every worker busy).",
                &[("reason", reason)],
                get(c),
            );
        }
    }
}
