//! The web console: its endpoints over HTTP against the running gateway, and the page
//! itself in headless Chromium (Debian's `chromium` and `chromium-driver`, driven over
//! WebDriver) talking to a gateway with a simulated device that answers commands and
//! sends notifications.
//!
//! With `LWM2M_CONSOLE_SCREENSHOTS=<dir>` the browser test stores its screenshots of each
//! page there (`docs/console/` holds the committed ones).

mod common;

use common::coap::{exchange, socket, Req};
use common::gateway::{Broker, GatewayProc, API_SECRET};
use common::http::request;
use common::json;
use common::webdriver::{js_string, Browser};
use lwm2m_gateway::coap::{codes, Message, MsgType};
use lwm2m_gateway::sim::client::{answer, write_notification, write_response};
use simd_json::prelude::*;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const ADMIN: Option<(&str, &str)> = Some(("admin", API_SECRET));
const GW: &str = "/api/v5/gateways/lwm2m";

/// A device on a socket of its own: registers, answers the gateway's requests as a real
/// client does (`sim::client`), and notifies every observation it was asked for every
/// 300 ms with a new value.
struct Device {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Device {
    fn start(gw: SocketAddr, ep: &str) -> Device {
        let sock = socket([127, 0, 0, 1], Duration::from_secs(10));
        let reg = Req::con(codes::POST, 1, &[7])
            .path(&["rd"])
            .query(&[&format!("ep={ep}"), "lt=300", "lwm2m=1.1", "b=U"])
            .body(b"</1/0>,</3/0>,</3303/0>");
        let reply = exchange(&sock, gw, &reg.bytes());
        assert_eq!(Message::parse(&reply).unwrap().code, codes::CREATED);
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || serve(&sock, gw, &flag));
        Device {
            stop,
            thread: Some(thread),
        }
    }
}

