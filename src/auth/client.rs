//! A small HTTP/1.1 client for the authentication requests: one kept-alive
//! connection per worker, plain TCP or rustls, a deadline on every step.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
};

/// Largest response head and body accepted from the authentication server.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;

/// Where requests go, parsed from `authentication.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub tls: bool,
    /// Host name or IP address (without IPv6 brackets).
    pub host: String,
    pub port: u16,
    /// `Host:` header value.
    pub host_header: String,
    /// Path and query, placeholders not yet substituted; starts with `/`.
    pub path: String,
}

pub(crate) fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = strip_prefix_ci(url, "http://") {
        (false, r)
    } else if let Some(r) = strip_prefix_ci(url, "https://") {
        (true, r)
    } else {
        return Err(format!(
            "authentication.url {url:?}: must start with http:// or https://"
        ));
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = path.split('#').next().unwrap_or("");
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if authority.contains('@') {
        return Err(format!(
            "authentication.url {url:?}: user information is not supported (use headers)"
        ));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| format!("authentication.url {url:?}: unclosed '['"))?;
        let port = match &v6[end + 1..] {
            "" => default_port,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("authentication.url {url:?}: bad port"))?,
        };
        (v6[..end].to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("authentication.url {url:?}: bad port {p:?}"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() || host.contains(['$', '{', '}', ' ']) {
        return Err(format!("authentication.url {url:?}: bad host"));
    }
    let host_header = authority.to_string();
    Ok(Target {
        tls,
        host,
        port,
        host_header,
        path,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, p: &str) -> Option<&'a str> {
    (s.len() >= p.len() && s.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
        .then(|| &s[p.len()..])
}

/// The rustls client configuration for `authentication.ssl.verify`.
pub(crate) fn tls_config(verify_peer: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if verify_peer {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `verify = "verify_none"`: any certificate is accepted, but handshake
/// signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection could be made (the request was never sent).
    Connect(String),
    /// A deadline passed.
    Timeout(String),
    /// The connection broke. `retry`: it was a reused connection and the
    /// server answered nothing, so the request can be sent again on a new one.
    Io { retry: bool, msg: String },
    /// The answer is not HTTP as we know it.
    Bad(String),
}

impl Failure {
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, Failure::Timeout(_))
    }
    pub(crate) fn message(&self) -> String {
        match self {
            Failure::Connect(m) => format!("connect: {m}"),
            Failure::Timeout(m) => format!("timeout: {m}"),
            Failure::Io { msg, .. } => format!("connection: {msg}"),
            Failure::Bad(m) => format!("bad response: {m}"),
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// Whether the connection can carry another request.
    pub keep_alive: bool,
}

/// One connection to the authentication server.
pub(crate) struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    /// A previous exchange completed on it.
    reused: bool,
}

fn remaining(deadline: Instant, what: &str) -> Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(1) {
        Err(Failure::Timeout(what.to_string()))
    } else {
        Ok(left)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Conn {
    /// Connects (and completes the TLS handshake) within `timeout`.
    pub(crate) fn connect(
        target: &Target,
        tls: Option<&Arc<ClientConfig>>,
        timeout: Duration,
    ) -> Result<Conn, Failure> {
        let deadline = Instant::now() + timeout;
        let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| Failure::Connect(format!("resolving {}: {e}", target.host)))?
            .collect();
        let mut last = Failure::Connect(format!("{}: no address", target.host));
        let mut tcp = None;
        for addr in addrs {
            let left = remaining(deadline, "connect")?;
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) if is_timeout(&e) => last = Failure::Timeout(format!("connect to {addr}")),
                Err(e) => last = Failure::Connect(format!("{addr}: {e}")),
            }
        }
        let Some(mut tcp) = tcp else { return Err(last) };
        let _ = tcp.set_nodelay(true);
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(cfg) => {
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|e| Failure::Connect(format!("server name {}: {e}", target.host)))?;
                let mut conn = ClientConnection::new(cfg.clone(), name)
                    .map_err(|e| Failure::Connect(format!("TLS: {e}")))?;
                while conn.is_handshaking() {
                    let left = remaining(deadline, "TLS handshake")?;
                    let _ = tcp.set_read_timeout(Some(left));
                    let _ = tcp.set_write_timeout(Some(left));
                    match conn.complete_io(&mut tcp) {
                        Ok((0, 0)) if conn.is_handshaking() => {
                            return Err(Failure::Connect("TLS handshake: connection closed".into()))
                        }
                        Ok(_) => {}
                        Err(e) if is_timeout(&e) => {
                            return Err(Failure::Timeout("TLS handshake".into()))
                        }
                        Err(e) => return Err(Failure::Connect(format!("TLS handshake: {e}"))),
                    }
                }
                Stream::Tls(Box::new(StreamOwned::new(conn, tcp)))
            }
        };
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(1024),
            reused: false,
        })
    }

    /// Whether an idle kept-alive connection still looks usable (the server
    /// has not closed it).
    pub(crate) fn looks_alive(&self) -> bool {
        let tcp = self.stream.tcp();
        if tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let r = tcp.peek(&mut b);
        let ok = tcp.set_nonblocking(false).is_ok();
        ok && match r {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            // Unsolicited bytes: a TLS record (e.g. a session ticket) is
            // fine; plain HTTP garbage is not.
            Ok(n) => n > 0 && matches!(self.stream, Stream::Tls(_)),
        }
    }

    pub(crate) fn close(self) {
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
    }

    /// Sends `request` and reads the answer, everything before `deadline`.
    pub(crate) fn exchange(
        &mut self,
        request: &[u8],
        deadline: Instant,
    ) -> Result<Response, Failure> {
        let reused = self.reused;
        self.buf.clear();
        let left = remaining(deadline, "sending request")?;
        let _ = self.stream.tcp().set_write_timeout(Some(left));
        if let Err(e) = self
            .stream
            .write_all(request)
            .and_then(|_| self.stream.flush())
        {
            return Err(if is_timeout(&e) {
                Failure::Timeout("sending request".into())
            } else {
                Failure::Io {
                    retry: reused,
                    msg: e.to_string(),
                }
            });
        }
        let resp = self.read_response(deadline, reused)?;
        self.reused = true;
        Ok(resp)
    }

    /// Reads more bytes into `buf`. `Ok(false)` at end of stream.
    fn fill(&mut self, deadline: Instant, reused: bool) -> Result<bool, Failure> {
        let left = remaining(deadline, "waiting for the response")?;
        let _ = self.stream.tcp().set_read_timeout(Some(left));
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if is_timeout(&e) => Err(Failure::Timeout("waiting for the response".into())),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(Failure::Io {
                retry: reused && self.buf.is_empty(),
                msg: e.to_string(),
            }),
        }
    }

    fn fill_or_eof(&mut self, deadline: Instant, reused: bool, what: &str) -> Result<(), Failure> {
        if self.fill(deadline, reused)? {
            Ok(())
        } else if self.buf.is_empty() {
            Err(Failure::Io {
                retry: reused,
                msg: "connection closed before the response".into(),
            })
        } else {
            Err(Failure::Bad(format!("connection closed in the {what}")))
        }
    }

    fn read_response(&mut self, deadline: Instant, reused: bool) -> Result<Response, Failure> {
        // The head (skipping any 1xx interim answers).
        let (
            status,
            version,
            head_len,
            content_length,
            chunked,
            close,
            keep_alive_hdr,
            content_type,
        ) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = r.code.unwrap_or(0);
                    if (100..200).contains(&status) {
                        self.buf.drain(..n);
                        continue;
                    }
                    let mut content_length: Option<usize> = None;
                    let (mut chunked, mut close, mut ka) = (false, false, false);
                    let mut content_type = None;
                    for h in r.headers.iter() {
                        let v = String::from_utf8_lossy(h.value);
                        let v = v.trim();
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let n: usize = v
                                .parse()
                                .map_err(|_| Failure::Bad(format!("Content-Length {v:?}")))?;
                            if content_length.is_some_and(|c| c != n) {
                                return Err(Failure::Bad("conflicting Content-Length".into()));
                            }
                            content_length = Some(n);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = v
                                .to_ascii_lowercase()
                                .split(',')
                                .any(|t| t.trim() == "chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            let v = v.to_ascii_lowercase();
                            close |= v.split(',').any(|t| t.trim() == "close");
                            ka |= v.split(',').any(|t| t.trim() == "keep-alive");
                        } else if h.name.eq_ignore_ascii_case("content-type") {
                            content_type = Some(v.to_ascii_lowercase());
                        }
                    }
                    break (
                        status,
                        r.version.unwrap_or(1),
                        n,
                        content_length,
                        chunked,
                        close,
                        ka,
                        content_type,
                    );
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(Failure::Bad("response head too large".into()));
                    }
                    self.fill_or_eof(deadline, reused, "response head")?;
                }
                Err(e) => return Err(Failure::Bad(format!("{e}"))),
            }
        };
        let mut keep_alive = if version == 0 { keep_alive_hdr } else { !close };
        self.buf.drain(..head_len);
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            self.read_chunked(deadline, reused)?
        } else if let Some(n) = content_length {
            if n > MAX_BODY {
                return Err(Failure::Bad(format!("body of {n} bytes")));
            }
            while self.buf.len() < n {
                self.fill_or_eof(deadline, reused, "response body")?;
            }
            let rest = self.buf.split_off(n);
            std::mem::replace(&mut self.buf, rest)
        } else {
            // Delimited by the end of the connection.
            keep_alive = false;
            while self.fill(deadline, reused)? {
                if self.buf.len() > MAX_BODY {
                    return Err(Failure::Bad("response body too large".into()));
                }
            }
            std::mem::take(&mut self.buf)
        };
        if !self.buf.is_empty() {
            // Bytes after the answer: the stream is out of step.
            keep_alive = false;
        }
        Ok(Response {
            status,
            content_type,
            body,
            keep_alive,
        })
    }

    fn read_chunked(&mut self, deadline: Instant, reused: bool) -> Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = loop {
                if let Some(i) = find_crlf(&self.buf[pos..]) {
                    break pos + i;
                }
                if self.buf.len() - pos > 1024 {
                    return Err(Failure::Bad("chunk size line too long".into()));
                }
                self.fill_or_eof(deadline, reused, "chunked body")?;
            };
            let line = std::str::from_utf8(&self.buf[pos..line_end])
                .map_err(|_| Failure::Bad("chunk size".into()))?;
            let hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(hex, 16)
                .map_err(|_| Failure::Bad(format!("chunk size {hex:?}")))?;
            pos = line_end + 2;
            if size == 0 {
                // Trailers, up to an empty line.
                loop {
                    let end = loop {
                        if let Some(i) = find_crlf(&self.buf[pos..]) {
                            break pos + i;
                        }
                        if self.buf.len() - pos > MAX_HEAD {
                            return Err(Failure::Bad("trailers too large".into()));
                        }
                        self.fill_or_eof(deadline, reused, "chunked body")?;
                    };
                    let empty = end == pos;
                    pos = end + 2;
                    if empty {
                        self.buf.drain(..pos);
                        return Ok(body);
                    }
                }
            }
            if body.len() + size > MAX_BODY {
                return Err(Failure::Bad("response body too large".into()));
            }
            while self.buf.len() < pos + size + 2 {
                self.fill_or_eof(deadline, reused, "chunked body")?;
            }
            body.extend_from_slice(&self.buf[pos..pos + size]);
            if &self.buf[pos + size..pos + size + 2] != b"\r\n" {
                return Err(Failure::Bad("chunk not followed by CRLF".into()));
            }
            pos += size + 2;
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/auth?x=${clientid}").unwrap();
        assert_eq!(
            t,
            Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8080,
                host_header: "127.0.0.1:8080".into(),
                path: "/auth?x=${clientid}".into()
            }
        );
        let t = parse_url("HTTPS://auth.example.com").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("auth.example.com", 443, "/")
        );
        assert_eq!(t.host_header, "auth.example.com");
        let t = parse_url("http://[::1]:81?q=1#frag").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 81, "/?q=1")
        );
        assert_eq!(t.host_header, "[::1]:81");
        let t = parse_url("http://[::1]/a").unwrap();
        assert_eq!((t.port, t.host_header.as_str()), (80, "[::1]"));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:99999/").is_err());
        assert!(parse_url("http://u:p@h/").is_err());
        assert!(parse_url("http://${clientid}/").is_err());
        assert!(parse_url("").is_err());
    }
}
