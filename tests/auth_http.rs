//! The HTTP authentication client pool against real HTTP(S) servers that the
//! tests run on loopback: EMQX's answers, placeholders as the server sees
//! them, keep-alive, timeouts, a server that is down, run-time
//! reconfiguration and TLS.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use lwm2m_gateway::auth::{AuthOutcome, AuthRequest, AuthService};
use lwm2m_gateway::config::{AuthSsl, Authentication, HttpMethod};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use simd_json::prelude::*;

/// A request as the test server received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does with a request.
struct Reply {
    delay: Duration,
    bytes: Vec<u8>,
    /// Close the connection after answering (without saying so).
    close: bool,
}

fn reply(status: &str, body: &str) -> Reply {
    let mut bytes = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        bytes.push_str("Content-Type: application/json\r\n");
    }
    bytes.push_str("\r\n");
    bytes.push_str(body);
    Reply {
        delay: Duration::ZERO,
        bytes: bytes.into_bytes(),
        close: false,
    }
}

fn allow() -> Reply {
    reply("200 OK", r#"{"result":"allow","is_superuser":false}"#)
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct TestServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

impl TestServer {
    fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> TestServer {
        Self::start_with(handler, None)
    }

    fn start_with(
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Handler = Arc::new(handler);
        let (a, s, st) = (accepted.clone(), seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let (h, s, tls) = (handler.clone(), s.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    None => serve(conn, &h, &s),
                    Some(cfg) => {
                        let c = rustls::ServerConnection::new(cfg).unwrap();
                        serve(rustls::StreamOwned::new(c, conn), &h, &s)
                    }
                });
            }
        });
        TestServer {
            addr,
            accepted,
            seen,
            stop,
        }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves requests on one connection until it closes.
fn serve(mut conn: impl Read + Write, handler: &Handler, seen: &Mutex<Vec<Seen>>) {
    let mut buf = Vec::new();
    loop {
        let (req, used) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).to_string(),
                        )
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                if buf.len() >= n + len {
                    break (
                        Seen {
                            method: r.method.unwrap().to_string(),
                            target: r.path.unwrap().to_string(),
                            headers,
                            body: buf[n..n + len].to_vec(),
                        },
                        n + len,
                    );
                }
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..used);
        seen.lock().unwrap().push(req.clone());
        let r = handler(&req);
        std::thread::sleep(r.delay);
        if conn.write_all(&r.bytes).is_err() || conn.flush().is_err() || r.close {
            return;
        }
    }
}

fn cfg(url: String) -> Authentication {
    Authentication {
        enable: true,
        url,
        pool_size: 2,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..Authentication::default()
    }
}

fn device(ep: &str) -> AuthRequest {
    AuthRequest {
        endpoint_name: ep.to_string(),
        clientid: ep.to_string(),
        username: String::new(),
        password: String::new(),
        peerhost: "192.0.2.7".to_string(),
    }
}

/// Submits and waits for the outcome.
fn ask(svc: &AuthService, req: AuthRequest) -> AuthOutcome {
    let (tx, rx) = mpsc::channel();
    svc.submit(
        req,
        Box::new(move |o| {
            let _ = tx.send(o);
        }),
    )
    .expect("queue has room");
    rx.recv_timeout(Duration::from_secs(30))
        .expect("an outcome")
}

