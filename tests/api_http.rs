//! The management API over real HTTP on loopback, against a fake gateway:
//! every route, credentials, paging and filters, the command JSON built for
//! read/write/observe, lookup's answers, and hostile input.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use base64::Engine as _;
use lwm2m_gateway::api::{
    Admin, ApiServer, ClientInfo, ClientStats, LookupAnswer, MAX_CONNECTIONS, REQUEST_TIMEOUT,
    WORKERS,
};
use simd_json::prelude::*;
use simd_json::OwnedValue;

const KEY: &str = "admin";
const SECRET: &str = "s3cret";

#[derive(Default)]
struct Fake {
    clients: Mutex<Vec<ClientInfo>>,
    commands: Mutex<Vec<(String, String)>>,
    config: Mutex<String>,
    auth: Mutex<String>,
    unhealthy: AtomicBool,
    /// While true, `clients()` waits (a gateway slow to answer); `held` counts
    /// the callers waiting.
    hold: (Mutex<bool>, Condvar),
    held: AtomicUsize,
}

impl Fake {
    fn set_hold(&self, on: bool) {
        *self.hold.0.lock().unwrap() = on;
        self.hold.1.notify_all();
    }
}

impl Admin for Fake {
    fn clients(&self) -> Vec<ClientInfo> {
        let mut on = self.hold.0.lock().unwrap();
        if *on {
            self.held.fetch_add(1, Ordering::SeqCst);
            while *on {
                on = self.hold.1.wait(on).unwrap();
            }
        }
        drop(on);
        self.clients.lock().unwrap().clone()
    }
    fn client(&self, clientid: &str) -> Option<ClientInfo> {
        self.clients
            .lock()
            .unwrap()
            .iter()
            .find(|c| c.clientid == clientid)
            .cloned()
    }
    fn kick(&self, clientid: &str) -> bool {
        let mut c = self.clients.lock().unwrap();
        let before = c.len();
        c.retain(|c| c.clientid != clientid);
        c.len() != before
    }
    fn command(&self, clientid: &str, command_json: Vec<u8>) -> Result<(), String> {
        if clientid == "refuses" {
            return Err("endpoint is sleeping".into());
        }
        let s = String::from_utf8(command_json).map_err(|e| e.to_string())?;
        self.commands
            .lock()
            .unwrap()
            .push((clientid.to_string(), s));
        Ok(())
    }
    fn lookup(&self, clientid: &str, path: &str, action: &str) -> LookupAnswer {
        if self.client(clientid).is_none() {
            return LookupAnswer::NoClient;
        }
        match (path, action) {
            ("/3/0/0", "read") => LookupAnswer::Found {
                code: 0x45,
                content: Some(br#"[{"path":"/3/0/0","value":"ACME"}]"#.to_vec()),
            },
            _ => LookupAnswer::NotReceived,
        }
    }
    fn gateway_config(&self) -> String {
        self.config.lock().unwrap().clone()
    }
    fn update_gateway_config(&self, json: &[u8]) -> Result<String, String> {
        let s = String::from_utf8(json.to_vec()).unwrap();
        if s.contains("mountpoint") {
            return Err("mountpoint cannot change at run time".into());
        }
        *self.config.lock().unwrap() = s.clone();
        Ok(s)
    }
    fn authentication(&self) -> String {
        self.auth.lock().unwrap().clone()
    }
    fn update_authentication(&self, json: &[u8]) -> Result<String, String> {
        let s = String::from_utf8(json.to_vec()).unwrap();
        if s.contains("ftp://") {
            return Err("authentication.url: must start with http:// or https://".into());
        }
        *self.auth.lock().unwrap() = s.clone();
        Ok(s)
    }
    fn metrics(&self, out: &mut String) {
        lwm2m_gateway::metrics::gauge(
            out,
            "lwm2m_endpoints",
            "Registered endpoints.",
            &[],
            self.clients.lock().unwrap().len(),
        );
    }
    fn healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::SeqCst)
    }
    fn node(&self) -> String {
        "gw@test".into()
    }
}

