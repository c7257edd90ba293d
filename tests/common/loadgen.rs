//! The bundled load generator's DTLS devices against the gateway binary.

use super::gateway::{Broker, GatewayProc};
use lwm2m_loadgen::{Report, RunOpts};

/// Starts the gateway (embedded broker, auto-observe) with a DTLS listener whose
/// PSK file holds the devices of `opts`, `listener_extra` lines added to the
/// listener's table, and points `opts` at its DTLS listener and broker. The
/// folder returned holds the PSK file: keep it while the gateway runs.
pub fn start_dtls_gateway(
    opts: &mut RunOpts,
    listener_extra: &str,
) -> (GatewayProc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk.txt");
    lwm2m_loadgen::dtls::write_psk_file(opts, &psk).expect("PSK file");
    let extra = format!(
        "auto_observe = true\n[listeners.dtls.default]\nbind = \"127.0.0.1:0\"\npsk_file = \"{}\"\n{listener_extra}",
        psk.display()
    );
    let gw = GatewayProc::start(Broker::Embedded, &extra);
    opts.gateway = gw.dtls_addr();
    opts.mqtt = Some(gw.mqtt);
    (gw, dir)
}

/// The report, then the end of the gateway's log.
pub fn context(r: &Report, gw: &GatewayProc) -> String {
    let log = gw.log();
    format!(
        "{}\ngateway log:\n{}",
        r.table(),
        &log[log.len().saturating_sub(4000)..]
    )
}
