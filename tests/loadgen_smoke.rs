//! CI smoke run of the bundled load generator against the built gateway: a few
//! hundred devices for a few seconds, checking correctness only (every device
//! registered and published, every command answered once, every notification
//! delivered, every device de-registered), never speed. Also queue-mode devices
//! (every command held until the device's Update, then answered) and DTLS devices
//! (every handshake completed, then the same scenarios over the sessions), and the
//! command floor baseline through Mosquitto (every command relayed back).

mod common;

use common::gateway::{Broker, GatewayProc};
use common::loadgen::{context, start_dtls_gateway};
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
        command_mix: lwm2m_loadgen::driver::parse_mix("read=2,write=1,execute=1,observe=1")
            .unwrap(),
        deregister: true,
        quiet: true,
        prefix: "smoke".into(),
        devices_offset: 5_000,
        ..RunOpts::default()
    };
    let r = lwm2m_loadgen::run(opts).expect("load run");
    let ctx = || context(&r, &gw);
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

/// A gateway admitting fewer registrations per second than the storm offers answers
/// the rest 5.03 with Max-Age; the devices register again after it, as real clients
/// do, and in the end every one is registered and published exactly once.
#[test]
fn loadgen_devices_retry_a_register_answered_5_03() {
    let mut gw = GatewayProc::start_full(Broker::Embedded, "", "", "max_conn_rate = 200");
    let opts = RunOpts {
        gateway: gw.udp,
        mqtt: Some(gw.mqtt),
        register: 600,
        rate: 0.0,
        register_retries: 10,
        quiet: true,
        prefix: "smokeretry".into(),
        devices_offset: 9_000,
        ..RunOpts::default()
    };
    let r = lwm2m_loadgen::run(opts).expect("load run");
    let ctx = || context(&r, &gw);
    assert!(r.passed, "{}", ctx());
    let reg = r.registration.as_ref().expect("registration report");
    assert_eq!(reg.ok, 600, "{}", ctx());
    assert_eq!(reg.failed, 0, "{}", ctx());
    assert!(
        reg.service_unavailable > 0,
        "the storm outran max_conn_rate\n{}",
        ctx()
    );
    assert_eq!(reg.retried, reg.service_unavailable, "{}", ctx());
    assert_eq!(reg.mqtt_registered_endpoints, Some(600), "{}", ctx());
    assert_eq!(
        reg.mqtt_register_msgs,
        Some(600),
        "one register message each\n{}",
        ctx()
    );
    assert!(gw.stop().success());
}

#[test]
fn loadgen_smoke_queue_mode_q_parameter() {
    queue_mode_run("1.1", "smokeq", 7_000);
}

#[test]
fn loadgen_smoke_queue_mode_uq_binding() {
    queue_mode_run("1.0", "smokeu", 8_000);
}

/// Queue-mode devices registering with LwM2M `version` (1.0: `b=UQ`, 1.1: `Q`).
fn queue_mode_run(version: &str, prefix: &str, devices_offset: u32) {
    // Devices awake 1 s after they speak, Updates every 3 s: most commands wait.
    let mut gw = GatewayProc::start(Broker::Embedded, "qmode_time_window = 1");
    let opts = RunOpts {
        lwm2m: version.into(),
        gateway: gw.udp,
        mqtt: Some(gw.mqtt),
        register: 40,
        rate: 400.0,
        steady: 4.0,
        update_fraction: 0.01, // an Update from every device every 3 s
        commands: 20.0,
        queue_mode: true,
        qmode_window: 1.0,
        observe_wait: 0.5,
        deregister: true,
        quiet: true,
        prefix: prefix.into(),
        devices_offset,
        ..RunOpts::default()
    };
    let r = lwm2m_loadgen::run(opts).expect("load run");
    eprintln!("{}", r.table());
    let ctx = || context(&r, &gw);
    assert!(r.passed, "{}", ctx());
    let reg = r.registration.as_ref().expect("registration report");
    assert_eq!(reg.ok, 40, "{}", ctx());
    assert_eq!(reg.mqtt_registered_endpoints, Some(40), "{}", ctx());

    let cmd = r.commands.as_ref().expect("command report");
    assert!(cmd.sent > 0, "{}", ctx());
    assert_eq!(cmd.answered, cmd.sent, "{}", ctx());
    assert_eq!(
        (cmd.errors, cmd.timed_out, cmd.duplicates),
        (0, 0, 0),
        "{}",
        ctx()
    );
    let q = r.queue.as_ref().expect("queue report");
    assert_eq!(q.commands_delivered, Some(cmd.sent), "{}", ctx());
    assert_eq!(q.commands_delivered_asleep, Some(0), "{}", ctx());
    assert_eq!(q.requests_while_asleep, 0, "{}", ctx());
    assert!(
        q.commands_held.unwrap_or(0) > 0,
        "some commands waited for an Update\n{}",
        ctx()
    );
    let lat = q.queue_latency.expect("queueing latency");
    assert_eq!(lat.count, cmd.sent, "{}", ctx());
    assert!(lat.max_us > 500_000, "a held command waited\n{}", ctx());
    let st = r.steady.as_ref().expect("steady report");
    assert_eq!(st.notify_sent, 0, "silent between Updates\n{}", ctx());
    assert_eq!(r.deregistered, Some(40), "{}", ctx());
    assert!(gw.stop().success());
}