fn client(i: usize) -> ClientInfo {
    ClientInfo {
        clientid: format!("client-{i:02}"),
        endpoint_name: format!(
            "urn:dev:{}:{i:02}",
            if i.is_multiple_of(2) { "even" } else { "odd" }
        ),
        username: if i.is_multiple_of(3) {
            "alice".into()
        } else {
            "bob".into()
        },
        peerhost: format!("10.0.0.{}", i % 4),
        port: 5000 + i as u16,
        lifetime: 60 * (i as u32 + 1),
        lwm2m_version: "1.1".into(),
        binding: "UQ".into(),
        object_list: vec!["/1/0".into(), "/3/0".into()],
        registered_at_ms: 1_700_000_000_000 + i as u64,
        last_seen_ms: 1_700_000_100_000,
        queue_mode: i.is_multiple_of(5),
        secure: false,
        shard: (i % 2) as u16,
        stats: (i == 1).then_some(ClientStats {
            recv_msg: 7,
            send_msg: 5,
            notifications: 3,
            commands: 2,
        }),
        node: None,
    }
}

fn setup(secret: &str) -> (ApiServer, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    *fake.clients.lock().unwrap() = (0..25).map(client).collect();
    *fake.config.lock().unwrap() = r#"{"name":"lwm2m","lifetime_min":"1s"}"#.into();
    *fake.auth.lock().unwrap() = r#"{"enable":false}"#.into();
    let server = ApiServer::start(
        "127.0.0.1:0".parse().unwrap(),
        KEY.into(),
        secret.into(),
        fake.clone(),
    )
    .unwrap();
    (server, fake)
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> OwnedValue {
        let mut b = self.body.clone().into_bytes();
        simd_json::to_owned_value(&mut b).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Reads one response (Content-Length framed) from `s`, keeping extra bytes in `buf`.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Resp {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let status: u16 = lines
                .next()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            let headers: Vec<(String, String)> = lines
                .map(|l| {
                    let (k, v) = l.split_once(':').unwrap();
                    (k.trim().to_ascii_lowercase(), v.trim().to_string())
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            if status == 100 {
                buf.drain(..end + 4);
                continue;
            }
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8(buf[end + 4..end + 4 + len].to_vec()).unwrap();
                buf.drain(..end + 4 + len);
                return Resp {
                    status,
                    headers,
                    body,
                };
            }
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn basic(key: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
    )
}

fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    read_response(&mut s, &mut Vec::new())
}

fn call_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    raw(addr, req.as_bytes())
}

fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Resp {
    call_as(addr, method, path, Some(&basic(KEY, SECRET)), body)
}

const GW: &str = "/api/v5/gateways/lwm2m";

#[test]
fn health_and_metrics_need_no_credentials() {
    let (server, fake) = setup(SECRET);
    let a = server.local_addr();
    let r = call_as(a, "GET", "/health", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"].as_str(), Some("ok"));
    fake.unhealthy.store(true, Ordering::SeqCst);
    assert_eq!(call_as(a, "GET", "/health", None, None).status, 503);

    let r = call_as(a, "GET", "/metrics", None, None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    assert!(
        r.body
            .contains("# TYPE lwm2m_endpoints gauge\nlwm2m_endpoints 25\n"),
        "{}",
        r.body
    );
    // The same exposition, but for the count of connections accepted.
    let without_accepted = |b: &str| {
        b.lines()
            .filter(|l| !l.starts_with("lwm2m_api_connections_total "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        without_accepted(&call_as(a, "GET", "/api/v5/prometheus/stats", None, None).body),
        without_accepted(&r.body)
    );
    assert_eq!(call_as(a, "POST", "/metrics", None, Some("{}")).status, 405);
    // Wrong credentials do not matter on open endpoints.
    assert_eq!(
        call_as(a, "GET", "/metrics", Some("Basic !!!"), None).status,
        200
    );
    server.stop();
}

#[test]
fn credentials() {
    let (server, _) = setup(SECRET);
    let a = server.local_addr();
    let check = |r: Resp| {
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["code"].as_str(), Some("BAD_API_KEY_OR_SECRET"));
        assert!(r.json()["message"].as_str().is_some());
        assert!(r.header("www-authenticate").is_some());
    };
    check(call_as(a, "GET", GW, None, None));
    check(call_as(a, "GET", GW, Some(&basic(KEY, "wrong")), None));
    check(call_as(a, "GET", GW, Some(&basic("root", SECRET)), None));
    check(call_as(
        a,
        "GET",
        GW,
        Some(&basic(KEY, &format!("{SECRET}x"))),
        None,
    ));
    check(call_as(a, "GET", GW, Some("Basic not-base64!"), None));
    check(call_as(
        a,
        "GET",
        GW,
        Some(&format!("Bearer {SECRET}")),
        None,
    ));
    check(call_as(a, "GET", &format!("{GW}/clients"), None, None));
    check(call_as(
        a,
        "DELETE",
        &format!("{GW}/clients/client-01"),
        None,
        None,
    ));
    check(call_as(a, "GET", "/api/v5/unknown", None, None));
    assert_eq!(
        call_as(a, "GET", GW, Some(&basic(KEY, SECRET)), None).status,
        200
    );
    // The scheme name is case-insensitive.
    let lower = basic(KEY, SECRET).replace("Basic", "basic");
    assert_eq!(call_as(a, "GET", GW, Some(&lower), None).status, 200);
    server.stop();

    let (server, _) = setup("");
    let a = server.local_addr();
    let r = call_as(a, "GET", GW, Some(&basic(KEY, "")), None);
    assert_eq!(r.status, 401);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("api.api_secret"),
        "{}",
        r.body
    );
    assert_eq!(call_as(a, "GET", "/health", None, None).status, 200);
}

#[test]
fn gateway_configuration() {
    let (server, fake) = setup(SECRET);
    let a = server.local_addr();
    let r = call(a, "GET", GW, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"].as_str(), Some("lwm2m"));
    assert_eq!(r.header("content-type"), Some("application/json"));

    let body = r#"{"name":"lwm2m","blockwise":{"enable":true,"max_block_size":1024}}"#;
    let r = call(a, "PUT", GW, Some(body));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(*fake.config.lock().unwrap(), body);
    assert_eq!(
        call(a, "GET", GW, None).json()["blockwise"]["max_block_size"].as_u64(),
        Some(1024)
    );

    let r = call(a, "PUT", GW, Some(r#"{"mountpoint":"x/"}"#));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"].as_str(), Some("BAD_REQUEST"));
    assert!(r.json()["message"].as_str().unwrap().contains("mountpoint"));

    // A hand-written body with a missing line-break comma and trailing commas (as in the
    // documented curl example) reaches the gateway repaired.
    let r = call(
        a,
        "PUT",
        GW,
        Some("{\n  \"name\": \"lwm2m\"\n  \"lifetime_min\": \"2s\",\n}"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        *fake.config.lock().unwrap(),
        "{\n  \"name\": \"lwm2m\"\n  ,\"lifetime_min\": \"2s\"\n}"
    );

    let repaired = fake.config.lock().unwrap().clone();
    for bad in ["{", "not json", "[1,2]", "42", "", "[1,\n2,]", "{\"a\" 1}"] {
        let r = call(a, "PUT", GW, Some(bad));
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        assert_eq!(r.json()["code"].as_str(), Some("BAD_REQUEST"));
    }
    assert_eq!(
        *fake.config.lock().unwrap(),
        repaired,
        "bad bodies change nothing"
    );
    let r = call(a, "DELETE", GW, None);
    assert_eq!(r.status, 405);
    assert!(r.header("allow").is_some());
    // The seed's curl: a gateway config PUT larger than 1 KiB with Expect: 100-continue.
    let big = format!(r#"{{"name":"lwm2m","xml_dir":"{}"}}"#, "x".repeat(2000));
    let mut s = connect(a);
    let head = format!(
        "PUT {GW} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        basic(KEY, SECRET),
        big.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(big.as_bytes()).unwrap();
    let r = read_response(&mut s, &mut Vec::new());
    assert_eq!(r.status, 200);
    assert_eq!(*fake.config.lock().unwrap(), big);
}

#[test]
fn authentication_configuration() {
    let (server, fake) = setup(SECRET);
    let a = server.local_addr();
    let path = format!("{GW}/authentication");
    assert_eq!(
        call(a, "GET", &path, None).json()["enable"].as_bool(),
        Some(false)
    );
    let seed = r#"{"method":"post","url":"http://127.0.0.1:8080","headers":{"content-type":"application/json"},
        "body":{"clientid":"${clientid}"},"pool_size":8,"connect_timeout":"5s","request_timeout":"5s",
        "enable_pipelining":100,"ssl":{"enable":false,"verify":"verify_none"},"backend":"http",
        "mechanism":"password_based","enable":true}"#;
    let r = call(a, "PUT", &path, Some(seed));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(*fake.auth.lock().unwrap(), seed);
    assert_eq!(
        call(a, "GET", &path, None).json()["pool_size"].as_u64(),
        Some(8)
    );
    let r = call(a, "PUT", &path, Some(r#"{"url":"ftp://x"}"#));
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("authentication.url"));
    assert_eq!(call(a, "PUT", &path, Some("{bad")).status, 400);
    assert_eq!(
        call(a, "POST", &path, Some(r#"{"enable":false}"#)).status,
        200
    );
    // DELETE removes the authenticator: authentication off.
    assert_eq!(call(a, "DELETE", &path, None).status, 204);
    assert_eq!(call(a, "PATCH", &path, None).status, 405);
}

fn ids(r: &Resp) -> Vec<String> {
    r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["clientid"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn clients_paging_and_filters() {
    let (server, _) = setup(SECRET);
    let a = server.local_addr();
    let list = |q: &str| {
        let r = call(a, "GET", &format!("{GW}/clients{q}"), None);
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r
    };
    let r = list("");
    let meta = &r.json()["meta"];
    assert_eq!(
        (
            meta["page"].as_u64(),
            meta["limit"].as_u64(),
            meta["count"].as_u64(),
            meta["hasnext"].as_bool()
        ),
        (Some(1), Some(100), Some(25), Some(false))
    );
    assert_eq!(ids(&r).len(), 25);
    assert_eq!(ids(&r)[0], "client-00", "sorted by clientid");

    let r = list("?page=1&limit=10");
    assert_eq!(
        ids(&r),
        (0..10)
            .map(|i| format!("client-{i:02}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(r.json()["meta"]["hasnext"].as_bool(), Some(true));
    let r = list("?page=3&limit=10");
    assert_eq!(
        ids(&r),
        (20..25)
            .map(|i| format!("client-{i:02}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(r.json()["meta"]["hasnext"].as_bool(), Some(false));
    assert_eq!(r.json()["meta"]["count"].as_u64(), Some(25));
    assert!(ids(&list("?page=4&limit=10")).is_empty());
    assert_eq!(
        list("?page=2&limit=5").json()["meta"]["page"].as_u64(),
        Some(2)
    );

    // One client in full (EMQX's names plus the LwM2M ones).
    let r = list("?clientid=client-01");
    let c = &r.json()["data"][0];
    assert_eq!(c["node"].as_str(), Some("gw@test"));
    assert_eq!(c["endpoint_name"].as_str(), Some("urn:dev:odd:01"));
    assert_eq!(c["username"].as_str(), Some("bob"));
    assert_eq!(c["proto_name"].as_str(), Some("LwM2M"));
    assert_eq!(c["proto_ver"].as_str(), Some("1.1"));
    assert_eq!(c["ip_address"].as_str(), Some("10.0.0.1"));
    assert_eq!(c["port"].as_u64(), Some(5001));
    assert_eq!(c["lifetime"].as_u64(), Some(120));
    assert_eq!(c["connected"].as_bool(), Some(true));
    assert_eq!(
        c["connected_at"].as_str(),
        Some("2023-11-14T22:13:20.001+00:00")
    );
    assert_eq!(c["binding"].as_str(), Some("UQ"));
    assert_eq!(c["recv_msg"].as_u64(), Some(7));
    assert_eq!(c["notifications"].as_u64(), Some(3));
    assert_eq!(c["object_list"][1].as_str(), Some("/3/0"));
    // Without stats, no counters.
    assert!(list("?clientid=client-02").json()["data"][0]
        .get("recv_msg")
        .is_none());

    let count = |q: &str| list(q).json()["meta"]["count"].as_u64().unwrap();
    assert_eq!(count("?endpoint_name=urn:dev:even:04"), 1);
    assert_eq!(count("?endpoint_name=urn%3Adev%3Aeven%3A04"), 1);
    assert_eq!(count("?endpoint_name=urn:dev:even"), 0);
    assert_eq!(count("?like_endpoint_name=even"), 13);
    assert_eq!(count("?like_endpoint_name=odd:1"), 5);
    assert_eq!(count("?like_clientid=client-1"), 10);
    assert_eq!(count("?username=alice"), 9);
    assert_eq!(count("?like_username=li"), 9);
    assert_eq!(count("?ip_address=10.0.0.3"), 6);
    assert_eq!(count("?gte_lifetime=1200"), 6);
    assert_eq!(count("?lte_lifetime=120"), 2);
    assert_eq!(count("?gte_lifetime=120&lte_lifetime=300&username=bob"), 3);
    assert_eq!(
        count("?like_endpoint_name=odd&ip_address=10.0.0.1&limit=1"),
        6
    );
    assert_eq!(
        ids(&list("?like_endpoint_name=odd&limit=2&page=2")),
        vec!["client-05", "client-07"]
    );

    for bad in [
        "?page=0",
        "?limit=0",
        "?limit=100000",
        "?page=x",
        "?gte_lifetime=-1",
        "?lte_lifetime=abc",
    ] {
        let r = call(a, "GET", &format!("{GW}/clients{bad}"), None);
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["code"].as_str(), Some("BAD_REQUEST"));
    }
    assert_eq!(
        call(a, "POST", &format!("{GW}/clients"), Some("{}")).status,
        405
    );
}

#[test]
fn inspect_and_kick() {
    let (server, fake) = setup(SECRET);
    let a = server.local_addr();
    let r = call(a, "GET", &format!("{GW}/clients/client-03"), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["clientid"].as_str(), Some("client-03"));
    let r = call(a, "GET", &format!("{GW}/clients/nobody"), None);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"].as_str(), Some("NOT_FOUND"));

    let r = call(a, "DELETE", &format!("{GW}/clients/client-03"), None);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(
        call(a, "DELETE", &format!("{GW}/clients/client-03"), None).status,
        404
    );
    assert_eq!(
        call(a, "GET", &format!("{GW}/clients/client-03"), None).status,
        404
    );
    assert_eq!(fake.clients.lock().unwrap().len(), 24);
    assert_eq!(
        call(a, "GET", &format!("{GW}/clients"), None).json()["meta"]["count"].as_u64(),
        Some(24)
    );

    // Client ids are percent-decoded path segments.
    fake.clients.lock().unwrap().push(ClientInfo {
        clientid: "a/b c".into(),
        ..ClientInfo::default()
    });
    assert_eq!(
        call(a, "GET", &format!("{GW}/clients/a%2Fb%20c"), None).status,
        200
    );
    assert_eq!(
        call(a, "DELETE", &format!("{GW}/clients/a%2Fb%20c"), None).status,
        204
    );
    assert_eq!(
        call(a, "PUT", &format!("{GW}/clients/client-04"), Some("{}")).status,
        405
    );
}

/// The composite operations: `data` from the body (a JSON object, as on MQTT) or, for
/// reads and observes, from `paths`; `enable=false` cancels a composite observation.
#[test]
fn composite_device_commands() {
    let (server, fake) = setup(SECRET);
    let a = server.local_addr();
    let base = format!("{GW}/clients/client-01");

    let r = call(
        a,
        "POST",
        &format!("{base}/read-composite?paths=/3/0/9,1/0/1"),
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let (id, c) = last_command(&fake);
    assert_eq!(id, "client-01");
    assert_eq!(c["msgType"].as_str(), Some("read-composite"));
    assert_eq!(
        c["data"]["paths"],
        simd_json::json!(["/3/0/9", "1/0/1"]),
        "passed on as given: the command parser takes either"
    );
    assert_eq!(
        r.header("x-request-id"),
        Some(c["reqID"].as_u64().unwrap().to_string().as_str())
    );

    let body = r#"{"paths": ["/3/0/9", "/3303/0/5700"]}"#;
    let r = call(a, "POST", &format!("{base}/observe-composite"), Some(body));
    assert_eq!(r.status, 204, "{}", r.body);
    let (_, c) = last_command(&fake);
    assert_eq!(c["msgType"].as_str(), Some("observe-composite"));
    assert_eq!(
        c["data"]["paths"],
        simd_json::json!(["/3/0/9", "/3303/0/5700"])
    );
    let r = call(
        a,
        "POST",
        &format!("{base}/observe-composite?enable=false"),
        Some(body),
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        last_command(&fake).1["msgType"].as_str(),
        Some("cancel-observe-composite")
    );

    let body = r#"{"content":[{"path":"/3/0/14","type":"String","value":"+02"}]}"#;
    let r = call(a, "POST", &format!("{base}/write-composite"), Some(body));
    assert_eq!(r.status, 204, "{}", r.body);
    let (_, c) = last_command(&fake);
    assert_eq!(c["msgType"].as_str(), Some("write-composite"));
    assert_eq!(c["data"]["content"][0]["value"].as_str(), Some("+02"));

    // Refusals: nothing reaches the gateway.
    let before = fake.commands.lock().unwrap().len();
    for (path, body, status) in [
        (format!("{base}/read-composite"), None, 400),
        (format!("{base}/write-composite?paths=/3/0/14"), None, 400),
        (format!("{base}/read-composite"), Some("[1]"), 400),
        (format!("{base}/read-composite"), Some("{nope"), 400),
        (
            format!("{base}/observe-composite?paths=/3/0&enable=maybe"),
            None,
            400,
        ),
        (
            format!("{GW}/clients/ghost/read-composite?paths=/3/0"),
            None,
            404,
        ),
    ] {
        let r = call(a, "POST", &path, body);
        assert_eq!(r.status, status, "{path} {body:?}: {}", r.body);
    }
    assert_eq!(
        call(a, "GET", &format!("{base}/read-composite?paths=/3/0"), None).status,
        405
    );
    assert_eq!(fake.commands.lock().unwrap().len(), before);
}

fn last_command(fake: &Fake) -> (String, OwnedValue) {
    let (id, json) = fake.commands.lock().unwrap().last().cloned().unwrap();
    let mut b = json.into_bytes();
    (id, simd_json::to_owned_value(&mut b).unwrap())
}

#[test]
fn device_commands() {
    let (server, fake) = setup(SECRET);
    let a = server.local_addr();
    let base = format!("{GW}/clients/client-01");

    let r = call(a, "POST", &format!("{base}/read?path=/3/0/1"), None);
    assert_eq!(r.status, 204, "{}", r.body);
    let (id, c) = last_command(&fake);
    assert_eq!(id, "client-01");
    assert_eq!(c["msgType"].as_str(), Some("read"));
    assert_eq!(c["data"]["path"].as_str(), Some("/3/0/1"));
    let first_req = c["reqID"].as_u64().expect("numeric reqID");
    assert_eq!(
        r.header("x-request-id"),
        Some(first_req.to_string().as_str())
    );

    let r = call(
        a,
        "POST",
        &format!("{base}/write?path=/3/0/13&type=Time&value=1700000000"),
        None,
    );
    assert_eq!(r.status, 204);
    let (_, c) = last_command(&fake);
    assert_eq!(c["msgType"].as_str(), Some("write"));
    assert_eq!(c["data"]["path"].as_str(), Some("/3/0/13"));
    assert_eq!(c["data"]["type"].as_str(), Some("Time"));
    assert_eq!(c["data"]["value"].as_u64(), Some(1_700_000_000));
    assert_ne!(
        c["reqID"].as_u64(),
        Some(first_req),
        "fresh reqID per command"
    );

    call(
        a,
        "POST",
        &format!("{base}/write?path=/1/0/1&type=String&value=a+b%26c"),
        None,
    );
    assert_eq!(
        last_command(&fake).1["data"]["value"].as_str(),
        Some("a b&c")
    );
    call(
        a,
        "POST",
        &format!("{base}/write?path=/1/0/6&type=Boolean&value=true"),
        None,
    );
    assert_eq!(last_command(&fake).1["data"]["value"].as_bool(), Some(true));
    call(
        a,
        "POST",
        &format!("{base}/write?path=/9/0/2&type=Float&value=2.5"),
        None,
    );
    assert_eq!(last_command(&fake).1["data"]["value"].as_f64(), Some(2.5));

    assert_eq!(
        call(
            a,
            "POST",
            &format!("{base}/observe?path=/3/0/9&enable=true"),
            None
        )
        .status,
        204
    );
    let (_, c) = last_command(&fake);
    assert_eq!(
        (c["msgType"].as_str(), c["data"]["path"].as_str()),
        (Some("observe"), Some("/3/0/9"))
    );
    assert_eq!(
        call(
            a,
            "POST",
            &format!("{base}/observe?path=/3/0/9&enable=false"),
            None
        )
        .status,
        204
    );
    assert_eq!(
        last_command(&fake).1["msgType"].as_str(),
        Some("cancel-observe")
    );

    // Lookup answers from what the gateway remembers and sends no command.
    let before = fake.commands.lock().unwrap().len();
    let r = call(
        a,
        "GET",
        &format!("{base}/lookup?path=/3/0&action=discover"),
        None,
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["action"].as_str(), Some("discover"));
    assert_eq!(v["path"].as_str(), Some("/3/0"));
    assert_eq!(v["code"].as_str(), Some("6.01"));
    assert_eq!(v["codeMsg"].as_str(), Some("reply_not_received"));
    let r = call(
        a,
        "GET",
        &format!("{base}/lookup?path=3/0/0&action=read"),
        None,
    );
    let v = r.json();
    assert_eq!(
        (v["code"].as_str(), v["codeMsg"].as_str()),
        (Some("2.05"), Some("content"))
    );
    assert_eq!(v["content"][0]["value"].as_str(), Some("ACME"));
    assert_eq!(v["clientid"].as_str(), Some("client-01"));
    assert_eq!(fake.commands.lock().unwrap().len(), before);
    assert_eq!(
        call(
            a,
            "GET",
            &format!("{GW}/clients/ghost/lookup?path=/3/0"),
            None
        )
        .status,
        404
    );

    let sent = fake.commands.lock().unwrap().len();
    for (method, q) in [
        ("POST", "read"),
        ("POST", "read?path="),
        ("POST", "write?path=/3/0/13&type=Time"),
        ("POST", "write?path=/3/0/13&type=Date&value=1"),
        ("POST", "observe?path=/3/0/9&enable=maybe"),
        ("GET", "lookup?path=/3/0&action=delete"),
    ] {
        let r = call(a, method, &format!("{base}/{q}"), None);
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert_eq!(r.json()["code"].as_str(), Some("BAD_REQUEST"));
    }
    assert_eq!(
        call(
            a,
            "POST",
            &format!("{GW}/clients/ghost/read?path=/3/0/1"),
            None
        )
        .status,
        404
    );
    assert_eq!(
        call(a, "GET", &format!("{base}/read?path=/3/0/1"), None).status,
        405
    );
    assert_eq!(
        call(a, "POST", &format!("{base}/lookup?path=/3/0"), None).status,
        405
    );
    assert_eq!(
        call(a, "POST", &format!("{base}/jump?path=/3/0/4"), None).status,
        404
    );
    assert_eq!(
        fake.commands.lock().unwrap().len(),
        sent,
        "rejected requests send nothing"
    );

    fake.clients.lock().unwrap().push(ClientInfo {
        clientid: "refuses".into(),
        ..ClientInfo::default()
    });
    let r = call(
        a,
        "POST",
        &format!("{GW}/clients/refuses/read?path=/3/0/1"),
        None,
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("sleeping"));
}

#[test]
fn hostile_input_does_not_hurt() {
    let (server, _) = setup(SECRET);
    let a = server.local_addr();
    let auth = basic(KEY, SECRET);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"\x00\x01\x02 garbage\r\n\r\n".to_vec(), 400),
        (b"GET\r\n\r\n".to_vec(), 400),
        (b"GET /health HTTP/9.9\r\n\r\n".to_vec(), 400),
        (
            b"GET http://example.com/health HTTP/1.1\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"GET /health HTTP/1.1\r\nbad header line\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"GET /health HTTP/1.1\r\nContent-Length: nope\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"GET /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            411,
        ),
        (
            format!("PUT {GW} HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").into_bytes(),
            413,
        ),
        (
            format!(
                "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(20_000)
            )
            .into_bytes(),
            431,
        ),
        (
            format!("GET /health HTTP/1.1\r\n{}\r\n", "X-H: 1\r\n".repeat(100)).into_bytes(),
            431,
        ),
        (
            format!("GET {GW}/clients/%FF%FE HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n")
                .into_bytes(),
            404,
        ),
        (
            format!(
                "GET {GW}/clients?page=%%%&limit=%zz HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n"
            )
            .into_bytes(),
            400,
        ),
        (b"BREW /health HTTP/1.1\r\n\r\n".to_vec(), 405),
    ];
    for (bytes, want) in cases {
        let r = raw(a, &bytes);
        assert_eq!(
            r.status,
            want,
            "{:?}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)]),
            r.body
        );
    }
    // Half a request, then the client vanishes.
    {
        let mut s = connect(a);
        s.write_all(b"PUT /api/v5/gateways/lwm2m HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"a\"")
            .unwrap();
    }
    // Connections that send nothing (slowloris) beyond the worker count.
    let idle: Vec<TcpStream> = (0..8).map(|_| connect(a)).collect();
    let mut partial = connect(a);
    partial.write_all(b"GET /hea").unwrap();
    // The server still answers (idle connections are dropped after their timeout).
    let r = call_as(a, "GET", "/health", None, None);
    assert_eq!(r.status, 200);
    drop(idle);
    assert_eq!(call(a, "GET", GW, None).status, 200);
    server.stop();
}

#[test]
fn keep_alive_and_pipelining() {
    let (server, _) = setup(SECRET);
    let a = server.local_addr();
    let mut s = connect(a);
    let auth = basic(KEY, SECRET);
    let mut buf = Vec::new();
    for _ in 0..3 {
        s.write_all(format!("GET {GW} HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_response(&mut s, &mut buf);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // Two requests in one write; both answered in order.
    s.write_all(
        format!("GET /health HTTP/1.1\r\n\r\nGET {GW}/clients?limit=1 HTTP/1.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let r1 = read_response(&mut s, &mut buf);
    let r2 = read_response(&mut s, &mut buf);
    assert_eq!(r1.json()["status"].as_str(), Some("ok"));
    assert_eq!(r2.json()["meta"]["limit"].as_u64(), Some(1));
    assert_eq!(r2.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "closed after Connection: close"
    );
    // HTTP/1.0 without keep-alive is closed after one answer.
    let r = raw(a, b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn stop_releases_the_port() {
    let (server, _) = setup(SECRET);
    let a = server.local_addr();
    let idle = connect(a);
    server.stop();
    drop(idle);
    assert!(TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_err());
}

/// A sample's value in `/metrics`; `sample` is its name and labels as written.
fn metric(a: SocketAddr, sample: &str) -> u64 {
    let r = call_as(a, "GET", "/metrics", None, None);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{sample} not in /metrics:\n{}", r.body))
}

/// Reads until the server closes the connection (panics if it does not) and
/// returns the status of what it said before (0: nothing).
fn status_then_eof(mut s: TcpStream) -> u16 {
    // A bound so that a connection left open fails the test instead of hanging it.
    s.set_read_timeout(Some(REQUEST_TIMEOUT * 3)).unwrap();
    let mut got = Vec::new();
    if let Err(e) = s.read_to_end(&mut got) {
        panic!(
            "the server did not close the connection ({e}); it sent {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let text = String::from_utf8_lossy(&got);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_clients_cannot_shut_the_api() {
    let (server, _) = setup(SECRET);
    let a = server.local_addr();
    // More connections than the server keeps open, each sending part of a
    // request line and then nothing (slow loris).
    let flood = MAX_CONNECTIONS + 44;
    let slow: Vec<TcpStream> = (0..flood)
        .map(|_| {
            let mut s = connect(a);
            s.write_all(b"GET /hea").unwrap();
            s
        })
        .collect();
    // With all of them open, /health and an authenticated call are answered.
    let r = call_as(a, "GET", "/health", None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(a, "GET", &format!("{GW}/clients?limit=1"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["meta"]["count"].as_u64(), Some(25));
    // The server closes every slow connection: 503 for those a newer
    // connection replaced at the limit, 408 for those whose request timed out.
    let mut by_status = BTreeMap::new();
    for s in slow {
        *by_status.entry(status_then_eof(s)).or_insert(0u64) += 1;
    }
    let replaced = by_status.get(&503).copied().unwrap_or(0);
    let timed_out = by_status.get(&408).copied().unwrap_or(0);
    assert_eq!(replaced + timed_out, flood as u64, "{by_status:?}");
    assert!(replaced >= 44 && timed_out > 0, "{by_status:?}");
    let closed = |reason: &str| {
        metric(
            a,
            &format!("lwm2m_api_connections_closed_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(closed("evicted"), replaced);
    assert_eq!(closed("request_timeout"), timed_out);
    assert_eq!(closed("busy"), 0);
    server.stop();
}

#[test]
fn idle_connections_are_closed() {
    let (server, _) = setup(SECRET);
    let a = server.local_addr();
    let silent = connect(a);
    let mut kept = connect(a);
    kept.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    let r = read_response(&mut kept, &mut Vec::new());
    assert_eq!(r.header("connection"), Some("keep-alive"));
    for s in [silent, kept] {
        assert_eq!(status_then_eof(s), 0, "closed without a word");
    }
    assert_eq!(
        metric(
            a,
            "lwm2m_api_connections_closed_total{reason=\"idle_timeout\"}"
        ),
        2
    );
    server.stop();
}

#[test]
fn health_answers_while_every_worker_is_busy() {
    let (server, fake) = setup(SECRET);
    let a = server.local_addr();
    /// Lets the held workers go even when the test fails (the server's drop joins them).
    struct Release(Arc<Fake>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.set_hold(false);
        }
    }
    let release = Release(fake.clone());
    fake.set_hold(true);
    let held: Vec<_> = (0..WORKERS)
        .map(|_| std::thread::spawn(move || call(a, "GET", &format!("{GW}/clients"), None).status))
        .collect();
    for _ in 0..3000 {
        if fake.held.load(Ordering::SeqCst) == WORKERS {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        fake.held.load(Ordering::SeqCst),
        WORKERS,
        "every worker held"
    );
    let r = call_as(a, "GET", "/health", None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    drop(release);
    for t in held {
        assert_eq!(t.join().unwrap(), 200);
    }
    server.stop();
}
