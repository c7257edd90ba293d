//! The management API beyond the clients list, against the running gateway: the OpenAPI
//! document checked against the routes both ways, EMQX's gateway, listener, enable,
//! subscription and authentication endpoints, every LwM2M operation over REST with and
//! without `?wait`, and `PUT ?persist=true` writing the configuration file.

mod common;
#[path = "interop/support.rs"]
mod support;

use common::coap::{self, location, socket, Req, Request};
use common::gateway::{Broker, GatewayProc, API_SECRET};
use common::http::request;
use common::json;
use lwm2m_gateway::api::route_table::ROUTES;
use lwm2m_gateway::coap::{codes, opt, Message, MsgType};
use simd_json::prelude::*;
use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const ADMIN: Option<(&str, &str)> = Some(("admin", API_SECRET));
const GW: &str = "/api/v5/gateways/lwm2m";

fn api(gw: &GatewayProc, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    request(gw.api, method, path, ADMIN, body)
}

/// A device that registers and answers what the test tells it to.
struct Device {
    sock: UdpSocket,
    gw: SocketAddr,
}

impl Device {
    fn register(gw: SocketAddr, ep: &str) -> Device {
        let d = Device {
            sock: socket([127, 0, 0, 1], WAIT),
            gw,
        };
        let reply = d.send_register(ep, 1);
        assert_eq!(reply.code, codes::CREATED, "register {ep}");
        assert!(location(&reply).is_some());
        d
    }

    fn send_register(&self, ep: &str, mid: u16) -> Message<'static> {
        let req = Req::con(codes::POST, mid, &[mid as u8])
            .path(&["rd"])
            .query(&[&format!("ep={ep}"), "lt=600", "lwm2m=1.1", "b=U"])
            .uint(opt::CONTENT_FORMAT, 40)
            .body(b"</1/0>,</3/0>,</31024/11>");
        let b = coap::exchange(&self.sock, self.gw, &req.bytes());
        let leaked: &'static [u8] = Box::leak(b.into_boxed_slice());
        Message::parse(leaked).unwrap()
    }

    /// The gateway's next request, skipping retransmissions of one already seen.
    fn next(&self) -> Request {
        Request::parse(&coap::recv(&self.sock))
    }

    fn answer(&self, r: &Request, code: u8, opts: &[(u16, u32)], body: &[u8]) {
        self.sock
            .send_to(&r.ack(code, opts, body), self.gw)
            .unwrap();
    }
}

/// Runs `f` (an HTTP request) on a thread while the device does its part.
fn in_background<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(f)
}

fn post(
    gw: &GatewayProc,
    path: &str,
    body: &'static [u8],
) -> std::thread::JoinHandle<(u16, String)> {
    let (addr, path) = (gw.api, path.to_string());
    in_background(move || request(addr, "POST", &path, ADMIN, body))
}

