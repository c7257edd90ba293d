//! Which transport an input came over and what it may do: a datagram decrypted from a
//! DTLS session carries its peer's identity, which may act only for the endpoint names
//! the PSK file's patterns (or the certificate's CN) allow; a registration made over DTLS
//! is never changed, answered or matched from plain CoAP.

use std::sync::Arc;

use super::identity::PeerIdentity;
use super::settings::CoreSettings;

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

    /// The input being handled came with `identity` from now on; the previous one back.
    pub(super) fn swap(
        &mut self,
        identity: Option<Arc<PeerIdentity>>,
    ) -> Option<Arc<PeerIdentity>> {
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
