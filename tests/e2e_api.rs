//! HTTP authentication against a real HTTP server the test runs, and the
//! management API and metrics of the running gateway over real HTTP.

mod common;
use common::gateway::metrics_when;

use common::coap::{self, exchange, socket, Req, Request};
use common::gateway::{Broker, GatewayProc, API_SECRET};
use common::http::request;
use common::json;
use common::mqtt_client::MqttClient;
use common::prometheus::Exposition;
use lwm2m_gateway::coap::{codes, opt, Message};
use simd_json::prelude::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const ADMIN: Option<(&str, &str)> = Some(("admin", API_SECRET));

fn register(sock: &UdpSocket, gw: SocketAddr, ep: &str, lt: u32, mid: u16) -> Message<'static> {
    register_q(sock, gw, ep, lt, mid, &[])
}

/// A Register with `extra` query parameters after the usual ones.
fn register_q(
    sock: &UdpSocket,
    gw: SocketAddr,
    ep: &str,
    lt: u32,
    mid: u16,
    extra: &[&str],
) -> Message<'static> {
    let register = Req::con(codes::POST, mid, &[9])
        .path(&["rd"])
        .query(&[&format!("ep={ep}"), &format!("lt={lt}"), "lwm2m=1.0"])
        .query(&["imei=490154203237518"])
        .query(extra)
        .body(b"</3/0>");
    let leaked: &'static [u8] = Box::leak(exchange(sock, gw, &register.bytes()).into_boxed_slice());
    Message::parse(leaked).unwrap()
}

fn udp() -> UdpSocket {
    socket([127, 0, 0, 1], Duration::from_secs(15))
}

