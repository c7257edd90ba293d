//! Interop with an LwM2M client this project did not write: npm's `lwm2m-node-lib`
//! 1.4.0 (tests/interop/node/client.js) registers with the running gateway, and
//! this test, as the MQTT application, reads, writes, executes, observes and sees
//! it de-register. Needs `node` and `npm ci` in tests/interop/node (scripts/test.sh).

mod common;
#[path = "interop/support.rs"]
mod support;

use common::gateway::{Broker, GatewayProc};
use common::mqtt_client::MqttClient;
use simd_json::prelude::*;
use simd_json::OwnedValue;
use std::time::{Duration, Instant};
use support::Proc;

const WAIT: Duration = Duration::from_secs(10);

/// The MQTT application: commands on `lwm2m/{ep}/dn/cmd`, replies below `lwm2m/{ep}/up/`.
struct App {
    mq: MqttClient,
    ep: String,
    req: u64,
    /// Every message received, for failure messages.
    log: Vec<String>,
}

impl App {
    fn send(&mut self, msg_type: &str, data: &str) -> u64 {
        self.req += 1;
        let json = format!(
            r#"{{"reqID":{},"msgType":"{msg_type}","data":{data}}}"#,
            self.req
        );
        self.mq
            .publish(&format!("lwm2m/{}/dn/cmd", self.ep), json.as_bytes(), 1)
            .expect("publish a command");
        self.req
    }

