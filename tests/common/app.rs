//! An MQTT application of the end-to-end tests: publishes commands with increasing
//! reqIDs and reads what the gateway publishes about them.

use super::gateway::GatewayProc;
use super::mqtt_client::MqttClient;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

pub struct App {
    pub mq: MqttClient,
    req: u32,
}

impl App {
    /// Subscribed to every uplink topic of the gateway's broker as `client_id`.
    pub fn new(gw: &GatewayProc, client_id: &str) -> Self {
        let mq = MqttClient::subscriber(gw.mqtt, client_id, "lwm2m/+/up/#", 0);
        App { mq, req: 0 }
    }

    /// Publishes `{"reqID":N,"msgType":..,"data":..}` for `ep`; returns N.
    pub fn send(&mut self, ep: &str, msg_type: &str, data: &str) -> u32 {
        self.req += 1;
        let json = format!(
            r#"{{"reqID":{},"msgType":"{msg_type}","data":{data}}}"#,
            self.req
        );
        self.mq
            .publish(&format!("lwm2m/{ep}/dn/cmd"), json.as_bytes(), 0)
            .unwrap();
        self.req
    }

    /// The next message that is not a register message.
    pub fn next(&mut self) -> (String, simd_json::OwnedValue) {
        self.mq
            .next_json(WAIT, |_, v| v["msgType"] != "register")
            .expect("an MQTT message")
    }
}
