//! Certificate mode: the server's ECDSA certificate and key (`certfile`,
//! `keyfile`), and the optional CA (`cafile`) that client certificates must
//! be issued by.
//!
//! - The server key must be ECDSA P-256 or P-384 (PKCS#8 or SEC1 PEM, as
//!   `openssl ecparam -genkey` writes); the suites are ECDHE-ECDSA with
//!   AES-GCM or ChaCha20-Poly1305 (what dimpl offers; not AES-CCM-8).
//! - With a `cafile`, every client must present a certificate, which is
//!   verified with webpki against the CA certificates of the file (signature,
//!   validity period at the wall-clock time, basic constraints, and the
//!   client-auth extended key usage when the certificate has one). The peer
//!   sends only its leaf, so the client certificate must be issued directly
//!   by a certificate of `cafile` (put intermediates in `cafile`). The
//!   subject's CN becomes the identity (required: a certificate without a
//!   CN is rejected).
//! - Without a `cafile`, clients are not asked for a certificate: the
//!   session is encrypted and the server authenticated, but the device is
//!   not ([`PeerIdentity::Anonymous`](super::PeerIdentity::Anonymous)).

use std::fmt;
use std::path::Path;

use dimpl::DtlsCertificate;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_cert::der::Decode;

/// Why a certificate configuration could not be loaded, or a client
/// certificate was rejected.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM input holds no certificate / no private key.
    #[error("no {0} found in the PEM input")]
    MissingPem(&'static str),
    /// A PEM input could not be parsed.
    #[error("malformed PEM ({0})")]
    BadPem(String),
    /// A certificate could not be parsed.
    #[error("malformed certificate: {0}")]
    BadCertificate(String),
    /// The client certificate does not chain to the CA, is expired, or is
    /// not usable for client authentication.
    #[error("client certificate not trusted: {0}")]
    Untrusted(String),
    /// The client certificate has no subject common name.
    #[error("client certificate has no subject CN")]
    NoCommonName,
}

/// The certificate-mode configuration of a DTLS listener.
#[derive(Clone)]
pub struct CertConfig {
    certificate: DtlsCertificate,
    ca: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for CertConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertConfig")
            .field("certificate_len", &self.certificate.certificate.len())
            .field("ca_certificates", &self.ca.len())
            .finish_non_exhaustive()
    }
}

impl CertConfig {
    /// Loads `certfile` (the first certificate is the server's), `keyfile`
    /// and the optional `cafile` (every certificate in it is trusted).
    pub fn load(certfile: &Path, keyfile: &Path, cafile: Option<&Path>) -> Result<Self, CertError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| CertError::Io {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let cert = read("certfile", certfile)?;
        let key = read("keyfile", keyfile)?;
        let ca = match cafile {
            Some(p) => Some(read("cafile", p)?),
            None => None,
        };
        Self::from_pem(&cert, &key, ca.as_deref())
    }

    /// Like [`load`](Self::load) from PEM text in memory.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, CertError> {
        let certificate = first_cert(cert_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_error("private key", e))?;
        x509_cert::Certificate::from_der(&certificate)
            .map_err(|e| CertError::BadCertificate(e.to_string()))?;
        let ca = match ca_pem {
            None => Vec::new(),
            Some(pem) => {
                let all = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem_error("CA certificate", e))?;
                if all.is_empty() {
                    return Err(CertError::MissingPem("CA certificate"));
                }
                for c in &all {
                    webpki::anchor_from_trusted_cert(c)
                        .map_err(|e| CertError::BadCertificate(format!("CA: {e}")))?;
                }
                all
            }
        };
        Ok(CertConfig {
            certificate: DtlsCertificate {
                certificate,
                private_key: key.secret_der().to_vec(),
            },
            ca,
        })
    }

    /// True when clients must present a certificate (a CA is configured).
    pub fn requires_client_cert(&self) -> bool {
        !self.ca.is_empty()
    }

    /// The server certificate and key as dimpl takes them.
    pub(crate) fn dtls_certificate(&self) -> &DtlsCertificate {
        &self.certificate
    }

    /// Verifies a client's leaf certificate (DER) against the CA at the
    /// current wall-clock time and returns its subject CN.
    pub fn verify_client(&self, der: &[u8]) -> Result<String, CertError> {
        self.verify_client_at(der, UnixTime::now())
    }

    /// [`verify_client`](Self::verify_client) at a given time.
    pub fn verify_client_at(&self, der: &[u8], time: UnixTime) -> Result<String, CertError> {
        let anchors = self
            .ca
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect::<Vec<_>>();
        let leaf = CertificateDer::from(der);
        let ee = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| CertError::BadCertificate(e.to_string()))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            time,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| CertError::Untrusted(e.to_string()))?;
        common_name(der)?.ok_or(CertError::NoCommonName)
    }
}

/// The subject CN of a DER certificate (`None` when it has none).
pub fn common_name(der: &[u8]) -> Result<Option<String>, CertError> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let cn = cert
        .tbs_certificate()
        .subject()
        .common_name()
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    Ok(cn.map(|s| s.value().into_owned()))
}

fn first_cert(pem: &[u8]) -> Result<Vec<u8>, CertError> {
    match CertificateDer::pem_slice_iter(pem).next() {
        Some(Ok(c)) => Ok(c.as_ref().to_vec()),
        Some(Err(e)) => Err(pem_error("certificate", e)),
        None => Err(CertError::MissingPem("certificate")),
    }
}