    /// The next message for which `want(topic, json)` holds; others are skipped.
    fn wait(
        &mut self,
        what: &str,
        node: &Proc,
        want: impl Fn(&str, &OwnedValue) -> bool,
    ) -> (String, OwnedValue) {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some((topic, mut payload)) = self.mq.recv_publish(left) else {
                break;
            };
            self.log
                .push(format!("{topic} {}", String::from_utf8_lossy(&payload)));
            let Ok(v) = simd_json::to_owned_value(&mut payload) else {
                continue;
            };
            if want(&topic, &v) {
                return (topic, v);
            }
        }
        panic!(
            "no MQTT message {what} within {WAIT:?}; received:\n{}\n{}",
            self.log.join("\n"),
            node.transcript()
        );
    }

    /// The response to command `id` on the response topic.
    fn response(&mut self, id: u64, node: &Proc) -> OwnedValue {
        let ep = self.ep.clone();
        let (_, v) = self.wait(&format!("answering reqID {id}"), node, |t, v| {
            t == format!("lwm2m/{ep}/up/resp")
                && v.get("reqID").and_then(|r| r.as_u64()) == Some(id)
        });
        v
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn lwm2m_node_lib_client_through_the_running_gateway() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let ep = "nodelib1";
    let mut mq = MqttClient::connect(gw.mqtt, "interop-node-app", true).expect("connect");
    mq.subscribe(&format!("lwm2m/{ep}/up/#"), 1)
        .expect("subscribe");
    let mut app = App {
        mq,
        ep: ep.to_string(),
        req: 0,
        log: Vec::new(),
    };
    let mut node = support::node_client(gw.udp, ep);

    // Register: the client's Register becomes the register message.
    node.expect("REGISTERED <location>", WAIT, |l| {
        l.starts_with("REGISTERED ")
    });
    let (topic, v) = app.wait("register", &node, |_, v| v["msgType"] == "register");
    assert_eq!(topic, format!("lwm2m/{ep}/up/resp"));
    let d = &v["data"];
    assert_eq!(d["ep"], ep);
    assert_eq!(d["lt"].as_u64(), Some(300));
    assert_eq!(d["lwm2m"], "1.0");
    assert_eq!(d["b"], "U");
    assert_eq!(d["alternatePath"], "/");
    assert_eq!(d["objectList"], simd_json::json!(["/3/0", "/3303/0"]));

    // Read: the values the client set, typed from the object definitions.
    let id = app.send("read", r#"{"path":"/3/0/1"}"#);
    let v = app.response(id, &node);
    assert_eq!(v["msgType"], "read");
    assert_eq!(v["data"]["code"], "2.05", "{v:?}");
    assert_eq!(v["data"]["reqPath"], "/3/0/1");
    assert_eq!(v["data"]["content"][0]["path"], "/3/0/1");
    assert_eq!(v["data"]["content"][0]["value"], "Lightweight M2M Client");
    node.expect_line("READ /3/0/1 Lightweight M2M Client", WAIT);
    let id = app.send("read", r#"{"path":"/3303/0/5700"}"#);
    let v = app.response(id, &node);
    assert_eq!(
        v["data"]["content"][0]["value"].as_f64(),
        Some(21.5),
        "{v:?}"
    );

    // Write a String resource (TLV on the wire), then read it back.
    let id = app.send(
        "write",
        r#"{"path":"/3/0/15","type":"String","value":"Europe/Paris"}"#,
    );
    let v = app.response(id, &node);
    assert_eq!(
        (v["msgType"].as_str(), v["data"]["code"].as_str()),
        (Some("write"), Some("2.04")),
        "{v:?}"
    );
    let tlv = format!("c80f0c{}", hex(b"Europe/Paris"));
    node.expect_line(
        &format!("WRITE-RAW /3/0/15 cf=application/vnd.oma.lwm2m+tlv hex={tlv}"),
        WAIT,
    );
    node.expect_line("WRITE /3/0/15 Europe/Paris", WAIT);
    let id = app.send("read", r#"{"path":"3/0/15"}"#);
    let v = app.response(id, &node);
    assert_eq!(v["data"]["content"][0]["value"], "Europe/Paris", "{v:?}");

    // Execute: the client's execute handler runs with the arguments.
    let id = app.send("execute", r#"{"path":"/3/0/4","args":"soft"}"#);
    let v = app.response(id, &node);
    assert_eq!(
        (v["msgType"].as_str(), v["data"]["code"].as_str()),
        (Some("execute"), Some("2.04")),
        "{v:?}"
    );
    node.expect_line("EXECUTE /3/0/4 args=soft", WAIT);

    // Observe: the first value in the response, each change as a notification.
    let obs = app.send("observe", r#"{"path":"/3303/0/5700"}"#);
    let v = app.response(obs, &node);
    assert_eq!(v["msgType"], "observe");
    assert_eq!(v["data"]["code"], "2.05", "{v:?}");
    assert_eq!(v["data"]["content"][0]["value"].as_f64(), Some(21.5));
    let mut last_seq = 0;
    for value in [22.5, 23.5, 24.5] {
        node.send(&format!("set /3303/0/5700 {value}"));
        let (topic, v) = app.wait(&format!("notifying {value}"), &node, |_, v| {
            v["msgType"] == "notify"
        });
        assert_eq!(topic, format!("lwm2m/{ep}/up/notify"));
        assert_eq!(v["reqID"].as_u64(), Some(obs), "{v:?}");
        assert_eq!(v["data"]["reqPath"], "/3303/0/5700");
        assert_eq!(v["data"]["code"], "2.05");
        assert_eq!(v["data"]["content"][0]["path"], "/3303/0/5700");
        assert_eq!(
            v["data"]["content"][0]["value"].as_f64(),
            Some(value),
            "{v:?}"
        );
        let seq = v["seqNum"].as_u64().expect("seqNum");
        assert!(seq > last_seq, "seqNum {seq} after {last_seq}");
        last_seq = seq;
    }

    // De-register: the gateway answers 2.02 Deleted, as the client reports, and
    // forgets the endpoint.
    node.send("unregister");
    node.expect_line("UNREGISTER-CODE 2.02", WAIT);
    node.expect_line("UNREGISTERED", WAIT);
    let id = app.send("read", r#"{"path":"/3/0/1"}"#);
    let v = app.response(id, &node);
    assert_eq!(v["data"]["code"], "4.00", "{v:?}");
    assert_eq!(v["data"]["codeMsg"], "bad_request");
    assert!(
        v["data"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not registered")),
        "{v:?}"
    );
    assert!(
        !node.seen.iter().any(|l| l.starts_with("ERROR")),
        "{}",
        node.transcript()
    );
}
