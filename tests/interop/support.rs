//! Child processes for the interop tests: the npm LwM2M client and the PyPI MQTT
//! application, started from `tests/interop/`, their stdout read line by line.
// Helpers each test uses a part of, `pub` for the test files that include them.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `tests/interop/<sub>`.
pub fn interop_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(sub)
}

/// The npm client's directory, after checking that `npm ci` has run there.
pub fn node_dir() -> PathBuf {
    let dir = interop_dir("node");
    let lib = dir.join("node_modules/lwm2m-node-lib/package.json");
    assert!(
        lib.exists(),
        "{} is missing: run scripts/test.sh (it runs `npm ci` in {})",
        lib.display(),
        dir.display()
    );
    dir
}

/// Starts `node client.js HOST PORT EP` (tests/interop/node/client.js).
pub fn node_client(gw_udp: std::net::SocketAddr, ep: &str) -> Proc {
    let dir = node_dir();
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg("client.js")
        .arg(gw_udp.ip().to_string())
        .arg(gw_udp.port().to_string())
        .arg(ep);
    Proc::spawn("node client.js", cmd)
}

/// The Python of `tests/interop/python/.venv`, after checking it has emqxlwm2m.
pub fn venv_python() -> PathBuf {
    venv_python_with("emqxlwm2m.engines.emqx")
}

/// The Python of `tests/interop/python/.venv`, after checking that `module` imports there.
pub fn venv_python_with(module: &str) -> PathBuf {
    let dir = interop_dir("python");
    let py = dir.join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/test.sh (it creates the venv with requirements.txt)",
        py.display()
    );
    let ok = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .status()
        .expect("run the venv's python");
    assert!(
        ok.success(),
        "{module} does not import in {}: run scripts/test.sh",
        py.display()
    );
    py
}

/// A child process whose stdout lines arrive on a channel; its stderr is kept for
/// failure messages. Killed when dropped.
pub struct Proc {
    name: String,
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every stdout line seen so far.
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let keep = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = keep.lock().unwrap();
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                // Keep the tail only: the npm client logs at DEBUG.
                if s.len() > 256 * 1024 {
                    let cut = s.len() - 128 * 1024;
                    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap();
                    s.drain(..cut);
                }
            }
        });
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// What the process said so far, for failure messages.
    pub fn transcript(&self) -> String {
        let err = self.stderr.lock().unwrap();
        let mut start = err.len().saturating_sub(6000);
        while !err.is_char_boundary(start) {
            start += 1;
        }
        let tail = &err[start..];
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr (tail) ---\n{}",
            self.name,
            self.seen.join("\n"),
            self.name,
            tail
        )
    }

    /// Waits for a stdout line for which `want` holds, and returns it.
    pub fn expect(&mut self, what: &str, timeout: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no line {what} within {timeout:?}\n{}",
                        self.name,
                        self.transcript()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "{}: exited ({status:?}) before a line {what}\n{}",
                        self.name,
                        self.transcript()
                    )
                }
            }
        }
    }

    /// Waits for the exact stdout line `line`.
    pub fn expect_line(&mut self, line: &str, timeout: Duration) -> String {
        self.expect(&format!("{line:?}"), timeout, |l| l == line)
    }

    /// Writes one line to the process's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: stdin: {e}\n{}", self.name, self.transcript()));
    }

    /// Waits for the exit, reading the remaining stdout lines into `seen`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            if let Some(s) = self.child.try_wait().expect("wait") {
                // The reader thread may still hold the last lines.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: still running after {timeout:?}\n{}",
                    self.name,
                    self.transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