/// A PEM parsing error as a [`CertError`] that says what was being read and what is
/// wrong in words (the markers as text, not bytes).
fn pem_error(what: &'static str, e: pem::Error) -> CertError {
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    match e {
        pem::Error::NoItemsFound => CertError::MissingPem(what),
        pem::Error::MissingSectionEnd { end_marker } => CertError::BadPem(format!(
            "{what}: no \"-----END {}-----\" line",
            text(&end_marker)
        )),
        pem::Error::IllegalSectionStart { line } => {
            CertError::BadPem(format!("{what}: bad BEGIN line \"{}\"", text(&line)))
        }
        pem::Error::Base64Decode(e) => CertError::BadPem(format!("{what}: bad base64 ({e})")),
        e => CertError::BadPem(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    // A throwaway P-256 key made for this test only (`openssl ecparam -genkey`), the
    // same key as PKCS#8 (`openssl pkcs8 -topk8 -nocrypt`), and a self-signed
    // certificate of it.
    const SEC1_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIA1dQGtODB9lKlFfx3PUr8cweh4m0C9IEL1Rncje6E2NoAoGCCqGSM49
AwEHoUQDQgAEKB+FN6k8s1gVkap1v79vQkbkbpRP4OwS/lrNvZlU/Hl8VntKLEsW
ZcF8unPgmUilqd5gNJFBCsnsuug+w0ToSQ==
-----END EC PRIVATE KEY-----
";
    const PKCS8_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgDV1Aa04MH2UqUV/H
c9SvxzB6HibQL0gQvVGdyN7oTY2hRANCAAQoH4U3qTyzWBWRqnW/v29CRuRulE/g
7BL+Ws29mVT8eXxWe0osSxZlwXy6c+CZSKWp3mA0kUEKyey66D7DROhJ
-----END PRIVATE KEY-----
";
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBfzCCASWgAwIBAgIUWVeEwI9rfjDVmVl1bJZwYANEdQYwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJdW5pdC10ZXN0MCAXDTI2MTIwNjExNDExOVoYDzIxMjYxMTEy
MTE0MTE5WjAUMRIwEAYDVQQDDAl1bml0LXRlc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQoH4U3qTyzWBWRqnW/v29CRuRulE/g7BL+Ws29mVT8eXxWe0osSxZl
wXy6c+CZSKWp3mA0kUEKyey66D7DROhJo1MwUTAdBgNVHQ4EFgQUbySAaqeri/xg
1dRz0P36i7ZCju0wHwYDVR0jBBgwFoAUbySAaqeri/xg1dRz0P36i7ZCju0wDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA/fdrPVm2Bybclvh+9jTV
pzOXZlejF593RLAN/YWIDdECIAszsLNEiBmT0ZvHj46b+WV+iVgKHOgU6plHk+8K
e1Zu
-----END CERTIFICATE-----
";

    /// The DER inside a one-section PEM text.
    fn der_of(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    /// Loads `CERT` with `key` as the key file.
    fn load_with_key(key: &str) -> Result<CertConfig, CertError> {
        let dir = tempfile::tempdir().unwrap();
        let (certfile, keyfile) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&certfile, CERT).unwrap();
        std::fs::write(&keyfile, key).unwrap();
        CertConfig::load(&certfile, &keyfile, None)
    }

    #[test]
    fn key_file_in_pkcs8_and_sec1_forms() {
        for key in [PKCS8_KEY, SEC1_KEY] {
            let c = load_with_key(key).unwrap();
            assert_eq!(c.dtls_certificate().private_key, der_of(key));
            assert_eq!(c.dtls_certificate().certificate, der_of(CERT));
            assert!(!c.requires_client_cert());
        }
        // Other sections around the key are skipped.
        let c = load_with_key(&format!("{CERT}{SEC1_KEY}")).unwrap();
        assert_eq!(c.dtls_certificate().private_key, der_of(SEC1_KEY));
    }

    #[test]
    fn garbage_key_files_are_clear_errors() {
        let missing = "no private key found in the PEM input";
        for garbage in ["", "not a key at all\n", CERT] {
            let e = load_with_key(garbage).unwrap_err();
            assert!(matches!(e, CertError::MissingPem("private key")), "{e:?}");
            assert_eq!(e.to_string(), missing);
        }
        let no_end = &PKCS8_KEY[..PKCS8_KEY.find("-----END").unwrap()];
        let e = load_with_key(no_end).unwrap_err();
        assert!(matches!(e, CertError::BadPem(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "malformed PEM (private key: no \"-----END PRIVATE KEY-----\" line)"
        );
        let bad_b64 = "-----BEGIN EC PRIVATE KEY-----\n!!!!\n-----END EC PRIVATE KEY-----\n";
        let e = load_with_key(bad_b64).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("malformed PEM (private key: bad base64"),
            "{e}"
        );
        let bad_begin = "-----BEGIN PRIVATE KEY----\nAAAA\n-----END PRIVATE KEY-----\n";
        let e = load_with_key(bad_begin).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed PEM (private key: bad BEGIN line \"-----BEGIN PRIVATE KEY----\")"
        );
    }

    #[test]
    fn garbage_certificates_are_clear_errors() {
        let e = CertConfig::from_pem(b"junk", PKCS8_KEY.as_bytes(), None).unwrap_err();
        assert_eq!(e.to_string(), "no certificate found in the PEM input");
        let e =
            CertConfig::from_pem(CERT.as_bytes(), PKCS8_KEY.as_bytes(), Some(b"junk")).unwrap_err();
        assert_eq!(e.to_string(), "no CA certificate found in the PEM input");
        let cut = &CERT[..CERT.find("-----END").unwrap()];
        let e = CertConfig::from_pem(cut.as_bytes(), PKCS8_KEY.as_bytes(), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed PEM (certificate: no \"-----END CERTIFICATE-----\" line)"
        );
    }
}