/// The status of a GET whose answer is a stream (read up to the end of the status line).
fn stream_status(addr: SocketAddr, path: &str) -> u16 {
    use base64::Engine;
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let token = base64::engine::general_purpose::STANDARD.encode(format!("admin:{API_SECRET}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A sample value for each path parameter of a route.
fn sample(pattern: &str) -> String {
    pattern
        .replace("{clientid}", "nobody")
        .replace("{enable}", "true")
        .replace("{id}", "lwm2m:udp:default")
        .replace("{topic}", "a%2Fb")
        .replace("{name}", "nobody")
        .replace("{file}", "app.js")
}

#[test]
fn the_openapi_document_and_the_routes_agree_both_ways() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    // Served without credentials.
    let (st, body) = request(gw.api, "GET", "/api/v5/openapi.json", None, b"");
    assert_eq!(st, 200, "{body}");
    let doc = json(&body);
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths").iter() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((path.to_string(), method.to_ascii_uppercase()));
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|r| {
            r.ops
                .iter()
                .map(|o| (r.pattern.to_string(), o.method.to_string()))
        })
        .collect();
    assert_eq!(documented, routed, "the document is the route table");
    // A valid OpenAPI 3 document, by a validator that is not ours.
    let python = support::venv_python_with("openapi_spec_validator");
    let file = gw.dir.path().join("openapi.json");
    std::fs::write(&file, &body).unwrap();
    let out = std::process::Command::new(python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every documented path and method is answered by a handler: never "no such
    // endpoint", 405 or 501 (bad input and unknown names are fine).
    for (path, method) in &documented {
        if path.ends_with("/events") {
            // A stream stays open: its head is enough.
            let st = stream_status(gw.api, &sample(path));
            assert_eq!(st, 200, "{method} {path}");
            continue;
        }
        let (st, body) = api(&gw, method, &sample(path), b"");
        assert!(
            !(matches!(st, 405 | 501) || (st == 404 && body.contains("no such endpoint"))),
            "{method} {path}: {st} {body}"
        );
    }
    // Every other method of a documented path is 405 with the documented methods in
    // Allow, and paths not documented are 404: nothing is routed that is not documented.
    for r in ROUTES {
        let (st, body) = api(&gw, "PATCH", &sample(r.pattern), b"");
        assert_eq!(st, 405, "PATCH {}: {body}", r.pattern);
        for op in r.ops {
            assert!(body.contains(op.method), "{}: {body}", r.pattern);
        }
    }
    for path in [
        "/api/v5/gateways/lwm2m/clients/x/jump",
        "/api/v5/gateways/lwm2m/listeners/a/b",
        "/api/v5/nothing",
        "/api/v5/gateways/lwm2m/enable",
    ] {
        let (st, body) = api(&gw, "GET", path, b"");
        assert_eq!(st, 404, "{path}: {body}");
        assert!(body.contains("no such endpoint"), "{path}: {body}");
    }
    // A management path is not answered without credentials, documented or not.
    let (st, _) = request(gw.api, "GET", "/api/v5/gateways", None, b"");
    assert_eq!(st, 401);
    let (st, _) = request(gw.api, "GET", "/api/v5/nothing", None, b"");
    assert_eq!(st, 401);
}

#[test]
fn gateways_listeners_subscriptions_enable_and_authentication() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let _d = Device::register(gw.udp, "gl1");

    let v = json(api(&gw, "GET", "/api/v5/gateways", b"").1);
    let g = &v[0];
    assert_eq!(g["name"].as_str(), Some("lwm2m"), "{v}");
    assert_eq!(g["status"].as_str(), Some("running"));
    assert_eq!(g["current_connections"].as_u64(), Some(1));
    assert_eq!(g["listeners"][0]["id"].as_str(), Some("lwm2m:udp:default"));
    assert_eq!(g["listeners"][0]["running"].as_bool(), Some(true));

    // Listeners: the list, one, a change that applies, a change that cannot.
    let v = json(api(&gw, "GET", &format!("{GW}/listeners"), b"").1);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["current_connections"].as_u64(), Some(1));
    assert_eq!(v[0]["bind"].as_str(), Some(gw.udp.to_string().as_str()));
    let one = format!("{GW}/listeners/lwm2m:udp:default");
    let (st, body) = api(&gw, "PUT", &one, br#"{"max_conn_rate":500}"#);
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["max_conn_rate"].as_u64(), Some(500));
    assert_eq!(
        json(api(&gw, "GET", &one, b"").1)["max_conn_rate"].as_u64(),
        Some(500)
    );
    let (st, body) = api(&gw, "PUT", &one, br#"{"bind":"127.0.0.1:1"}"#);
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("cannot change at run time"), "{body}");
    let (st, _) = api(&gw, "GET", &format!("{GW}/listeners/lwm2m:udp:other"), b"");
    assert_eq!(st, 404);
    let (st, _) = api(&gw, "PUT", &one, b"[1]");
    assert_eq!(st, 400);

    // Subscriptions: the device's command topic, truthfully.
    let subs = format!("{GW}/clients/gl1/subscriptions");
    let v = json(api(&gw, "GET", &subs, b"").1);
    assert_eq!(v[0]["topic"].as_str(), Some("lwm2m/gl1/dn/#"), "{v}");
    assert_eq!(
        v[0]["mode"].as_str(),
        Some("wildcard"),
        "embedded broker: one wildcard"
    );
    let (st, body) = api(&gw, "POST", &subs, br#"{"topic":"lwm2m/gl1/dn/#","qos":0}"#);
    assert_eq!(st, 201, "{body}");
    let (st, body) = api(&gw, "POST", &subs, br#"{"topic":"other/#"}"#);
    assert_eq!(st, 400, "{body}");
    let (st, _) = api(&gw, "POST", &subs, b"{}");
    assert_eq!(st, 400);
    let (st, body) = api(
        &gw,
        "DELETE",
        &format!("{subs}/lwm2m%2Fgl1%2Fdn%2F%23"),
        b"",
    );
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("cannot be removed"), "{body}");
    let (st, _) = api(&gw, "DELETE", &format!("{subs}/other"), b"");
    assert_eq!(st, 404);
    let (st, _) = api(
        &gw,
        "GET",
        &format!("{GW}/clients/nobody/subscriptions"),
        b"",
    );
    assert_eq!(st, 404);

    // Authentication removed.
    let (st, _) = api(
        &gw,
        "PUT",
        &format!("{GW}/authentication"),
        br#"{"enable":true,"url":"http://127.0.0.1:9/auth"}"#,
    );
    assert_eq!(st, 200);
    let (st, _) = api(&gw, "DELETE", &format!("{GW}/authentication"), b"");
    assert_eq!(st, 204);
    let v = json(api(&gw, "GET", &format!("{GW}/authentication"), b"").1);
    assert_eq!(v["enable"].as_bool(), Some(false), "{v}");

    // Disable: registrations end, devices are not served; enable: served again.
    let (st, _) = api(&gw, "PUT", &format!("{GW}/enable/maybe"), b"");
    assert_eq!(st, 400);
    let (st, body) = api(&gw, "PUT", &format!("{GW}/enable/false"), b"");
    assert_eq!(st, 204, "{body}");
    let v = json(api(&gw, "GET", &format!("{GW}/clients"), b"").1);
    assert_eq!(v["meta"]["count"].as_u64(), Some(0), "{v}");
    let v = json(api(&gw, "GET", "/api/v5/gateways", b"").1);
    assert_eq!(v[0]["status"].as_str(), Some("stopped"));
    assert_eq!(v[0]["listeners"][0]["running"].as_bool(), Some(false));
    let late = socket([127, 0, 0, 1], WAIT);
    let reg = Req::con(codes::POST, 9, &[9])
        .path(&["rd"])
        .query(&["ep=gl2", "lt=600"])
        .bytes();
    late.send_to(&reg, gw.udp).unwrap();
    let m = gw.metrics_when(|e| {
        e.sum(
            "lwm2m_datagrams_dropped_total",
            &[("reason", "gateway_disabled")],
        ) >= 1.0
    });
    assert!(
        m.sum(
            "lwm2m_datagrams_dropped_total",
            &[("reason", "gateway_disabled")]
        ) >= 1.0
    );
    assert_eq!(
        json(api(&gw, "GET", GW, b"").1)["enable"].as_bool(),
        Some(false)
    );
    // EMQX's other way: the configuration's "enable".
    let (st, body) = api(&gw, "PUT", GW, br#"{"enable":true}"#);
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["enable"].as_bool(), Some(true));
    let (st, _) = api(&gw, "PUT", GW, br#"{"enable":"yes"}"#);
    assert_eq!(st, 400);
    let (st, _) = api(&gw, "PUT", &format!("{GW}/enable/true"), b"");
    assert_eq!(st, 204);
    let d2 = Device::register(gw.udp, "gl2");
    drop(d2);
    let v = json(api(&gw, "GET", "/api/v5/gateways", b"").1);
    assert_eq!(v[0]["status"].as_str(), Some("running"));
    assert_eq!(v[0]["current_connections"].as_u64(), Some(1));
}

#[test]
fn every_operation_over_rest_with_and_without_wait() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let d = Device::register(gw.udp, "ops1");
    let c = format!("{GW}/clients/ops1");

    // Without wait: 204 and the request reaches the device.
    let (st, body) = api(
        &gw,
        "POST",
        &format!("{c}/write-attr?path=/3/0/9&pmin=10&pmax=60"),
        b"",
    );
    assert_eq!(st, 204, "{body}");
    let r = d.next();
    assert_eq!((r.code, r.path.as_str()), (codes::PUT, "/3/0/9"));
    assert_eq!(r.query, ["pmin=10", "pmax=60"]);
    d.answer(&r, codes::CHANGED, &[], b"");

    // execute with wait: the device's answer is the HTTP response.
    let h = post(&gw, &format!("{c}/execute?path=/3/0/4&args=0&wait=5s"), b"");
    let r = d.next();
    assert_eq!((r.code, r.path.as_str()), (codes::POST, "/3/0/4"));
    assert_eq!(r.payload, b"0");
    d.answer(&r, codes::CHANGED, &[], b"");
    let (st, body) = h.join().unwrap();
    assert_eq!(st, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["msgType"].as_str(), Some("execute"), "{v}");
    assert_eq!(v["data"]["code"].as_str(), Some("2.04"));

    // discover, with the caller's reqID.
    let h = post(
        &gw,
        &format!("{c}/discover?path=/3/0&wait=5s&reqID=abc"),
        b"",
    );
    let r = d.next();
    assert_eq!(
        (r.code, r.path.as_str(), r.accept),
        (codes::GET, "/3/0", Some(40))
    );
    d.answer(
        &r,
        codes::CONTENT,
        &[(opt::CONTENT_FORMAT, 40)],
        b"</3/0>,</3/0/1>",
    );
    let (st, body) = h.join().unwrap();
    assert_eq!(st, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["reqID"].as_str(), Some("abc"), "{v}");
    assert_eq!(v["msgType"].as_str(), Some("discover"));

    // create from the body, delete from the query.
    let h = post(
        &gw,
        &format!("{c}/create?wait=5s"),
        br#"{"basePath":"/31024","content":[{"path":"12/1","type":"String","value":"x"}]}"#,
    );
    let r = d.next();
    assert_eq!((r.code, r.path.as_str()), (codes::POST, "/31024"));
    let mut created = Vec::new();
    let mut w = lwm2m_gateway::coap::MessageWriter::new(
        &mut created,
        MsgType::Ack,
        codes::CREATED,
        r.mid,
        &r.token,
    );
    w.option(opt::LOCATION_PATH, b"31024");
    w.option(opt::LOCATION_PATH, b"12");
    d.sock.send_to(&created, gw.udp).unwrap();
    let (st, body) = h.join().unwrap();
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["data"]["code"].as_str(), Some("2.01"), "{body}");
    let h = post(&gw, &format!("{c}/delete?path=/31024/12&wait=5s"), b"");
    let r = d.next();
    assert_eq!((r.code, r.path.as_str()), (codes::DELETE, "/31024/12"));
    d.answer(&r, codes::DELETED, &[], b"");
    assert_eq!(h.join().unwrap().0, 200);

    // read with wait, the device silent: 504 saying so.
    let h = post(&gw, &format!("{c}/read?path=/3/0/1&wait=1s"), b"");
    let r = d.next();
    assert_eq!(r.path, "/3/0/1");
    let (st, body) = h.join().unwrap();
    assert_eq!(st, 504, "{body}");
    assert!(body.contains("no answer"), "{body}");
    d.answer(&r, codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"late");

    // Bad input.
    for (path, want) in [
        (format!("{c}/read?path=/3/0/1&wait=soon"), 400),
        (format!("{c}/read?path=/3/0/1&wait=61s"), 400),
        (format!("{c}/read?path=/3/0/1&wait=0s"), 400),
        (format!("{c}/write-attr?path=/3/0/9"), 400),
        (format!("{c}/create"), 400),
        (format!("{c}/observe?path=/3/0/9&enable=maybe"), 400),
        (format!("{c}/read?path=/3/0/1&reqID="), 400),
        (format!("{GW}/clients/nobody/execute?path=/3/0/4"), 404),
        (format!("{GW}/clients/nobody/read?path=/3/0/4&wait=2s"), 404),
    ] {
        let (st, body) = api(&gw, "POST", &path, b"");
        assert_eq!(st, want, "{path}: {body}");
    }
    let (st, _) = api(&gw, "POST", &format!("{c}/execute"), b"[1]");
    assert_eq!(st, 400);
}