#[test]
fn loadgen_smoke_dtls() {
    dtls_smoke(false);
}

/// The same run with devices that offer a DTLS Connection ID (RFC 9146): every
/// session negotiates one and everything works over CID records.
#[test]
fn loadgen_smoke_dtls_with_connection_id() {
    dtls_smoke(true);
}

fn dtls_smoke(cid: bool) {
    let mut opts = RunOpts {
        register: 30,
        rate: 300.0,
        steady: 3.0,
        update_fraction: 0.01,
        notify_rate: 60.0,
        commands: 30.0,
        dtls: true,
        psk_key: "000102030405060708090a0b0c0d0e0f".into(),
        deregister: true,
        quiet: true,
        dtls_cid: cid,
        prefix: if cid { "smokecid" } else { "smoked" }.into(),
        devices_offset: 9_000,
        ..RunOpts::default()
    };
    let (mut gw, _psk_dir) = start_dtls_gateway(&mut opts, "");
    let r = lwm2m_loadgen::run(opts).expect("load run");
    eprintln!("{}", r.table());
    let ctx = || context(&r, &gw);
    assert!(r.passed, "{}", ctx());

    let d = r.dtls.as_ref().expect("DTLS report");
    assert_eq!(
        (d.handshakes_started, d.handshakes_ok, d.handshakes_failed),
        (30, 30, 0),
        "{}",
        ctx()
    );
    assert_eq!(d.session_errors, 0, "{}", ctx());
    assert_eq!(d.handshake_latency.count, 30, "{}", ctx());
    let reg = r.registration.as_ref().expect("registration report");
    assert_eq!(reg.ok, 30, "{}", ctx());
    assert_eq!(reg.mqtt_registered_endpoints, Some(30), "{}", ctx());

    let st = r.steady.as_ref().expect("steady report");
    assert!(st.updates_sent > 0, "{}", ctx());
    assert_eq!(st.updates_ok, st.updates_sent, "{}", ctx());
    assert!(st.observations >= 30, "auto-observe over DTLS\n{}", ctx());
    assert!(st.notify_sent > 0, "{}", ctx());
    assert_eq!(st.mqtt_notify_received, Some(st.notify_sent), "{}", ctx());

    let cmd = r.commands.as_ref().expect("command report");
    assert!(cmd.sent > 0, "{}", ctx());
    assert_eq!(cmd.answered, cmd.sent, "{}", ctx());
    assert_eq!((cmd.errors, cmd.timed_out), (0, 0), "{}", ctx());
    assert_eq!(r.deregistered, Some(30), "{}", ctx());
    let negotiated = gw
        .metrics()
        .sum("lwm2m_dtls_connection_id_total", &[("event", "negotiated")]);
    assert_eq!(negotiated, if cid { 30.0 } else { 0.0 });
    assert!(gw.stop().success());
}

/// The command floor baseline (`mqtt-relay`) against Mosquitto: every command relayed
/// back and timed.
#[test]
fn loadgen_smoke_mqtt_relay() {
    let broker = common::mosquitto::Mosquitto::start();
    let o = lwm2m_loadgen::relay::RelayOpts {
        mqtt: broker.addr(),
        rate: 500.0,
        seconds: 1.0,
        size: 150,
        json: false,
    };
    let r = lwm2m_loadgen::relay::run(&o).expect("relay run");
    assert_eq!(r.sent, 500, "{}", r.table());
    assert_eq!(r.answered, 500, "{}", r.table());
    assert!(r.passed);
    assert_eq!(r.rtt.count, 500);
}
