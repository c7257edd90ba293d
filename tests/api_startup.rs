//! The management API as the real binary starts it: a taken port named as the
//! API's at start.

mod common;

use common::gateway::GatewayProc;
use std::net::TcpListener;

#[test]
fn a_taken_api_port_is_named_at_start() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut gw = GatewayProc::spawn_cli(&["--api-bind", &addr], &[]);
    let status = gw.wait_exit();
    assert!(!status.success(), "{status}");
    let log = gw.log();
    assert!(
        log.contains(&format!("management API listener (api.bind) on {addr}: ")),
        "{log}"
    );
    assert!(log.contains("in use"), "{log}");
    assert!(!log.contains("UDP listener on"), "{log}");
    drop(taken);
}
