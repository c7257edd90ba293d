//! Which transport an input came over and what it may do: a datagram decrypted from a
//! DTLS session carries its peer's identity, which may act only for the endpoint names
//! the PSK file's patterns (or the certificate's CN) allow; a registration made over DTLS
//! is never changed, answered or matched from plain CoAP.

use std::net::SocketAddr;
use std::sync::Arc;

use super::identity::PeerIdentity;
use super::settings::CoreSettings;
use super::ShardCore;

/// The transport of the input being handled, and whether a registration made over DTLS
/// lives on this shard.
#[derive(Debug, Default)]
pub(super) struct InputSecurity {
    /// The DTLS identity of the datagram being handled (None: plain UDP).
    identity: Option<Arc<PeerIdentity>>,
    /// A registration made over DTLS has lived on this shard (from then on plain
    /// datagrams are checked against the addresses of such registrations).
    any_secure: bool,
}

impl InputSecurity {
    /// The DTLS identity of the input being handled.
    pub(super) fn identity(&self) -> Option<&Arc<PeerIdentity>> {
        self.identity.as_ref()
    }

    /// The input came over DTLS.
    pub(super) fn secure(&self) -> bool {
        self.identity.is_some()
    }

    /// Whether a registration made over DTLS lives (or lived) on this shard.
    pub(super) fn any_secure(&self) -> bool {
        self.any_secure
    }

    /// A registration arrived here (`secure`: made over DTLS).
    pub(super) fn registration_here(&mut self, secure: bool) {
        self.any_secure |= secure;
    }

    fn swap(&mut self, identity: Option<Arc<PeerIdentity>>) -> Option<Arc<PeerIdentity>> {
        std::mem::replace(&mut self.identity, identity)
    }

    /// May the current input act for endpoint `name` (whose registration was made over
    /// DTLS: `secure_registration`)? Plain UDP may act only for registrations made over
    /// plain UDP; a PSK identity only for the names its patterns allow; a certificate
    /// only for its CN when client certificates are verified.
    pub(super) fn may_act(
        &self,
        settings: &CoreSettings,
        name: &str,
        secure_registration: bool,
    ) -> Result<(), String> {
        match self.identity.as_deref() {
            None if secure_registration => {
                Err("this registration was made over DTLS; plain CoAP may not change it".into())
            }
            None => Ok(()),
            Some(PeerIdentity::Psk(id)) => match &settings.dtls_psk {
                Some(store) if !store.may_register(id, name) => Err(format!(
                    "PSK identity {id:?} may not register endpoint {name:?}"
                )),
                _ => Ok(()),
            },
            Some(PeerIdentity::Cert { cn }) => {
                if settings.dtls_require_cn && cn != name {
                    Err(format!(
                        "certificate CN {cn:?} is not the endpoint name {name:?}"
                    ))
                } else {
                    Ok(())
                }
            }
            Some(PeerIdentity::Anonymous) => Ok(()),
        }
    }
}

impl ShardCore {
    /// Runs `f` as the handling of an input with `identity` (None: plain CoAP):
    /// identity checks use it and the datagrams written meanwhile are marked for
    /// encryption.
    pub(super) fn with_identity<R>(
        &mut self,
        identity: Option<Arc<PeerIdentity>>,
        f: impl FnOnce(&mut Self) -> R,
    ) -> R {
        let secure = identity.is_some();
        let prev = self.security.swap(identity);
        let prev_secure = std::mem::replace(&mut self.out.secure_input, secure);
        let r = f(self);
        self.security.swap(prev);
        self.out.secure_input = prev_secure;
        r
    }

    /// The DTLS session of `peer` ended (idle, error, alert, or replaced by a new
    /// handshake that may belong to another identity). A registration made over
    /// DTLS at that address gets nothing until a session of an identity allowed to
    /// act for it speaks for it again: its commands wait in its queue (TTL and
    /// `max_queued` apply), `mheaders.ttl = 0` commands are refused.
    pub(super) fn secure_session_closed(&mut self, _now: u64, peer: SocketAddr) {
        let Some(slot) = self.table.find_peer(&peer) else {
            return;
        };
        if let Some(ep) = self.table.get_mut(slot) {
            if ep.secure && !ep.session_lost {
                ep.session_lost = true;
                self.stats.dtls_sessions_lost += 1;
            }
        }
    }

    /// True when the current registration of `name` (here or on another shard) was
    /// made over DTLS.
    pub(super) fn name_is_secure(&self, name: &str) -> bool {
        self.cluster.name_is_secure(name)
            || self
                .table
                .find_name(name)
                .and_then(|s| self.table.get(s))
                .is_some_and(|e| e.secure)
    }

    /// True when `peer` is the address of a registration made over DTLS.
    pub(super) fn secure_peer(&self, peer: &SocketAddr) -> bool {
        self.table
            .find_peer(peer)
            .and_then(|s| self.table.get(s))
            .is_some_and(|e| e.secure)
    }

    /// May the current input's DTLS identity act for endpoint `name`?
    pub(super) fn identity_may_act(
        &self,
        name: &str,
        secure_registration: bool,
    ) -> Result<(), String> {
        self.security
            .may_act(&self.settings, name, secure_registration)
    }
}