#[test]
fn emqx_answers() {
    let server = TestServer::start(|r| {
        match r.target.as_str() {
        "/allow" => allow(),
        "/allow204" => reply("204 No Content", ""),
        "/deny" => reply("200 OK", r#"{"result":"deny"}"#),
        "/ignore" => reply("200 OK", r#"{"result":"ignore"}"#),
        "/forbidden" => reply("403 Forbidden", r#"{"result":"allow"}"#),
        "/500" => reply("500 Internal Server Error", "boom"),
        "/chunked" => Reply {
            delay: Duration::ZERO,
            bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n\
                     5\r\n{\"res\r\n0d;ext=1\r\nult\":\"allow\"}\r\n0\r\n\r\n"
                .to_vec(),
            close: false,
        },
        "/form" => Reply {
            delay: Duration::ZERO,
            bytes: b"HTTP/1.1 200 OK\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 12\r\n\r\nresult=allow".to_vec(),
            close: false,
        },
        "/garbage" => Reply {
            delay: Duration::ZERO,
            bytes: b"this is not http\r\n\r\n".to_vec(),
            close: true,
        },
        "/notjson" => reply("200 OK", "allow"),
        "/close-delimited" => Reply {
            delay: Duration::ZERO,
            bytes: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"result\":\"allow\"}".to_vec(),
            close: true,
        },
        _ => reply("404 Not Found", ""),
    }
    });
    let svc = AuthService::start(&cfg(server.url("http", "/allow")));
    assert!(svc.enabled());
    let cases = [
        ("/allow", AuthOutcome::Allow),
        ("/allow204", AuthOutcome::Allow),
        ("/deny", AuthOutcome::Deny),
        ("/ignore", AuthOutcome::Deny),
        ("/forbidden", AuthOutcome::Deny),
        ("/500", AuthOutcome::Deny),
        ("/chunked", AuthOutcome::Allow),
        ("/form", AuthOutcome::Allow),
        ("/close-delimited", AuthOutcome::Allow),
        ("/nothing-here", AuthOutcome::Deny),
    ];
    for (path, want) in &cases {
        svc.reconfigure(&cfg(server.url("http", path)));
        assert_eq!(&ask(&svc, device("ep1")), want, "{path}");
    }
    for path in ["/garbage", "/notjson"] {
        svc.reconfigure(&cfg(server.url("http", path)));
        let got = ask(&svc, device("ep1"));
        assert!(matches!(got, AuthOutcome::Error(_)), "{path}: {got:?}");
    }
    let s = svc.stats();
    assert_eq!((s.allow, s.deny, s.error, s.timeout), (5, 5, 2, 0), "{s:?}");
    assert_eq!(s.latency_us.count, 12);
}

#[test]
fn slow_server_times_out() {
    let server = TestServer::start(|_| Reply {
        delay: Duration::from_millis(1500),
        ..allow()
    });
    let mut c = cfg(server.url("http", "/slow"));
    c.request_timeout = Duration::from_millis(200);
    let svc = AuthService::start(&c);
    match ask(&svc, device("slow")) {
        AuthOutcome::Error(e) => assert!(e.contains("timeout"), "{e}"),
        other => panic!("{other:?}"),
    }
    let s = svc.stats();
    assert_eq!((s.timeout, s.error, s.allow), (1, 0, 0), "{s:?}");
    // The timed-out connection is not reused for the next request.
    c.request_timeout = Duration::from_secs(10);
    svc.reconfigure(&c);
    assert_eq!(ask(&svc, device("patient")), AuthOutcome::Allow);
}

#[test]
fn server_down_is_an_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let svc = AuthService::start(&cfg(format!("http://127.0.0.1:{port}/auth")));
    for _ in 0..3 {
        match ask(&svc, device("ep")) {
            AuthOutcome::Error(e) => assert!(e.contains("connect"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    let s = svc.stats();
    assert_eq!((s.error, s.allow, s.deny), (3, 0, 0), "{s:?}");
    // A URL the client cannot use also ends in Error, not a panic.
    svc.reconfigure(&cfg("gopher://nowhere".into()));
    assert!(matches!(ask(&svc, device("ep")), AuthOutcome::Error(_)));
}

fn tricky() -> AuthRequest {
    AuthRequest {
        endpoint_name: "urn:imei:35 & \"q\"/x".to_string(),
        clientid: "cid?=1".to_string(),
        username: "user ü".to_string(),
        password: "p@ss&w=rd\r\nX-Evil: 1".to_string(),
        peerhost: "10.20.30.40".to_string(),
    }
}

fn query_pairs(target: &str) -> Vec<(String, String)> {
    let q = target.split_once('?').map_or("", |(_, q)| q);
    q.split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn placeholders_post_json() {
    let server = TestServer::start(|_| allow());
    let mut c = cfg(server.url("http", "/auth/${endpoint_name}?cid=${clientid}&fixed=1"));
    c.headers = BTreeMap::from([
        ("content-type".into(), "application/json".into()),
        ("X-User".into(), "u=${username}".into()),
        ("X-Pass".into(), "${password}".into()),
    ]);
    c.body = BTreeMap::from([
        ("clientid".into(), "${clientid}".into()),
        ("username".into(), "${username}".into()),
        ("password".into(), "${password}".into()),
        ("peerhost".into(), "${peerhost}".into()),
        ("ep".into(), "ep:${endpoint_name}".into()),
        ("other".into(), "${unknown}".into()),
    ]);
    let svc = AuthService::start(&c);
    assert_eq!(ask(&svc, tricky()), AuthOutcome::Allow);
    let seen = server.seen();
    let r = &seen[0];
    let t = tricky();
    assert_eq!(r.method, "POST");
    let (path, _) = r.target.split_once('?').unwrap();
    assert_eq!(decode(path), format!("/auth/{}", t.endpoint_name));
    assert_eq!(
        query_pairs(&r.target),
        vec![
            ("cid".into(), t.clientid.clone()),
            ("fixed".into(), "1".into())
        ]
    );
    assert_eq!(r.header("x-user"), Some("u=user ü"));
    // CR/LF never reach a header: no header injection.
    assert_eq!(r.header("x-pass"), Some("p@ss&w=rdX-Evil: 1"));
    assert_eq!(r.header("x-evil"), None);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("host"), Some(server.addr.to_string().as_str()));
    let mut body = r.body.clone();
    let v = simd_json::to_owned_value(&mut body).unwrap();
    assert_eq!(v["clientid"].as_str(), Some(t.clientid.as_str()));
    assert_eq!(v["username"].as_str(), Some(t.username.as_str()));
    assert_eq!(v["password"].as_str(), Some(t.password.as_str()));
    assert_eq!(v["peerhost"].as_str(), Some("10.20.30.40"));
    assert_eq!(
        v["ep"].as_str(),
        Some(format!("ep:{}", t.endpoint_name).as_str())
    );
    assert_eq!(v["other"].as_str(), Some("${unknown}"));
}

#[test]
fn placeholders_post_form_and_get() {
    let server = TestServer::start(|_| allow());
    let mut c = cfg(server.url("http", "/form"));
    c.headers = BTreeMap::from([(
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    )]);
    c.body = BTreeMap::from([
        ("clientid".into(), "${clientid}".into()),
        ("password".into(), "${password}".into()),
        ("ep".into(), "${endpoint_name}".into()),
    ]);
    let svc = AuthService::start(&c);
    assert_eq!(ask(&svc, tricky()), AuthOutcome::Allow);

    c.method = HttpMethod::Get;
    c.url = server.url("http", "/get?peer=${peerhost}");
    c.headers = BTreeMap::from([("accept".into(), "application/json".into())]);
    svc.reconfigure(&c);
    assert_eq!(ask(&svc, tricky()), AuthOutcome::Allow);

    let t = tricky();
    let seen = server.seen();
    let form = &seen[0];
    assert_eq!(form.method, "POST");
    assert_eq!(
        form.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let body = format!("/?{}", String::from_utf8(form.body.clone()).unwrap());
    assert_eq!(
        query_pairs(&body),
        vec![
            ("clientid".into(), t.clientid.clone()),
            ("ep".into(), t.endpoint_name.clone()),
            ("password".into(), t.password.clone()),
        ]
    );
    let get = &seen[1];
    assert_eq!(get.method, "GET");
    assert!(get.body.is_empty());
    assert_eq!(get.header("content-length"), None);
    assert_eq!(get.header("accept"), Some("application/json"));
    assert!(get.target.starts_with("/get?"), "{}", get.target);
    assert_eq!(
        query_pairs(&get.target),
        vec![
            ("peer".into(), t.peerhost.clone()),
            ("clientid".into(), t.clientid.clone()),
            ("ep".into(), t.endpoint_name.clone()),
            ("password".into(), t.password.clone()),
        ]
    );
}

#[test]
fn keep_alive_pool() {
    let server = TestServer::start(|_| allow());
    let mut c = cfg(server.url("http", "/auth"));
    c.pool_size = 3;
    let svc = AuthService::start(&c);
    let n = 300;
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let tx = tx.clone();
        svc.submit(
            device(&format!("ep{i}")),
            Box::new(move |o| {
                let _ = tx.send(o);
            }),
        )
        .unwrap();
    }
    for _ in 0..n {
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)).unwrap(),
            AuthOutcome::Allow
        );
    }
    assert_eq!(server.seen().len(), n);
    let accepted = server.accepted.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&accepted),
        "{accepted} connections for {n} requests"
    );
    let s = svc.stats();
    assert_eq!(s.allow, n as u64);
    assert_eq!(s.connects, accepted as u64);
}

#[test]
fn reconnects_when_the_server_closes_kept_alive_connections() {
    // The server closes every connection after one answer without saying so:
    // the client must notice and reconnect without failing a request.
    let server = TestServer::start(|_| Reply {
        close: true,
        ..allow()
    });
    let mut c = cfg(server.url("http", "/auth"));
    c.pool_size = 1;
    let svc = AuthService::start(&c);
    for i in 0..20 {
        assert_eq!(
            ask(&svc, device(&format!("ep{i}"))),
            AuthOutcome::Allow,
            "request {i}"
        );
        if i % 2 == 0 {
            // Give the close time to arrive sometimes, and sometimes not.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(svc.stats().error, 0);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 20);
}

#[test]
fn reconfigure_at_run_time() {
    let allow_server = TestServer::start(|_| allow());
    let deny_server = TestServer::start(|_| reply("200 OK", r#"{"result":"deny"}"#));

    // Disabled: everything is allowed without asking.
    let svc = AuthService::start(&Authentication::default());
    assert!(!svc.enabled());
    assert_eq!(ask(&svc, device("a")), AuthOutcome::Allow);
    assert_eq!(svc.stats().bypassed, 1);

    let mut c = cfg(deny_server.url("http", "/"));
    svc.reconfigure(&c);
    assert!(svc.enabled());
    assert_eq!(svc.config(), c);
    assert_eq!(ask(&svc, device("b")), AuthOutcome::Deny);

    c.url = allow_server.url("http", "/");
    c.pool_size = 5;
    svc.reconfigure(&c);
    assert_eq!(ask(&svc, device("c")), AuthOutcome::Allow);

    c.pool_size = 1;
    svc.reconfigure(&c);
    for i in 0..10 {
        assert_eq!(ask(&svc, device(&format!("d{i}"))), AuthOutcome::Allow);
    }

    c.enable = false;
    svc.reconfigure(&c);
    assert!(!svc.enabled());
    assert_eq!(ask(&svc, device("e")), AuthOutcome::Allow);
    let s = svc.stats();
    assert_eq!((s.bypassed, s.deny, s.allow), (2, 1, 11), "{s:?}");
    assert_eq!(deny_server.seen().len(), 1);
    assert_eq!(allow_server.seen().len(), 11);
}

#[test]
fn full_queue_refuses() {
    let server = TestServer::start(|_| Reply {
        delay: Duration::from_millis(300),
        ..allow()
    });
    let mut c = cfg(server.url("http", "/"));
    c.pool_size = 1;
    let svc = AuthService::with_queue_capacity(&c, 1);
    let (tx, rx) = mpsc::channel();
    let mut refused = 0;
    let mut queued = 0;
    for i in 0..20 {
        let tx = tx.clone();
        match svc.submit(
            device(&format!("ep{i}")),
            Box::new(move |o| drop(tx.send(o))),
        ) {
            Ok(()) => queued += 1,
            Err(req) => {
                assert_eq!(req.endpoint_name, format!("ep{i}"));
                refused += 1;
            }
        }
    }
    assert!(refused >= 1, "a queue of one took {queued} requests");
    for _ in 0..queued {
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)).unwrap(),
            AuthOutcome::Allow
        );
    }
    assert_eq!(svc.stats().rejected, refused);
}

fn self_signed(dir: &std::path::Path) -> Arc<rustls::ServerConfig> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl must be installed");
    assert!(status.success());
    let certs = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    )
}

#[test]
fn https_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        |r| {
            if r.body.windows(4).any(|w| w == b"good") {
                allow()
            } else {
                reply("200 OK", r#"{"result":"deny"}"#)
            }
        },
        Some(self_signed(dir.path())),
    );
    let mut c = cfg(server.url("https", "/auth"));
    c.ssl = AuthSsl {
        enable: true,
        verify: "verify_none".into(),
    };
    c.pool_size = 1;
    let svc = AuthService::start(&c);
    for _ in 0..5 {
        assert_eq!(ask(&svc, device("good")), AuthOutcome::Allow);
    }
    assert_eq!(ask(&svc, device("bad")), AuthOutcome::Deny);
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        1,
        "one kept-alive TLS connection"
    );

    // Verifying against the public roots rejects the self-signed certificate.
    c.ssl.verify = "verify_peer".into();
    svc.reconfigure(&c);
    match ask(&svc, device("good")) {
        AuthOutcome::Error(e) => assert!(e.contains("TLS") || e.contains("connect"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(svc.stats().error, 1);
}
