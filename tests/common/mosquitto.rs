//! Runs Debian's `mosquitto` for a test: a free 127.0.0.1 port, a generated configuration in a
//! temporary directory, optional persistence and TLS. Drop kills it.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/sbin/mosquitto";

/// TLS listener files (PEM).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Plain TCP, no persistence.
    pub fn start() -> Self {
        Self::start_with(false, None)
    }

    /// With persistence in the temporary directory: sessions and queued QoS>=1 messages survive
    /// a SIGTERM restart.
    pub fn start_persistent() -> Self {
        Self::start_with(true, None)
    }

    /// A TLS listener with the given certificate and key.
    pub fn start_tls(tls: TlsFiles) -> Self {
        Self::start_with(false, Some(tls))
    }

    /// Plain TCP, no persistence, with these extra `log_type`s (e.g. `debug`: every packet).
    pub fn start_logging(log_types: &[&str]) -> Self {
        Self::start_full(false, None, log_types)
    }

    pub fn start_persistent_logging(log_types: &[&str]) -> Self {
        Self::start_full(true, None, log_types)
    }

    pub fn start_with(persistence: bool, tls: Option<TlsFiles>) -> Self {
        Self::start_full(persistence, tls, &[])
    }

    fn start_full(persistence: bool, tls: Option<TlsFiles>, log_types: &[&str]) -> Self {
        if !Path::new(BINARY).exists() {
            panic!("{BINARY} not found: install it with `apt-get install mosquitto`");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut conf = String::new();
        writeln!(conf, "listener {port} 127.0.0.1").unwrap();
        writeln!(conf, "allow_anonymous true").unwrap();
        // Started as root, mosquitto switches to this user: keep the one running the tests, who
        // can read the key and write the temporary directory.
        writeln!(conf, "user {}", current_user()).unwrap();
        writeln!(conf, "max_queued_messages 0").unwrap();
        writeln!(conf, "max_inflight_messages 100").unwrap();
        writeln!(
            conf,
            "log_dest file {}",
            dir.path().join("mosquitto.log").display()
        )
        .unwrap();
        writeln!(conf, "log_type error").unwrap();
        writeln!(conf, "log_type warning").unwrap();
        writeln!(conf, "log_type notice").unwrap();
        // Lines "<time>: <client id> <qos> <filter>" and "<time>: <client id> <filter>":
        // tests read which filters the gateway holds from them.
        writeln!(conf, "log_type subscribe").unwrap();
        writeln!(conf, "log_type unsubscribe").unwrap();
        for t in log_types {
            writeln!(conf, "log_type {t}").unwrap();
        }
        if persistence {
            writeln!(conf, "persistence true").unwrap();
            writeln!(conf, "persistence_location {}/", dir.path().display()).unwrap();
            writeln!(conf, "autosave_interval 1").unwrap();
        }
        if let Some(tls) = tls {
            writeln!(conf, "certfile {}", tls.cert.display()).unwrap();
            writeln!(conf, "keyfile {}", tls.key.display()).unwrap();
        }
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
        };
        m.spawn();
        m
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// The filters of clients named `client_prefix...` once they are exactly `want`
    /// (or the last reading after 10 s).
    pub fn subscriptions_become(
        &self,
        client_prefix: &str,
        want: &std::collections::HashSet<String>,
    ) -> std::collections::HashSet<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.subscriptions(client_prefix);
            if s == *want || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Filters currently subscribed by clients whose id starts with `client_prefix`,
    /// as read from the subscribe/unsubscribe log lines (in order).
    pub fn subscriptions(&self, client_prefix: &str) -> std::collections::HashSet<String> {
        self.holders(client_prefix).into_keys().collect()
    }

    /// For each filter currently subscribed by clients whose id starts with
    /// `client_prefix`: how many of them hold it.
    pub fn holders(&self, client_prefix: &str) -> std::collections::HashMap<String, usize> {
        let mut count = std::collections::HashMap::new();
        for filters in self.filters_by_client(client_prefix).into_values() {
            for filter in filters {
                *count.entry(filter).or_insert(0) += 1;
            }
        }
        count
    }

    /// The filters each client whose id starts with `client_prefix` currently holds, as
    /// read from the subscribe/unsubscribe log lines (in order).
    pub fn filters_by_client(
        &self,
        client_prefix: &str,
    ) -> std::collections::HashMap<String, std::collections::HashSet<String>> {
        let mut held: std::collections::HashMap<String, std::collections::HashSet<String>> =
            std::collections::HashMap::new();
        for line in self.log().lines() {
            let mut it = line.split_whitespace();
            let (Some(_), Some(client)) = (it.next(), it.next()) else {
                continue;
            };
            if !client.starts_with(client_prefix) {
                continue;
            }
            let rest: Vec<&str> = it.collect();
            match rest.as_slice() {
                [q, filter] if q.len() == 1 && q.as_bytes()[0].is_ascii_digit() => {
                    held.entry(client.to_string())
                        .or_default()
                        .insert(filter.to_string());
                }
                [filter] => {
                    if let Some(set) = held.get_mut(client) {
                        set.remove(*filter);
                    }
                }
                _ => {}
            }
        }
        held
    }

    /// Stops it with SIGTERM (persistence is saved) and waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Freezes it (SIGSTOP): connections stay open but nothing is read or acknowledged.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused broker run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("mosquitto running");
        let ok = Command::new("kill")
            .args(["-s", name, &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {name} mosquitto");
    }

    /// Kills it at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same configuration.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts it if it is not running.
    pub fn spawn(&mut self) {
        if self.child.is_some() {
            return;
        }
        let conf = self.dir.path().join("mosquitto.conf");
        let child = Command::new(BINARY)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BINARY} (apt-get install mosquitto): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("mosquitto exited ({status}); log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "mosquitto did not listen on {}; log:\n{}",
                    self.addr(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A port that was free on 127.0.0.1 a moment ago.
/// A 127.0.0.1 port nothing listens on (TCP or UDP), for a process a test starts to
/// bind. Taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`):
/// a port the kernel picked for `bind(0)` and that was released could be handed to any
/// outgoing connection (this suite makes many) before the process binds it, which made
/// a gateway fail to start with "Address already in use". Each test process steps
/// through the range from its own offset, so its threads never pick one port twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&h| h > LOW + 1000)
        .unwrap_or(32_768);
    let span = high - LOW;
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = (LOW + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{LOW}..{high}")
}

const PUB_BINARY: &str = "/usr/bin/mosquitto_pub";

/// Publishes one message with Debian's `mosquitto_pub` (package mosquitto-clients) as an
/// MQTT 5 client, with a message-expiry interval when given. Panics when it fails.
pub fn mosquitto_pub_v5(
    broker: SocketAddr,
    topic: &str,
    payload: &str,
    qos: u8,
    expiry_s: Option<u32>,
) {
    if !Path::new(PUB_BINARY).exists() {
        panic!("{PUB_BINARY} not found: install it with `apt-get install mosquitto-clients`");
    }
    let mut cmd = Command::new(PUB_BINARY);
    cmd.args(["-V", "mqttv5", "-h"])
        .arg(broker.ip().to_string())
        .arg("-p")
        .arg(broker.port().to_string())
        .args(["-q", &qos.to_string(), "-t", topic, "-m", payload]);
    if let Some(s) = expiry_s {
        cmd.args(["-D", "publish", "message-expiry-interval", &s.to_string()]);
    }
    let out = cmd.output().expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
