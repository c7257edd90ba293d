//! DTLS session resumption end to end: the bundled load generator's DTLS devices
//! register over full handshakes, then drop their session before each Update and
//! come back offering it (`--dtls-resume`); the gateway binary resumes every one
//! (abbreviated handshake, counted) and the Updates and notifications work over
//! the resumed sessions.

mod common;

use common::loadgen::{context, start_dtls_gateway};
use lwm2m_loadgen::RunOpts;

#[test]
fn devices_that_drop_their_session_come_back_resuming_it() {
    let mut opts = RunOpts {
        register: 30,
        rate: 300.0,
        steady: 4.0,
        update_fraction: 0.01,
        notify_rate: 30.0,
        dtls: true,
        dtls_resume: true,
        psk_key: "000102030405060708090a0b0c0d0e0f".into(),
        deregister: true,
        quiet: true,
        prefix: "resume".into(),
        devices_offset: 9_500,
        ..RunOpts::default()
    };
    let (mut gw, _psk_dir) = start_dtls_gateway(&mut opts, "session_lifetime = \"1h\"\n");
    let r = lwm2m_loadgen::run(opts).expect("load run");
    let ctx = context(&r, &gw);
    assert!(r.passed, "{ctx}");

    let d = r.dtls.as_ref().expect("DTLS report");
    assert!(d.reconnects > 0, "{ctx}");
    assert_eq!(d.resumed, d.reconnects, "every reconnection resumed\n{ctx}");
    assert_eq!(d.handshakes_ok, 30 + d.reconnects, "{ctx}");
    assert_eq!(d.handshakes_failed, 0, "{ctx}");
    let reg = r.registration.as_ref().expect("registration report");
    assert_eq!(reg.ok, 30, "{ctx}");
    let st = r.steady.as_ref().expect("steady report");
    assert!(st.updates_sent > 0, "{ctx}");
    assert_eq!(st.updates_ok, st.updates_sent, "{ctx}");
    assert_eq!(st.mqtt_notify_received, Some(st.notify_sent), "{ctx}");
    assert_eq!(r.deregistered, Some(30), "{ctx}");

    let m = gw.metrics();
    let resumed = m.sum("lwm2m_dtls_resumption_total", &[("event", "resumed")]);
    assert_eq!(resumed, d.resumed as f64, "{ctx}");
    let completed = m.sum("lwm2m_dtls_handshakes_completed_total", &[]);
    assert_eq!(
        completed,
        (30 + d.reconnects) as f64,
        "30 full handshakes\n{ctx}"
    );
    for refused in ["unknown", "expired", "revoked"] {
        let n = m.sum("lwm2m_dtls_resumption_total", &[("event", refused)]);
        assert_eq!(n, 0.0, "{refused}\n{ctx}");
    }
    assert_eq!(
        m.sum("lwm2m_dtls_session_cache_entries", &[]),
        30.0,
        "{ctx}"
    );
    assert!(gw.stop().success());
}
