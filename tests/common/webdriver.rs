//! A small WebDriver (W3C) client for the console's browser tests: starts Debian's
//! `chromedriver` on a free port and drives headless `chromium` through its HTTP
//! protocol. Fails (never skips) when either is missing.

use super::mosquitto::free_port;
use simd_json::prelude::*;
use simd_json::OwnedValue;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long a condition may take to hold (a page load, an answer through the gateway).
pub const WAIT: Duration = Duration::from_secs(20);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A JSON string literal.
pub fn js_string(s: &str) -> String {
    let mut out = Vec::new();
    lwm2m_gateway::json::string(&mut out, s);
    String::from_utf8(out).expect("UTF-8")
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, OwnedValue) {
    try_http(addr, method, path, body)
        .unwrap_or_else(|e| panic!("chromedriver, {method} {path}: {e}"))
}

/// One request to chromedriver: (status, the JSON answer).
fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, OwnedValue), String> {
    let err = |e: std::io::Error| e.to_string();
    let mut s = TcpStream::connect(addr).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(err)?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(err)?;
    s.write_all(body.as_bytes()).map_err(err)?;
    // The answer's head, then Content-Length bytes (chromedriver may keep the
    // connection open).
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut more = |out: &mut Vec<u8>| -> Result<(), String> {
        match s.read(&mut chunk).map_err(err)? {
            0 => Err("closed before the whole answer".to_string()),
            n => {
                out.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    };
    let head_end = loop {
        if let Some(i) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        more(&mut out)?;
    };
    let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no Content-Length")?;
    while out.len() < head_end + len {
        more(&mut out)?;
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut body = out[head_end..head_end + len].to_vec();
    let text = String::from_utf8_lossy(&body).into_owned();
    let v = simd_json::to_owned_value(&mut body).map_err(|e| format!("{status} {e}: {text}"))?;
    Ok((status, v))
}

/// A chromedriver process and one headless Chromium session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width`×`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: install Debian's chromium and chromium-driver \
                 (scripts/test.sh does)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + WAIT;
        loop {
            if TcpStream::connect(addr).is_ok() {
                let (st, v) = http(addr, "GET", "/status", "");
                if st == 200 && v["value"]["ready"].as_bool() == Some(true) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = format!(
            r#"{{"capabilities":{{"alwaysMatch":{{"browserName":"chrome","goog:chromeOptions":{{"binary":"{CHROMIUM}","args":["--headless=new","--no-sandbox","--disable-gpu","--disable-dev-shm-usage","--window-size={width},{height}","--lang=en-GB"]}}}}}}}}"#
        );
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let (st, v) = http(addr, "POST", "/session", &caps);
        assert_eq!(st, 200, "new session: {v}");
        b.session = v["value"]["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b
    }

    fn cmd(&self, method: &str, path: &str, body: &str) -> OwnedValue {
        let (st, v) = http(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        );
        assert_eq!(st, 200, "{method} {path} {body}: {v}");
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", &format!(r#"{{"url":{}}}"#, js_string(url)));
    }

    /// Runs `script` (a function body; `arguments` are the `args`, JSON values).
    pub fn js(&self, script: &str, args: &[&str]) -> OwnedValue {
        let body = format!(
            r#"{{"script":{},"args":[{}]}}"#,
            js_string(script),
            args.join(",")
        );
        self.cmd("POST", "/execute/sync", &body)
    }

    /// Waits until `script` returns something other than null, false or "" (within
    /// [`WAIT`]) and returns it; panics naming `what` otherwise.
    pub fn wait_for(&self, what: &str, script: &str) -> OwnedValue {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script, &[]);
            let empty = v.is_null() || v.as_bool() == Some(false) || v.as_str() == Some("");
            if !empty {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.js("return document.body.innerText", &[]);
                panic!("{what}: not within {WAIT:?}; the page shows:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The element `css` selects, waiting for it to exist.
    pub fn find(&self, css: &str) -> String {
        let quoted = js_string(css);
        self.wait_for(
            css,
            &format!("return document.querySelector({quoted}) !== null"),
        );
        let v = self.cmd(
            "POST",
            "/element",
            &format!(r#"{{"using":"css selector","value":{quoted}}}"#),
        );
        v[ELEMENT].as_str().expect("element reference").to_string()
    }

    /// Clicks the element `css` selects (as a user does: scrolled into view).
    pub fn click(&self, css: &str) {
        let el = self.find(css);
        self.cmd("POST", &format!("/element/{el}/click"), "{}");
    }

    /// Types `text` into the element `css` selects.
    pub fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.cmd("POST", &format!("/element/{el}/clear"), "{}");
        self.cmd(
            "POST",
            &format!("/element/{el}/value"),
            &format!(r#"{{"text":{}}}"#, js_string(text)),
        );
    }

    /// Accepts the `confirm()` (or `alert()`) the page opened, waiting for it.
    pub fn accept_alert(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let path = format!("/session/{}/alert/accept", self.session);
            let (st, v) = http(self.addr, "POST", &path, "{}");
            if st == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "no dialog to accept: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.cmd("GET", "/screenshot", "");
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Not `http`, which panics on a bad answer: this may run while unwinding.
        if !self.session.is_empty() {
            let _ = try_http(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                "",
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
