//! DTLS devices: the PSK client configuration (dimpl, DTLS 1.2,
//! `TLS_PSK_WITH_AES_128_CCM_8` as LwM2M mandates), the key, and the PSK file the
//! gateway's `[listeners.dtls.<name>] psk_file` reads (`identity:hexkey` lines;
//! the identity is the endpoint name, so each device may register only itself).

use crate::RunOpts;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

/// Decodes an even-length, non-empty hex string.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The endpoint name of the device with global address index `i`.
pub fn endpoint(o: &RunOpts, i: u32) -> String {
    format!("{}{i}", o.prefix)
}

/// Writes `name:hexkey` for every device of the run (`--register` devices from
/// `--devices-offset`, named `--prefix` + index).
pub fn write_psk_file(o: &RunOpts, path: &Path) -> io::Result<()> {
    let key = key(o)?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "# lwm2m-loadgen fleet: identity = endpoint name")?;
    for i in 0..o.register as u32 {
        writeln!(f, "{}:{hex}", endpoint(o, o.devices_offset + i))?;
    }
    f.flush()
}

/// The pre-shared key of `--psk-key`.
pub fn key(o: &RunOpts) -> io::Result<Vec<u8>> {
    decode_hex(&o.psk_key).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "--psk-key must be an even number of hex digits (1..=64 bytes)",
        )
    })
}

struct Key(Vec<u8>);

impl dimpl::PskResolver for Key {
    fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

/// The default crypto provider cut down to what a PSK client uses: the
/// TLS_PSK_WITH_AES_128_CCM_8 suite and no key-exchange groups. Each device needs
/// its own `Config` (the identity is part of it), and `Config::build` runs the
/// provider's self-tests; with every ECDH group in the provider those cost
/// milliseconds of key exchanges per device, which made the load generator, not
/// the gateway, the limit of a DTLS storm.
fn psk_provider() -> dimpl::crypto::CryptoProvider {
    use dimpl::crypto::{CryptoProvider, Dtls12CipherSuite};
    static PROVIDER: std::sync::OnceLock<CryptoProvider> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = dimpl::crypto::rust_crypto::default_provider();
            let psk: Vec<_> = p
                .cipher_suites
                .iter()
                .copied()
                .filter(|cs| cs.suite() == Dtls12CipherSuite::PSK_AES128_CCM_8)
                .collect();
            p.cipher_suites = Box::leak(psk.into_boxed_slice());
            p.kx_groups = &[];
            p
        })
        .clone()
}

/// A client configuration for one identity.
pub fn client_config(identity: &[u8], key: &[u8]) -> io::Result<Arc<dimpl::Config>> {
    dimpl::Config::builder()
        .with_crypto_provider(psk_provider())
        .dtls13_cipher_suites(&[])
        .dtls12_cipher_suites(&[dimpl::crypto::Dtls12CipherSuite::PSK_AES128_CCM_8])
        .with_psk_client(identity.to_vec(), Arc::new(Key(key.to_vec())))
        .build()
        .map(Arc::new)
        .map_err(|e| io::Error::other(format!("DTLS configuration: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex(""), None);
        assert_eq!(decode_hex("zz"), None);
    }

    #[test]
    fn psk_file_lists_the_fleet() {
        let dir = std::env::temp_dir().join(format!("lg-psk-{}", std::process::id()));
        let o = RunOpts {
            register: 3,
            devices_offset: 10,
            prefix: "d".into(),
            psk_key: "0102".into(),
            ..RunOpts::default()
        };
        write_psk_file(&o, &dir).unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        // The gateway reads it: each identity has the key and may register only itself.
        let store = lwm2m_gateway::dtls::PskStore::load(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        let lines: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["d10:0102", "d11:0102", "d12:0102"]);
        assert_eq!(store.lookup(b"d11"), Some(vec![1, 2]));
        assert!(store.may_register("d12", "d12"));
        assert!(!store.may_register("d12", "d10"));
    }

    #[test]
    fn a_client_config_builds() {
        assert!(client_config(b"lg0", &[1, 2, 3, 4]).is_ok());
    }
}