fn serve(sock: &UdpSocket, gw: SocketAddr, stop: &AtomicBool) {
    let mut observations: Vec<(Vec<u8>, Vec<u16>)> = Vec::new();
    let (mut tick, mut seq, mut mid) = (0u32, 1u32, 1000u16);
    let mut next_notify = Instant::now();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Ok(msg) = Message::parse(&buf[..n]) {
                if msg.is_request() {
                    let a = answer(&msg, 0, tick);
                    if let Some(p) = &a.start_observe {
                        observations.push((msg.token.to_vec(), p.clone()));
                    }
                    if let Some(p) = &a.cancel_observe {
                        observations.retain(|(_, q)| q != p);
                    }
                    let mut out = Vec::new();
                    write_response(&msg, &a, mid, &mut out);
                    mid = mid.wrapping_add(1);
                    let _ = sock.send_to(&out, gw);
                }
            }
        }
        if Instant::now() >= next_notify {
            next_notify = Instant::now() + Duration::from_millis(300);
            tick += 1;
            for (token, path) in &observations {
                seq += 1;
                mid = mid.wrapping_add(1);
                let mut out = Vec::new();
                write_notification(MsgType::Non, mid, token, seq, path, 0, tick, &mut out);
                let _ = sock.send_to(&out, gw);
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn console_endpoints_over_http() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    // The page and its assets need no credentials; they hold no data.
    let (st, html) = request(gw.api, "GET", "/", None, b"");
    assert_eq!(st, 200);
    assert!(html.contains("/console/app.js"), "{html}");
    for asset in ["app.js", "api.js", "console.css", "device.js"] {
        let (st, body) = request(gw.api, "GET", &format!("/console/{asset}"), None, b"");
        assert_eq!(st, 200, "{asset}");
        assert!(!body.is_empty());
    }
    for missing in ["/console/nope.js", "/console/../Cargo.toml", "/console"] {
        assert_eq!(
            request(gw.api, "GET", missing, None, b"").0,
            401,
            "{missing}"
        );
        assert_eq!(
            request(gw.api, "GET", missing, ADMIN, b"").0,
            404,
            "{missing}"
        );
    }
    assert_eq!(request(gw.api, "POST", "/", None, b"x").0, 405);

    // Object definitions, from the gateway's registry, behind the credentials.
    assert_eq!(
        request(gw.api, "GET", &format!("{GW}/objects/3"), None, b"").0,
        401
    );
    let (st, body) = request(gw.api, "GET", &format!("{GW}/objects/3"), ADMIN, b"");
    assert_eq!(st, 200, "{body}");
    let o = json(&body);
    assert_eq!(o["id"], 3);
    assert_eq!(o["name"], "Device");
    let res = o["resources"].as_array().unwrap();
    let manufacturer = res.iter().find(|r| r["id"] == 0).unwrap();
    assert_eq!(manufacturer["name"], "Manufacturer");
    assert_eq!(manufacturer["type"], "String");
    assert_eq!(manufacturer["operations"], "R");
    assert_eq!(manufacturer["multiple"], false);
    let reboot = res.iter().find(|r| r["id"] == 4).unwrap();
    assert_eq!(
        (reboot["operations"].as_str(), reboot["type"].as_str()),
        (Some("E"), Some("None"))
    );
    let power = res.iter().find(|r| r["id"] == 6).unwrap();
    assert_eq!(power["multiple"], true);
    let (st, body) = request(gw.api, "GET", &format!("{GW}/objects"), ADMIN, b"");
    assert_eq!(st, 200);
    let list = json(&body);
    let list = list["data"].as_array().unwrap();
    assert!(list
        .iter()
        .any(|o| o["id"] == 3303 && o["name"] == "Temperature"));
    assert!(list
        .windows(2)
        .all(|w| w[0]["id"].as_u64() < w[1]["id"].as_u64()));
    for (path, status) in [
        ("objects/65000", 404),
        ("objects/x", 400),
        ("objects/70000", 400),
    ] {
        let (st, body) = request(gw.api, "GET", &format!("{GW}/{path}"), ADMIN, b"");
        assert_eq!(st, status, "{path}: {body}");
        assert!(json(&body)["message"].is_str());
    }

    // The configuration as GET shows it is accepted back by PUT (the console's editor
    // sends it whole).
    let (_, cfg) = request(gw.api, "GET", GW, ADMIN, b"");
    let (st, body) = request(gw.api, "PUT", GW, ADMIN, cfg.as_bytes());
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body), json(&cfg));

    // A command JSON as MQTT carries it reaches the device; the outcome goes to MQTT.
    let mut app = common::app::App::new(&gw, "console-http-app");
    let dev = Device::start(gw.udp, "dev-http");
    let cmd = |body: &str| {
        request(
            gw.api,
            "POST",
            &format!("{GW}/clients/dev-http/command"),
            ADMIN,
            body.as_bytes(),
        )
    };
    let (st, body) =
        cmd(r#"{"reqID":"c-1","msgType":"execute","data":{"path":"/3/0/4","args":"0"}}"#);
    assert_eq!(st, 204, "{body}");
    let (topic, v) = app.next();
    assert_eq!(topic, "lwm2m/dev-http/up/resp");
    assert_eq!(
        (v["reqID"].as_str(), v["msgType"].as_str()),
        (Some("c-1"), Some("execute"))
    );
    assert_eq!(v["data"]["code"], "2.04");
    let (st, _) = cmd(r#"{"reqID":"c-2","msgType":"discover","data":{"path":"/3303/0"}}"#);
    assert_eq!(st, 204);
    let (_, v) = app.next();
    assert_eq!(v["reqID"], "c-2");
    assert_eq!(v["data"]["code"], "2.05");
    // Hostile or wrong bodies: a clear 400, nothing sent.
    for bad in [
        "",
        "not json",
        "[1,2]",
        r#"{"reqID":1}"#,
        r#"{"msgType":""}"#,
        r#"{"msgType":"read","data":"x"}"#,
        r#"{"msgType":"read","data":{"path":"/3/0/0"}"#,
    ] {
        let (st, body) = cmd(bad);
        assert_eq!(st, 400, "{bad}: {body}");
        assert!(json(&body)["message"].is_str(), "{bad}: {body}");
    }
    let (st, _) = request(
        gw.api,
        "POST",
        &format!("{GW}/clients/nobody/command"),
        ADMIN,
        br#"{"msgType":"read","data":{"path":"/3/0/0"}}"#,
    );
    assert_eq!(st, 404);
    assert_eq!(
        request(
            gw.api,
            "GET",
            &format!("{GW}/clients/dev-http/command"),
            ADMIN,
            b""
        )
        .0,
        405
    );
    // The clients API tells whether a device came over DTLS.
    let (_, body) = request(gw.api, "GET", &format!("{GW}/clients/dev-http"), ADMIN, b"");
    assert_eq!(json(&body)["dtls"], false);
    drop(dev);
}

/// Where screenshots go, if anywhere.
fn shots() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("LWM2M_CONSOLE_SCREENSHOTS")?;
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    Some(dir)
}