#[test]
fn a_configuration_put_is_written_to_the_file_with_persist() {
    let gw = GatewayProc::start(
        Broker::Embedded,
        "# the operator's comment\nqmode_time_window = \"22s\"",
    );
    let file = gw.dir.path().join("gateway.toml");
    let before = std::fs::read_to_string(&file).unwrap();

    let (st, body) = api(&gw, "PUT", GW, br#"{"qmode_time_window":"40s"}"#);
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        before,
        "no persist: file untouched"
    );

    let (st, body) = api(
        &gw,
        "PUT",
        &format!("{GW}?persist=maybe"),
        br#"{"lifetime_max":"2h"}"#,
    );
    assert_eq!(st, 400, "{body}");
    let (st, body) = api(
        &gw,
        "PUT",
        &format!("{GW}?persist=true"),
        br#"{"lifetime_max":"2h","translators":{"notify":{"qos":1}}}"#,
    );
    assert_eq!(st, 200, "{body}");
    let after = std::fs::read_to_string(&file).unwrap();
    assert!(after.contains("# the operator's comment"), "{after}");
    let cfg = lwm2m_gateway::config::Config::from_toml_str(&after).expect("still a valid file");
    assert_eq!(cfg.lifetime_max, Duration::from_secs(7200), "{after}");
    assert_eq!(cfg.translators.notify.qos, 1);
    // The one not persisted stays as the file had it.
    assert_eq!(cfg.qmode_time_window, Duration::from_secs(22));
    // What cannot change is refused before anything is written.
    let (st, _) = api(
        &gw,
        "PUT",
        &format!("{GW}?persist=true"),
        br#"{"mountpoint":"x/"}"#,
    );
    assert_eq!(st, 400);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), after);
    let leftovers: Vec<_> = std::fs::read_dir(gw.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn at_most_three_requests_wait_and_a_kick_ends_their_wait() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let devices: Vec<Device> = (1..=4)
        .map(|i| Device::register(gw.udp, &format!("busy{i}")))
        .collect();
    // Three waits, one per device; a device that got its request shows that its wait
    // holds a slot (the slot is taken before the command is sent).
    let waiting: Vec<_> = (1..=3)
        .map(|i| {
            post(
                &gw,
                &format!("{GW}/clients/busy{i}/read?path=/3/0/1&wait=30s"),
                b"",
            )
        })
        .collect();
    let requests: Vec<Request> = devices[..3].iter().map(Device::next).collect();
    // A fourth is refused while they wait, and sends nothing.
    let fourth = format!("{GW}/clients/busy4/read?path=/3/0/1&wait=5s");
    let (st, body) = api(&gw, "POST", &fourth, b"");
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("TOO_MANY_WAITING"), "{body}");
    // Ending a registration ends its command with an error, which is that wait's answer;
    // the others get their devices' answers.
    assert_eq!(
        api(&gw, "DELETE", &format!("{GW}/clients/busy1"), b"").0,
        204
    );
    for (d, r) in devices[1..3].iter().zip(&requests[1..3]) {
        d.answer(r, codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"m");
    }
    let answers: Vec<(u16, String)> = waiting.into_iter().map(|h| h.join().unwrap()).collect();
    let codes_seen: Vec<Option<String>> = answers
        .iter()
        .map(|(st, body)| {
            assert_eq!(*st, 200, "{body}");
            json(body)["data"]["code"].as_str().map(String::from)
        })
        .collect();
    assert_eq!(codes_seen[0].as_deref(), Some("4.04"), "{answers:?}");
    assert_eq!(codes_seen[1].as_deref(), Some("2.05"), "{answers:?}");
    assert_eq!(codes_seen[2].as_deref(), Some("2.05"), "{answers:?}");
    // The slots are free again.
    let h = post(&gw, &fourth, b"");
    let r = devices[3].next();
    devices[3].answer(&r, codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"m");
    let (st, body) = h.join().unwrap();
    assert_eq!(st, 200, "{body}");
}

