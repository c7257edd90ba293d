//! Interop with an MQTT application this project did not write: PyPI's `emqxlwm2m`
//! 0.6.0 (written for EMQX's LwM2M gateway), unchanged, drives a device through the
//! running gateway with read, write, discover and observe. The device is npm's
//! `lwm2m-node-lib` client (tests/interop/node/client.js). Needs `node`, `npm ci` in
//! tests/interop/node and the venv of tests/interop/python (scripts/test.sh).

mod common;
#[path = "interop/support.rs"]
mod support;

use common::gateway::{Broker, GatewayProc};
use std::process::Command;
use std::time::Duration;
use support::Proc;

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn emqxlwm2m_drives_a_device_through_the_running_gateway() {
    let python = support::venv_python();
    let gw = GatewayProc::start(Broker::Embedded, "");
    // No "up" in the name: emqxlwm2m tells uplink from downlink by `"up" in topic`.
    let ep = "pyapp-dev1";
    let mut cmd = Command::new(&python);
    cmd.current_dir(support::interop_dir("python"))
        .arg("emqxlwm2m_check.py")
        .args(["--host", &gw.mqtt.ip().to_string()])
        .args(["--port", &gw.mqtt.port().to_string()])
        .args(["--ep", ep])
        .args(["--timeout", "10"]);
    let mut py = Proc::spawn("emqxlwm2m_check.py", cmd);

    // The device registers once emqxlwm2m listens, so that it sees the register message.
    py.expect("SUBSCRIBED (or DONE)", WAIT, |l| {
        l == "SUBSCRIBED" || l.starts_with("DONE")
    });
    let mut node = support::node_client(gw.udp, ep);
    node.expect("REGISTERED <location>", WAIT, |l| {
        l.starts_with("REGISTERED ")
    });

    // Once emqxlwm2m has its observation, change the value twice on the device.
    let fail = |py: &Proc, node: &Proc| format!("{}\n{}", py.transcript(), node.transcript());
    py.expect("OBSERVING (or DONE)", WAIT, |l| {
        l == "OBSERVING" || l.starts_with("DONE")
    });
    if py.seen.last().map(String::as_str) == Some("OBSERVING") {
        node.send("set /3303/0/5700 25.5");
        node.expect_line("SET /3303/0/5700 25.5", WAIT);
        node.send("set /3303/0/5700 26.5");
    }
    let status = py.wait(WAIT);
    let out = py.seen.join("\n");
    assert!(
        status.success(),
        "emqxlwm2m_check.py: {status}\n{}",
        fail(&py, &node)
    );
    assert_eq!(
        py.seen.last().map(String::as_str),
        Some("DONE ok"),
        "{}",
        fail(&py, &node)
    );
    assert!(!out.contains("FAIL"), "{}", fail(&py, &node));
    for step in [
        "register",
        "read-code",
        "read",
        "read-float",
        "write",
        "write-readback",
        "discover-code",
        "discover",
        "observe-code",
        "observe",
        "notify",
        "notify-seq",
    ] {
        assert!(
            py.seen
                .iter()
                .any(|l| l.starts_with(&format!("OK {step} "))),
            "step {step} did not pass\n{}",
            fail(&py, &node)
        );
    }
    assert_eq!(
        py.seen
            .iter()
            .filter(|l| l.starts_with("OK notify "))
            .count(),
        2,
        "{}",
        fail(&py, &node)
    );

    // The device saw the commands emqxlwm2m sent.
    for line in [
        "READ /3/0/1 Lightweight M2M Client",
        "WRITE /3/0/15 Europe/Paris",
        "READ /3/0/15 Europe/Paris",
    ] {
        assert!(
            node.seen.iter().any(|l| l == line),
            "the device did not log {line:?}\n{}",
            node.transcript()
        );
    }
}