fn screenshot(b: &Browser, name: &str) {
    let png = b.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}: a PNG");
    if let Some(dir) = shots() {
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

/// A script returning the text `t` of the element `css` selects ("" if none).
fn text_of(css: &str) -> String {
    text_where(css, "true")
}

/// A script returning the text `t` of the element `css` selects when `cond` (JavaScript
/// on `t`) holds, "" otherwise.
fn text_where(css: &str, cond: &str) -> String {
    format!(
        "const e = document.querySelector({}); const t = e ? e.textContent.trim() : ''; \
         return ({cond}) ? t : ''",
        js_string(css)
    )
}

#[test]
fn console_in_a_real_browser() {
    // With the Bootstrap-Server, so that the gateway page shows its configurations.
    let bs = tempfile::tempdir().unwrap();
    let bs_file = bs.path().join("bootstrap.toml");
    std::fs::write(
        &bs_file,
        "[console-dev]\n[[console-dev.servers]]\nuri = \"coap://127.0.0.1:5783\"\n\
         security = \"nosec\"\nshort_id = 101\nlifetime = 300\nbinding = \"U\"\n",
    )
    .unwrap();
    let extra = format!(
        "[bootstrap]\nenable = true\nconfig_file = \"{}\"",
        bs_file.display()
    );
    let gw = GatewayProc::start(Broker::Embedded, &extra);
    let b = Browser::start(1400, 1000);
    b.goto(&format!("http://{}/", gw.api));

    // Wrong credentials are refused on the login form.
    b.type_into("#login-secret", "wrong");
    b.click("#login-submit");
    b.wait_for("the refusal", &text_of("#login-error"));
    screenshot(&b, "login");
    b.type_into("#login-key", "admin");
    b.type_into("#login-secret", API_SECRET);
    b.click("#login-submit");
    b.wait_for(
        "the empty device list",
        "return document.querySelector('#devices tbody')?.textContent.includes('No device registered')",
    );
    b.wait_for(
        "the event stream connected",
        "return document.querySelector('#stream-state.live') !== null",
    );

    // A device registering appears in the list, live.
    let _dev = Device::start(gw.udp, "console-dev");
    let _other = Device::start(gw.udp, "meter-7");
    let row = "#devices tr[data-clientid=\"console-dev\"]";
    b.find(row);
    b.wait_for(
        "both devices listed",
        &text_where("#device-count", "t.startsWith('2 ')"),
    );
    let cells = b.js(
        &format!(
            "return [...document.querySelector({}).cells].map(c => c.textContent.trim())",
            js_string(row)
        ),
        &[],
    );
    let cells: Vec<&str> = cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cells[0], "console-dev");
    assert!(cells[1].starts_with("127.0.0.1:"), "{cells:?}");
    assert_eq!(&cells[2..5], ["1.1", "U", "300 s"], "{cells:?}");
    assert_eq!(&cells[6..8], ["no", "no"], "{cells:?}");
    // Search narrows the list.
    b.type_into("#device-search", "meter");
    b.wait_for(
        "the search applied",
        "return document.querySelectorAll('#devices tbody tr').length === 1 && document.querySelector('#devices tr[data-clientid=\"meter-7\"]') !== null",
    );
    screenshot(&b, "devices");
    b.type_into("#device-search", "console");
    b.click(&format!("{row} a.device-link"));

    // The device page: objects named from the definitions, a read shows its value.
    b.find("[data-value=\"/3/0/0\"]");
    let name = b.js(&text_of("tr[data-path=\"/3/0/0\"] td:nth-child(2)"), &[]);
    assert_eq!(name, "Manufacturer");
    let title = b.js(&text_of("[data-object=\"3303\"] h2"), &[]);
    assert!(
        title.as_str().unwrap().starts_with("Temperature"),
        "{title}"
    );
    b.click("button[data-op=\"read\"][data-path=\"/3/0/0\"]");
    b.wait_for(
        "the value read",
        &text_where("[data-value=\"/3/0/0\"]", "t === 'lwm2m-gateway'"),
    );
    let outcome = b.wait_for(
        "the read's outcome",
        &text_of(".result[data-op=\"read\"] .outcome.ok"),
    );
    assert!(outcome.as_str().unwrap().starts_with("2.05"), "{outcome}");

    // Observe: the first value, then notifications bring new ones.
    let temp = "[data-value=\"/3303/0/5700\"]";
    b.click("button[data-op=\"observe\"][data-path=\"/3303/0/5700\"]");
    let first = b.wait_for("the observed value", &text_of(temp));
    let first = first.as_str().unwrap().to_string();
    assert!(first.parse::<f64>().is_ok(), "{first}");
    b.wait_for(
        "a notification's new value",
        &text_where(temp, &format!("t !== {}", js_string(&first))),
    );

    // Write (typed), execute, discover: each outcome shown.
    b.type_into("[data-input=\"/3/0/13\"]", "1700000123");
    b.click("button[data-op=\"write\"][data-path=\"/3/0/13\"]");
    let w = b.wait_for(
        "the write's outcome",
        &text_of(".result[data-op=\"write\"] .outcome.ok"),
    );
    assert!(w.as_str().unwrap().starts_with("2.04"), "{w}");
    b.type_into("[data-input=\"/3/0/13\"]", "soon");
    b.click("button[data-op=\"write\"][data-path=\"/3/0/13\"]");
    b.wait_for(
        "a mistyped write refused on the page",
        "return [...document.querySelectorAll('.result[data-op=\"write\"] .outcome.error')].some(e => e.textContent.includes('integer'))",
    );
    b.click("button[data-op=\"execute\"][data-path=\"/3/0/4\"]");
    let x = b.wait_for(
        "the execute's outcome",
        &text_of(".result[data-op=\"execute\"] .outcome.ok"),
    );
    assert!(x.as_str().unwrap().starts_with("2.04"), "{x}");
    b.click("button[data-op=\"discover\"][data-path=\"/3303/0\"]");
    let d = b.wait_for(
        "the discover's outcome",
        &text_of(".result[data-op=\"discover\"] .outcome.ok"),
    );
    assert!(d.as_str().unwrap().contains("/3303/0/5700"), "{d}");
    b.js(
        "document.querySelector('[data-object=\"3303\"]').scrollIntoView()",
        &[],
    );
    screenshot(&b, "device");
    b.click("button[data-op=\"cancel-observe\"][data-path=\"/3303/0/5700\"]");
    b.wait_for(
        "the cancel's outcome",
        &text_of(".result[data-op=\"cancel-observe\"] .outcome.ok"),
    );

    // Write-attributes, create and delete instance, through their dialogs.
    b.click("button[data-op=\"write-attr\"][data-path=\"/3303/0/5700\"]");
    b.type_into("dialog input[name=\"pmin\"]", "5");
    b.type_into("dialog input[name=\"gt\"]", "25.5");
    b.click("dialog button[value=\"ok\"]");
    let a = b.wait_for(
        "the write-attributes' outcome",
        &text_of(".result[data-op=\"write-attr\"] .outcome.ok"),
    );
    assert!(a.as_str().unwrap().starts_with("2.04"), "{a}");
    b.click("button[data-op=\"create\"][data-path=\"/3303\"]");
    b.type_into("dialog input[name=\"iid\"]", "1");
    b.type_into("dialog [data-input=\"c-5750\"]", "room");
    b.click("dialog button[value=\"ok\"]");
    let c = b.wait_for(
        "the create's outcome",
        &text_of(".result[data-op=\"create\"] .outcome.ok"),
    );
    assert!(c.as_str().unwrap().starts_with("2.01"), "{c}");
    b.click("button[data-op=\"delete\"][data-path=\"/3303/0\"]");
    b.accept_alert();
    let d = b.wait_for(
        "the delete's outcome",
        &text_of(".result[data-op=\"delete\"] .outcome.ok"),
    );
    assert!(d.as_str().unwrap().starts_with("2.02"), "{d}");

    // The event stream shows the registration, the notifications and the outcomes;
    // filtered by device.
    b.goto(&format!("http://{}/#/events", gw.api));
    b.find(".event[data-msgtype=\"register\"][data-clientid=\"console-dev\"]");
    b.find(".event[data-msgtype=\"notify\"][data-clientid=\"console-dev\"]");
    b.find(".event[data-msgtype=\"register\"][data-clientid=\"meter-7\"]");
    b.type_into("#event-filter", "meter-7");
    b.wait_for(
        "the filter applied",
        "return document.querySelectorAll('.event').length > 0 && [...document.querySelectorAll('.event')].every(e => e.dataset.clientid === 'meter-7')",
    );
    b.type_into("#event-filter", "");
    b.wait_for(
        "every device again",
        "return document.querySelector('.event[data-clientid=\"console-dev\"]') !== null",
    );
    screenshot(&b, "events");

    // The gateway page: metrics, listeners, configuration (edited and applied).
    b.goto(&format!("http://{}/#/gateway", gw.api));
    b.wait_for(
        "the device count",
        &text_where("[data-metric=\"lwm2m_endpoints\"] .v", "t === '2'"),
    );
    b.wait_for(
        "the listeners",
        "return document.querySelector('#listeners tbody')?.textContent.includes('udp')",
    );
    b.wait_for(
        "the configuration",
        "return document.querySelector('#config').value.includes('lifetime_max')",
    );
    b.wait_for(
        "the bootstrap configurations",
        &text_where(
            "#bootstrap-configs",
            "t.includes('console-dev') && t.includes('coap://127.0.0.1:5783')",
        ),
    );
    b.js(
        "const t = document.querySelector('#config'); const c = JSON.parse(t.value); c.lifetime_max = '12h'; t.value = JSON.stringify(c, null, 2);",
        &[],
    );
    b.click("#config-save");
    b.wait_for("the change applied", &text_of("#config-status.ok"));
    let (_, cfg) = request(gw.api, "GET", GW, ADMIN, b"");
    assert_eq!(json(&cfg)["lifetime_max"], "12h");
    b.js(
        "const t = document.querySelector('#config'); const c = JSON.parse(t.value); c.lifetime_min = 'soon'; t.value = JSON.stringify(c);",
        &[],
    );
    b.click("#config-save");
    let err = b.wait_for("the refusal", &text_of("#config-status.error"));
    assert!(err.as_str().unwrap().contains("lifetime_min"), "{err}");
    b.click("#config-reload");
    b.wait_for(
        "the configuration reloaded",
        "return document.querySelector('#config').value.includes('\"12h\"')",
    );
    b.js("window.scrollTo(0, 0)", &[]);
    b.wait_for(
        "a rate (two readings of /metrics)",
        &text_where(
            "[data-metric=\"lwm2m_registrations_total\"] .v",
            "t !== '–' && t !== ''",
        ),
    );
    screenshot(&b, "gateway");

    // Paging: 20 devices a page.
    let mut bulk = common::fleet::fleet(gw.udp, "bulk", 25);
    let out = bulk.register_all(None, Duration::from_secs(20)).unwrap();
    assert_eq!(out.ok, 25, "{out:?}");
    b.goto(&format!("http://{}/#/devices", gw.api));
    b.wait_for(
        "27 devices",
        &text_where("#device-count", "t === '27 devices'"),
    );
    b.wait_for(
        "a full first page",
        "return document.querySelectorAll('#devices tbody tr').length === 20",
    );
    b.click("#device-next");
    b.wait_for(
        "the second page",
        "return document.querySelectorAll('#devices tbody tr').length === 7 && document.querySelector('#device-page').textContent === 'page 2'",
    );
    b.click("#device-prev");
    b.wait_for(
        "the first page again",
        "return document.querySelectorAll('#devices tbody tr').length === 20",
    );

    // Credentials the API refuses (a changed secret, say) return to the login form.
    b.js(
        "sessionStorage.setItem('lwm2m-console.auth', btoa('admin:stale'))",
        &[],
    );
    b.goto(&format!("http://{}/#/devices", gw.api));
    b.wait_for(
        "the login form again",
        "return !document.querySelector('#login').hidden",
    );
    let msg = b.wait_for("why", &text_of("#login-error"));
    assert!(msg.as_str().unwrap().contains("log in again"), "{msg}");
}
