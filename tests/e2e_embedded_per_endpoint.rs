//! Per-endpoint command subscriptions on the embedded broker, well beyond the ~10,000
//! filters where it used to stop keeping up (rumqttd looked at every filter for each new
//! topic and at every topic for each new filter, so each register message and each
//! subscription cost more as the fleet grew; vendor/README.md): a storm of devices with
//! the loadgen, every register message delivered, then a read command to a sample of
//! registered devices, every one answered.

mod common;

use common::gateway::{Broker, GatewayProc};
use common::loadgen::context;
use lwm2m_loadgen::RunOpts;

const DEVICES: usize = 15_000;

#[test]
fn embedded_broker_holds_a_filter_per_device_beyond_ten_thousand() {
    let mut gw = GatewayProc::start_with(Broker::Embedded, "", "subscribe = \"per_endpoint\"");
    let opts = RunOpts {
        gateway: gw.udp,
        mqtt: Some(gw.mqtt),
        register: DEVICES,
        rate: 5_000.0,
        // A read to random registered devices, 100/s for 2 s, once all registered.
        steady: 2.0,
        update_fraction: 0.0,
        commands: 100.0,
        register_timeout: 60.0,
        drain: 1.0,
        quiet: true,
        prefix: "embpe".into(),
        devices_offset: 40_000,
        ..RunOpts::default()
    };
    let r = lwm2m_loadgen::run(opts).expect("load run");
    let ctx = || context(&r, &gw);
    assert!(r.passed, "{}", ctx());
    let reg = r.registration.as_ref().expect("registration report");
    assert_eq!(reg.ok, DEVICES as u64, "{}", ctx());
    assert_eq!(
        reg.mqtt_registered_endpoints,
        Some(DEVICES as u64),
        "{}",
        ctx()
    );

    let cmd = r.commands.as_ref().expect("command report");
    assert!(cmd.sent >= 100, "{}", ctx());
    assert_eq!(cmd.answered, cmd.sent, "{}", ctx());
    assert_eq!(
        (cmd.errors, cmd.timed_out, cmd.duplicates),
        (0, 0, 0),
        "{}",
        ctx()
    );
    assert!(gw.stop().success());
}
