//! Failed handshakes, told to the operator: a device configured with a wrong key or a
//! rejected certificate otherwise only moves a counter. Each failure is logged at debug
//! with the peer and the identity it presented; at info at most [`BURST`] per [`WINDOW`]
//! (per shard), then one line saying how many more were not shown, so a flood of bad
//! handshakes cannot flood the log.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::session::Fatal;

/// Info lines per window.
pub(crate) const BURST: u32 = 5;
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct FailureLog {
    window_start: Option<Instant>,
    shown: u32,
    hidden: u64,
}

impl FailureLog {
    /// Logs one failed handshake of `peer`, which presented PSK `identity` (or a
    /// certificate with common name `cn`), failing for `why`. Returns whether it went to
    /// info.
    pub(crate) fn handshake_failed(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        identity: Option<&[u8]>,
        cn: Option<&str>,
        why: &Fatal,
    ) -> bool {
        let identity = identity.map_or_else(|| "-".to_string(), shown);
        let cn = cn.unwrap_or("-");
        let reason = reason(why, identity != "-");
        tracing::debug!(%peer, %identity, %cn, error = ?why, "DTLS handshake failed: {reason}");
        if self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW)
        {
            if self.hidden > 0 {
                tracing::info!(
                    hidden = self.hidden,
                    "more DTLS handshakes failed in the last {}s than were logged (see \
                     lwm2m_dtls_handshakes_failed_total; each is logged at debug)",
                    WINDOW.as_secs()
                );
            }
            self.window_start = Some(now);
            self.shown = 0;
            self.hidden = 0;
        }
        if self.shown < BURST {
            self.shown += 1;
            tracing::info!(%peer, %identity, %cn, "DTLS handshake failed: {reason}");
            true
        } else {
            self.hidden += 1;
            false
        }
    }
}

/// What went wrong, in the operator's words.
fn reason(why: &Fatal, psk: bool) -> String {
    match why {
        Fatal::Dtls(dimpl::Error::CryptoError(_)) if psk => {
            "the peer's encrypted handshake message did not decrypt: its pre-shared key for \
             this identity differs from psk_file's"
                .to_string()
        }
        Fatal::Dtls(dimpl::Error::CryptoError(_)) => {
            "the peer's encrypted handshake message did not decrypt".to_string()
        }
        Fatal::Cert(e) => format!("certificate rejected: {e}"),
        Fatal::NoIdentity => {
            "no usable identity (PSK identity not UTF-8, or no certificate)".into()
        }
        Fatal::Dtls(e) => format!("{e:?}"),
        Fatal::Output => "internal output buffer limit".into(),
    }
}

/// An identity as text: UTF-8 as is, other bytes as hex, control characters escaped.
fn shown(id: &[u8]) -> String {
    match std::str::from_utf8(id) {
        Ok(s) => s.escape_debug().to_string(),
        Err(_) => id.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_a_burst_per_window_goes_to_info() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        let peer = "127.0.0.1:5000".parse().unwrap();
        let why = Fatal::NoIdentity;
        let at = |log: &mut FailureLog, s: u64| {
            log.handshake_failed(t0 + Duration::from_secs(s), peer, Some(b"dev"), None, &why)
        };
        let first: Vec<bool> = (0..BURST + 3).map(|_| at(&mut log, 1)).collect();
        assert_eq!(first.iter().filter(|b| **b).count(), BURST as usize);
        assert_eq!(log.hidden, 3);
        assert!(!at(&mut log, 30), "same window");
        assert!(at(&mut log, 1 + WINDOW.as_secs()), "a new window");
        assert_eq!(log.hidden, 0);
    }

    #[test]
    fn identities_are_shown_safely() {
        assert_eq!(shown(b"sensor-0002"), "sensor-0002");
        assert_eq!(shown(b"a\nb"), "a\\nb");
        assert_eq!(shown(&[0xff, 0x01]), "ff01");
    }
}