#[test]
fn wait_finds_the_answer_on_a_mountpoint_keyed_by_device_id() {
    let gw = GatewayProc::start(Broker::Embedded, "mountpoint = \"things/${clientid}/\"");
    let d = Device {
        sock: socket([127, 0, 0, 1], WAIT),
        gw: gw.udp,
    };
    let req = Req::con(codes::POST, 1, &[1])
        .path(&["rd"])
        .query(&["ep=mp1", "lt=600", "device_id=box-7", "b=U"])
        .body(b"</3/0>");
    let reply = coap::exchange(&d.sock, gw.udp, &req.bytes());
    assert_eq!(Message::parse(&reply).unwrap().code, codes::CREATED);
    // Named by its listed clientid (the device_id) and by its endpoint name.
    for (i, id) in ["box-7", "mp1"].iter().enumerate() {
        let h = post(
            &gw,
            &format!("{GW}/clients/{id}/read?path=/3/0/{i}&wait=5s"),
            b"",
        );
        let r = d.next();
        d.answer(&r, codes::CONTENT, &[(opt::CONTENT_FORMAT, 0)], b"x");
        let (st, body) = h.join().unwrap();
        assert_eq!(st, 200, "{id}: {body}");
        assert_eq!(json(&body)["data"]["code"].as_str(), Some("2.05"), "{body}");
    }
}
