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
use rustls::pki_types::{CertificateDer, UnixTime};
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
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| CertError::BadPem(e.to_string()))?
            .ok_or(CertError::MissingPem("private key"))?;
        x509_cert::Certificate::from_der(&certificate)
            .map_err(|e| CertError::BadCertificate(e.to_string()))?;
        let ca = match ca_pem {
            None => Vec::new(),
            Some(pem) => {
                let all = rustls_pemfile::certs(&mut &pem[..])
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| CertError::BadPem(e.to_string()))?;
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
    match rustls_pemfile::certs(&mut &pem[..]).next() {
        Some(Ok(c)) => Ok(c.as_ref().to_vec()),
        Some(Err(e)) => Err(CertError::BadPem(e.to_string())),
        None => Err(CertError::MissingPem("certificate")),
    }
}
