//! CI smoke run of the bundled load generator against the built gateway: a few
//! hundred devices for a few seconds, checking correctness only (every device
//! registered and published, every command answered once, every notification
//! delivered, every device de-registered), never speed.

mod common;

use common::gateway::{Broker, GatewayProc};
use lwm2m_loadgen::RunOpts;

#[test]
fn loadgen_smoke_against_the_gateway() {
    let mut gw = GatewayProc::start(Broker::Embedded, "auto_observe = true");
    let opts = RunOpts {
        gateway: gw.udp,
        mqtt: Some(gw.mqtt),
        register: 300,
        rate: 600.0,
        steady: 3.0,
        update_fraction: 0.01, // an Update from every device every 3 s
        notify_rate: 300.0,
        commands: 100.0,
        expect_all: true,
        deregister: true,
        quiet: true,
        prefix: "smoke".into(),
        devices_offset: 5_000,
        ..RunOpts::default()
    };
    let r = lwm2m_loadgen::run(opts).expect("load run");
    let table = r.table();
    let log = gw.log();
    let ctx = || {
        format!(
            "{table}\ngateway log:\n{}",
            &log[log.len().saturating_sub(4000)..]
        )
    };
    assert!(r.passed, "{}", ctx());

    let reg = r.registration.as_ref().expect("registration report");
    assert_eq!(reg.ok, 300, "{}", ctx());
    assert_eq!(reg.mqtt_registered_endpoints, Some(300), "{}", ctx());

    let st = r.steady.as_ref().expect("steady report");
    assert!(st.updates_sent > 0, "{}", ctx());
    assert_eq!(st.updates_ok, st.updates_sent, "{}", ctx());
    assert!(
        st.observations >= 300,
        "auto-observe reached every device\n{}",
        ctx()
    );
    assert!(st.notify_sent > 0, "{}", ctx());
    assert_eq!(st.mqtt_notify_received, Some(st.notify_sent), "{}", ctx());

    let cmd = r.commands.as_ref().expect("command report");
    assert!(cmd.sent > 0, "{}", ctx());
    assert_eq!(cmd.answered, cmd.sent, "{}", ctx());
    assert_eq!(
        (cmd.errors, cmd.timed_out, cmd.duplicates),
        (0, 0, 0),
        "{}",
        ctx()
    );

    assert_eq!(r.deregistered, Some(300), "{}", ctx());
    assert!(gw.stop().success());
}
