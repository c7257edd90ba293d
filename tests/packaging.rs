//! What ships for running the gateway as a service: the systemd unit
//! (`etc/systemd/lwm2m-gateway.service`) passes `systemd-analyze verify` with no
//! complaint (run when the tool exists; Debian's `systemd` package has it).

use std::process::Command;

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/etc/systemd/lwm2m-gateway.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/lwm2m-gateway "));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: the unit was not verified");
        return;
    }
    // Verified with ExecStart pointing at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lwm2m-gateway.service");
    let unit = unit.replace(
        "/usr/local/bin/lwm2m-gateway",
        env!("CARGO_BIN_EXE_lwm2m-gateway"),
    );
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lwm2m-gateway.service"))
        .collect();
    assert!(out.status.success() && complaints.is_empty(), "{stderr}");
}
