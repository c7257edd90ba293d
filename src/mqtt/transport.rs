//! Byte transport of one broker connection: plain TCP or rustls TLS, both over a non-blocking
//! mio `TcpStream` (edge-triggered: read and write until `WouldBlock`).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Plaintext handed to rustls per call (it encrypts into its own buffer).
const TLS_CHUNK: usize = 64 * 1024;

/// Result of a read pass.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadStatus {
    /// The socket has nothing more for now.
    Drained,
    /// The budget ran out: call again without waiting for an event.
    More,
    /// The peer closed the stream.
    Eof,
}

pub(crate) enum Transport {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
}

pub(crate) struct TlsStream {
    sock: TcpStream,
    conn: ClientConnection,
}

impl Transport {
    pub(super) fn tls(sock: TcpStream, config: Arc<ClientConfig>, host: &str) -> io::Result<Self> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(Transport::Tls(Box::new(TlsStream { sock, conn })))
    }

    pub(super) fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Tcp(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    /// Appends what the socket has to `buf`, at most about `budget` bytes.
    pub(super) fn read_into(
        &mut self,
        buf: &mut BytesMut,
        scratch: &mut [u8],
        budget: usize,
    ) -> io::Result<ReadStatus> {
        match self {
            Transport::Tcp(s) => read_plain(s, buf, scratch, budget),
            Transport::Tls(t) => t.read_into(buf, scratch, budget),
        }
    }

    /// Writes from the front of `buf` until it is empty or the socket would block.
    pub(super) fn write_from(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => write_plain(s, buf),
            Transport::Tls(t) => t.write_from(buf),
        }
    }

    /// True while bytes wait inside the transport itself (TLS records not yet on the socket).
    pub(super) fn has_unsent(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            Transport::Tls(t) => t.conn.wants_write(),
        }
    }

    /// Starts an orderly TLS close (close_notify); a no-op for TCP.
    pub(super) fn close(&mut self) {
        if let Transport::Tls(t) = self {
            t.conn.send_close_notify();
        }
    }
}

fn read_plain(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    scratch: &mut [u8],
    budget: usize,
) -> io::Result<ReadStatus> {
    let mut got = 0;
    loop {
        if got >= budget {
            return Ok(ReadStatus::More);
        }
        match s.read(scratch) {
            Ok(0) => return Ok(ReadStatus::Eof),
            Ok(n) => {
                buf.extend_from_slice(&scratch[..n]);
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn write_plain(s: &mut TcpStream, buf: &mut BytesMut) -> io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl TlsStream {
    fn read_into(
        &mut self,
        buf: &mut BytesMut,
        scratch: &mut [u8],
        budget: usize,
    ) -> io::Result<ReadStatus> {
        let mut got = 0;
        loop {
            if got >= budget {
                return Ok(ReadStatus::More);
            }
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => return Ok(ReadStatus::Eof),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            loop {
                match self.conn.reader().read(scratch) {
                    Ok(0) => return Ok(ReadStatus::Eof),
                    Ok(n) => {
                        buf.extend_from_slice(&scratch[..n]);
                        got += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }

    fn write_from(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        loop {
            if self.conn.wants_write() {
                match self.conn.write_tls(&mut self.sock) {
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            if buf.is_empty() {
                return Ok(());
            }
            let n = buf.len().min(TLS_CHUNK);
            let written = self.conn.writer().write(&buf[..n])?;
            if written == 0 {
                // rustls buffers are full (handshake still running): wait for the socket.
                return Ok(());
            }
            buf.advance(written);
        }
    }
}

/// The rustls client configuration: the CA certificates of `ca_file` (PEM) if given, else the
/// webpki roots. Uses the ring provider explicitly (no process-wide default needed).
pub(crate) fn tls_config(ca_file: Option<&Path>) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                io::Error::new(e.kind(), format!("reading CA file {}: {e}", path.display()))
            })?;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed PEM in {}: {e}", path.display()),
                    )
                })?;
                roots.add(cert).map_err(io::Error::other)?;
                added += 1;
            }
            if added == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no PEM certificate in {}", path.display()),
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