/// An HTTP authentication server: allows endpoint names starting with "good",
/// answers "slow" after 3 s, records every request body.
fn auth_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut len = 0;
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let body = String::from_utf8_lossy(&body).into_owned();
                    log.lock().unwrap().push(body.clone());
                    if body.contains("slow") {
                        std::thread::sleep(Duration::from_secs(3));
                    }
                    let verdict = if body.contains("\"ep\":\"good") {
                        "allow"
                    } else {
                        "deny"
                    };
                    let out = format!("{{\"result\":\"{verdict}\"}}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{out}",
                        out.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[test]
fn http_authentication_allows_denies_times_out_and_fails_closed() {
    let (auth, seen) = auth_server();
    let extra = format!(
        "[authentication]\nenable = true\nmethod = \"post\"\nurl = \"http://{auth}/auth\"\n\
         request_timeout = \"1s\"\nbody = {{ clientid = \"${{clientid}}\", ep = \"${{endpoint_name}}\", \
         user = \"${{username}}\", peer = \"${{peerhost}}\", pass = \"${{password}}\" }}\n"
    );
    let gw = GatewayProc::start(Broker::Embedded, &extra);
    let mut mq = MqttClient::subscriber(gw.mqtt, "auth-sub", "lwm2m/+/up/resp", 0);
    let s = udp();
    assert_eq!(
        register_q(&s, gw.udp, "good1", 60, 1, &["password=s3cr3t"]).code,
        codes::CREATED
    );
    let (t, _) = mq.recv_publish(WAIT).expect("allowed register published");
    assert_eq!(t, "lwm2m/good1/up/resp");
    assert_eq!(
        register(&s, gw.udp, "bad1", 60, 2).code,
        codes::UNAUTHORIZED
    );
    assert_eq!(
        register(&s, gw.udp, "slow1", 60, 3).code,
        codes::UNAUTHORIZED,
        "slower than request_timeout denies"
    );
    assert!(
        mq.recv_publish(Duration::from_millis(500)).is_none(),
        "nothing published for denied devices"
    );
    // Placeholders were substituted, checked on the server side.
    let bodies = seen.lock().unwrap().clone();
    let good = bodies
        .iter()
        .find(|b| b.contains("good1"))
        .expect("asked for good1");
    let v = json(good);
    assert_eq!(v["clientid"], "good1");
    assert_eq!(v["ep"], "good1");
    assert_eq!(v["user"], "490154203237518");
    assert_eq!(v["peer"], "127.0.0.1");
    assert_eq!(
        v["pass"], "s3cr3t",
        "${{password}} is the Register's password parameter"
    );
    let bad = bodies.iter().find(|b| b.contains("bad1")).expect("asked");
    let v = json(bad);
    assert_eq!(v["pass"], "", "no password parameter: empty");

    // A change the configuration file would refuse is refused, naming the key.
    for (body, key) in [
        (
            format!(r#"{{"enable":true,"backend":"ldap","url":"http://{auth}/auth"}}"#),
            "authentication.backend",
        ),
        (
            format!(r#"{{"enable":true,"pool_size":0,"url":"http://{auth}/auth"}}"#),
            "authentication.pool_size",
        ),
        (
            format!(
                r#"{{"enable":true,"url":"http://{auth}/auth","ssl":{{"verify":"verify_maybe"}}}}"#
            ),
            "authentication.ssl.verify",
        ),
    ] {
        let (st, text) = request(
            gw.api,
            "PUT",
            "/api/v5/gateways/lwm2m/authentication",
            ADMIN,
            body.as_bytes(),
        );
        assert_eq!(st, 400, "{body}: {text}");
        assert!(text.contains(key), "{key}: {text}");
    }
    // ... and changes nothing: the allowed device still gets in.
    assert_eq!(register(&s, gw.udp, "good3", 60, 6).code, codes::CREATED);

    // Disabled at run time through the API: everyone gets in.
    let (st, _) = request(gw.api, "PUT", "/api/v5/gateways/lwm2m/authentication", ADMIN,
        format!(r#"{{"enable":false,"backend":"http","mechanism":"password_based","method":"post","url":"http://{auth}/auth"}}"#).as_bytes());
    assert_eq!(st, 200);
    assert_eq!(register(&s, gw.udp, "bad2", 60, 4).code, codes::CREATED);
    // Re-enabled towards a server that is down: denied.
    let down = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (st, body) = request(gw.api, "PUT", "/api/v5/gateways/lwm2m/authentication", ADMIN,
        format!(r#"{{"enable":true,"method":"post","url":"http://{down}/auth","connect_timeout":"1s","request_timeout":"1s"}}"#).as_bytes());
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        register(&s, gw.udp, "good2", 60, 5).code,
        codes::UNAUTHORIZED
    );

    // The outcomes on /metrics: the pool's (allow, deny, timeout/error) and the shards'
    // (Registers held and denied).
    let outcome = |e: &Exposition, o: &str| e.sum("lwm2m_auth_requests_total", &[("outcome", o)]);
    // Shards copy their counters at the end of a loop turn, which may come after the
    // reply reached the test: wait until every count is in.
    let m = metrics_when(gw.api, |e| {
        e.sum("lwm2m_auth_held_total", &[]) >= 5.0
            && e.sum("lwm2m_auth_denied_total", &[]) >= 3.0
            && e.sum("lwm2m_registrations_total", &[]) >= 3.0
            && e.sum("lwm2m_auth_requests_total", &[]) >= 5.0
    });
    assert_eq!(outcome(&m, "allow"), 2.0, "good1, good3");
    assert_eq!(outcome(&m, "deny"), 1.0, "bad1");
    assert_eq!(
        outcome(&m, "timeout") + outcome(&m, "error"),
        2.0,
        "slow1 (past request_timeout), good2 (server down)"
    );
    assert_eq!(m.sum("lwm2m_auth_held_total", &[]), 5.0);
    assert_eq!(m.sum("lwm2m_auth_denied_total", &[]), 3.0);
    assert!(m.has("lwm2m_auth_held_timeouts_total"));
    assert_eq!(
        m.sum("lwm2m_registrations_total", &[]),
        3.0,
        "good1, good3, bad2"
    );
}

#[test]
fn management_api_clients_commands_kick_config_and_metrics() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let mut mq = MqttClient::subscriber(gw.mqtt, "api-sub", "lwm2m/#", 0);
    let dev = udp();
    let other = udp();
    assert_eq!(register(&dev, gw.udp, "api1", 300, 1).code, codes::CREATED);
    assert_eq!(
        register(&other, gw.udp, "api2", 600, 1).code,
        codes::CREATED
    );

    // Credentials are required.
    assert_eq!(
        request(gw.api, "GET", "/api/v5/gateways/lwm2m/clients", None, b"").0,
        401
    );
    assert_eq!(
        request(
            gw.api,
            "GET",
            "/api/v5/gateways/lwm2m/clients",
            Some(("admin", "wrong")),
            b""
        )
        .0,
        401
    );
    // Health and metrics need none.
    assert_eq!(request(gw.api, "GET", "/health", None, b"").0, 200);

    let (st, body) = request(
        gw.api,
        "GET",
        "/api/v5/gateways/lwm2m/clients?like_endpoint_name=api&limit=10",
        ADMIN,
        b"",
    );
    assert_eq!(st, 200, "{body}");
    let v = json(body);
    assert_eq!(v["meta"]["count"], 2);
    let (st, body) = request(
        gw.api,
        "GET",
        "/api/v5/gateways/lwm2m/clients?gte_lifetime=500",
        ADMIN,
        b"",
    );
    assert_eq!(st, 200);
    let v = json(body);
    assert_eq!(v["meta"]["count"], 1);
    assert_eq!(v["data"][0]["endpoint_name"], "api2");
    let (st, body) = request(
        gw.api,
        "GET",
        "/api/v5/gateways/lwm2m/clients/api1",
        ADMIN,
        b"",
    );
    assert_eq!(st, 200, "{body}");
    let v = json(body);
    assert_eq!(v["lifetime"], 300);
    assert_eq!(v["username"], "490154203237518");

    // A read through the API reaches the device; its answer is published on MQTT.
    let (st, _) = request(
        gw.api,
        "POST",
        "/api/v5/gateways/lwm2m/clients/api1/read?path=/3/0/1",
        ADMIN,
        b"",
    );
    assert_eq!(st, 204);
    let read = Request::parse(&coap::recv(&dev));
    assert_eq!(read.code, codes::GET);
    let ack = read.ack(codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"via api");
    dev.send_to(&ack, gw.udp).unwrap();
    let mut found = false;
    while let Some((t, p)) = mq.recv_publish(WAIT) {
        if t == "lwm2m/api1/up/resp" && String::from_utf8_lossy(&p).contains("via api") {
            found = true;
            break;
        }
    }
    assert!(found, "the response to the API's read is on MQTT");

    // A configuration change takes effect without a restart.
    let (st, body) = request(
        gw.api,
        "PUT",
        "/api/v5/gateways/lwm2m",
        ADMIN,
        br#"{"name":"lwm2m","lifetime_max":"120s"}"#,
    );
    assert_eq!(st, 200, "{body}");
    let (_, cfg) = request(gw.api, "GET", "/api/v5/gateways/lwm2m", ADMIN, b"");
    assert!(
        cfg.contains("\"lifetime_max\":\"120s\"") || cfg.contains("\"lifetime_max\":\"2m\""),
        "{cfg}"
    );
    let third = udp();
    assert_eq!(
        register(&third, gw.udp, "api3", 99999, 1).code,
        codes::CREATED
    );
    let mut lt = None;
    while let Some((t, p)) = mq.recv_publish(WAIT) {
        if t == "lwm2m/api3/up/resp" {
            lt = json(&p)["data"]["lt"].as_u64();
            break;
        }
    }
    assert_eq!(lt, Some(120), "the new lifetime_max clamps");
    // A change that needs a restart is refused with the key named.
    let (st, body) = request(
        gw.api,
        "PUT",
        "/api/v5/gateways/lwm2m",
        ADMIN,
        br#"{"mountpoint":"other/"}"#,
    );
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("mountpoint"));

    // A device with a device_id is listed with it as clientid; the listed clientid and
    // the endpoint name both find it (inspect, command, kick).
    let fourth = udp();
    assert_eq!(
        register_q(&fourth, gw.udp, "api4", 300, 1, &["device_id=cid-api4"]).code,
        codes::CREATED
    );
    let (st, body) = request(
        gw.api,
        "GET",
        "/api/v5/gateways/lwm2m/clients?endpoint_name=api4",
        ADMIN,
        b"",
    );
    assert_eq!(st, 200, "{body}");
    let v = json(body);
    assert_eq!(v["data"][0]["clientid"], "cid-api4");
    for id in ["cid-api4", "api4"] {
        let (st, body) = request(
            gw.api,
            "GET",
            &format!("/api/v5/gateways/lwm2m/clients/{id}"),
            ADMIN,
            b"",
        );
        assert_eq!(st, 200, "{id}: {body}");
        let v = json(body);
        assert_eq!(v["endpoint_name"], "api4");
        assert_eq!(v["clientid"], "cid-api4");
    }
    let (st, body) = request(
        gw.api,
        "POST",
        "/api/v5/gateways/lwm2m/clients/cid-api4/read?path=/3/0/1",
        ADMIN,
        b"",
    );
    assert_eq!(st, 204, "{body}");
    let mut b = [0u8; 1500];
    let (n, _) = fourth
        .recv_from(&mut b)
        .expect("the read by clientid reaches the device");
    assert_eq!(Message::parse(&b[..n]).unwrap().code, codes::GET);
    let kick = |id: &str| {
        request(
            gw.api,
            "DELETE",
            &format!("/api/v5/gateways/lwm2m/clients/{id}"),
            ADMIN,
            b"",
        )
        .0
    };
    assert_eq!(kick("cid-api4"), 204);
    assert_eq!(kick("cid-api4"), 404);
    assert_eq!(kick("api4"), 404);

    // Kick: the registration is gone (an Update gets 4.04).
    assert_eq!(
        request(
            gw.api,
            "DELETE",
            "/api/v5/gateways/lwm2m/clients/api2",
            ADMIN,
            b""
        )
        .0,
        204
    );
    assert_eq!(
        request(
            gw.api,
            "DELETE",
            "/api/v5/gateways/lwm2m/clients/api2",
            ADMIN,
            b""
        )
        .0,
        404
    );
    assert_eq!(
        request(
            gw.api,
            "GET",
            "/api/v5/gateways/lwm2m/clients/api2",
            ADMIN,
            b""
        )
        .0,
        404
    );

    // Metrics agree with the traffic (and are valid exposition text).
    let (st, text) = request(gw.api, "GET", "/metrics", None, b"");
    assert_eq!(st, 200);
    Exposition::parse(&text);
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Snapshots are refreshed every 100 ms; the test waited longer than that above.
    assert_eq!(sum("lwm2m_registrations_total"), 4.0, "{text}");
    assert_eq!(sum("lwm2m_endpoints"), 2.0);
    assert!(text.contains("lwm2m_mqtt_connections_up"));
    assert!(text.contains("outcome=\"response\""));
    assert_eq!(
        sum("lwm2m_command_round_trip_seconds_count"),
        1.0,
        "the API's read is one command round trip"
    );
}

/// The golden copy of the `/metrics` page of a two-shard gateway, values left out.
const METRICS_GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/metrics.txt");

/// The whole `/metrics` page of a two-shard gateway, values left out, is
/// tests/golden/metrics.txt: every family, in its order, with its HELP and TYPE lines and
/// the labels of every series. A family added, removed, renamed, moved or re-described
/// shows here; after such a change on purpose, run this test with UPDATE_GOLDEN=1 to
/// rewrite the file, and review its diff.
#[test]
fn metrics_page_lists_every_family_in_order() {
    let gw = GatewayProc::start(Broker::Embedded, "engine.shards = 2");
    let (st, text) = request(gw.api, "GET", "/metrics", None, b"");
    assert_eq!(st, 200);
    Exposition::parse(&text);
    let page: String = text
        .lines()
        .map(|l| match l.starts_with('#') {
            true => l,
            false => l.rsplit_once(' ').map_or(l, |(series, _value)| series),
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(METRICS_GOLDEN, &page).unwrap();
    }
    let want = std::fs::read_to_string(METRICS_GOLDEN).unwrap();
    let (got_lines, want_lines): (Vec<&str>, Vec<&str>) =
        (page.lines().collect(), want.lines().collect());
    if let Some(i) =
        (0..got_lines.len().max(want_lines.len())).find(|&i| got_lines.get(i) != want_lines.get(i))
    {
        panic!(
            "/metrics differs from {METRICS_GOLDEN} from line {}:\n  got:  {:?}\n  want: {:?}\n\
             (run with UPDATE_GOLDEN=1 after a change on purpose)",
            i + 1,
            got_lines.get(i),
            want_lines.get(i)
        );
    }
}
