//! The HTTPS webhook receiver peers: `tests/peers/webhook_receiver.py`
//! (HTTP/1.1) and `tests/peers/h2_receiver.mjs` (HTTP/2 only, Node's http2
//! server): starting them, addressing their routes, and reading what they
//! received.
//!
//! It must never keep received bodies anywhere but in the receiver's memory
//! and the test's own values, and never outlive the test (killed on drop).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use crate::process::kill_and_reap;
use crate::tls::{TestCa, https_agent_trusting};

/// How long the receiver may take to print `listening <port>`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /_received` may carry many large bodies (inlined attachments); this
/// caps what the harness reads, far above ureq's 10 MB default.
const MAX_RECORDS_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// How often [`Receiver::wait_for`] asks again: each ask is an HTTPS round trip.
const RECORDS_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Random bytes in a generated webhook secret (Standard Webhooks allows 24–64).
const SECRET_BYTES: usize = 24;

/// Where the receiver script lives, resolved at compile time so tests work
/// from any working directory.
const RECEIVER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/webhook_receiver.py");

/// The HTTP/2-only receiver (Node's built-in `http2.createSecureServer`).
const H2_RECEIVER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/h2_receiver.mjs");

/// A running HTTPS webhook receiver on 127.0.0.1, serving the certificate of
/// a [`TestCa`] and checking signatures with one secret. Routes (POST):
/// `/ok` (200), `/status/<code>`, `/delay/<ms>/status/<code>`,
/// `/fail-first/<n>/status/<code>` (500 for the first n requests on that
/// exact path), `/reset` (TCP reset, no answer), `/hang` (no answer for an
/// hour); at random per request `/flaky/<percent>` (500 that often, else
/// 200), `/flaky-reset/<percent>` (TCP reset that often, else 200),
/// `/slow/<max_ms>` (200 after 0..max_ms); `/sink` (200, keeps only the
/// body's length and hash); anything else answers 404. Every POST is recorded.
///
/// [`Receiver::start_h2`] starts the HTTP/2-only receiver instead (routes
/// `/ok`, `/status/<code>`, `/delay/<ms>/status/<code>`), whose records have
/// the same form.
pub struct Receiver {
    /// The python process; killed on drop.
    child: Child,
    /// The port it bound (chosen by the OS).
    port: u16,
    /// Base URL of the control routes (`/_received`): the TLS port itself for
    /// the HTTP/1.1 receiver, a plain-HTTP loopback port for the HTTP/2 one
    /// (the harness's client speaks HTTP/1.1 only).
    control: String,
    /// The `whsec_…` secret it verifies signatures with; routes need the same.
    secret: String,
    /// The CA that signed its certificate: a route's `webhook_ca`.
    ca_pem: PathBuf,
    /// Talks to the receiver's control routes, trusting only that CA.
    agent: ureq::Agent,
}

/// One POST as the receiver saw it.
#[derive(Debug, Clone, Deserialize)]
pub struct Received {
    /// The request path, e.g. `/ok` or `/status/422`.
    pub path: String,
    /// When it arrived, unix seconds.
    pub time: f64,
    /// All request headers, names lower-cased (repeated headers joined by `, `).
    pub headers: BTreeMap<String, String>,
    /// The body as text (lossy UTF-8), exactly what was signed; empty for `/sink`.
    pub raw_body: String,
    /// The body's length in bytes (also for `/sink`).
    #[serde(default)]
    pub body_bytes: u64,
    /// The body's SHA-256, lowercase hex (also for `/sink`).
    #[serde(default)]
    pub body_sha256: String,
    /// The body parsed as JSON, `Value::Null` when it is not JSON.
    #[serde(rename = "json")]
    pub body: serde_json::Value,
    /// Whether a `v1,` entry of `webhook-signature` matched the HMAC of
    /// `<webhook-id>.<webhook-timestamp>.<body>` under the receiver's secret.
    pub signature_valid: bool,
    /// Whether `webhook-timestamp` was within 5 minutes of the arrival time.
    pub timestamp_fresh: bool,
    /// The status answered; `None` while still delayed or hung, or when the
    /// connection was reset instead of answered.
    pub status: Option<u16>,
    /// Whether the answer was 2xx, i.e. the sender may consider it delivered.
    pub acknowledged: bool,
    /// The TLS connection the POST came on, numbered from 1 in accept order.
    #[serde(default)]
    pub connection: u64,
    /// `1.1` or `2`.
    #[serde(default)]
    pub http_version: String,
}

impl Received {
    /// A header by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

impl Receiver {
    /// Starts the receiver with `ca`'s server certificate, verifying
    /// signatures with `secret` (`whsec_…`, see [`new_webhook_secret`]).
    /// Panics with a clear message when `python3` or the script fails.
    pub fn start(ca: &TestCa, secret: &str) -> Receiver {
        let mut command = Command::new("python3");
        command.arg(RECEIVER_SCRIPT);
        let (child, ports) = spawn(command, ca, secret, "python3", RECEIVER_SCRIPT);
        let port = ports[0];
        Receiver {
            child,
            port,
            control: format!("https://localhost:{port}"),
            secret: secret.to_string(),
            ca_pem: ca.ca_pem.clone(),
            agent: https_agent_trusting(&ca.ca_pem),
        }
    }

    /// Starts the HTTP/2-only receiver (ALPN `h2`, no HTTP/1.1 fallback)
    /// with `ca`'s server certificate, verifying signatures with `secret`.
    /// Panics with a clear message when `node` or the script fails.
    pub fn start_h2(ca: &TestCa, secret: &str) -> Receiver {
        let mut command = Command::new("node");
        command.arg(H2_RECEIVER_SCRIPT);
        let (child, ports) = spawn(command, ca, secret, "node", H2_RECEIVER_SCRIPT);
        let [port, control] = ports[..] else {
            panic!("the HTTP/2 receiver reports two ports, got {ports:?}");
        };
        Receiver {
            child,
            port,
            control: format!("http://127.0.0.1:{control}"),
            secret: secret.to_string(),
            ca_pem: ca.ca_pem.clone(),
            agent: https_agent_trusting(&ca.ca_pem),
        }
    }

    /// `https://localhost:<port><path>`: a webhook URL for a route, whose
    /// certificate verifies against the receiver's CA.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// The port the receiver listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The signing secret the receiver verifies with.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The CA certificate file that verifies the receiver.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// An HTTPS client trusting the receiver's CA, for posting to it directly.
    pub fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// Every POST received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        let mut response = self
            .agent
            .get(format!("{}/_received", self.control))
            .call()
            .expect("GET /_received from the webhook receiver");
        assert_eq!(response.status().as_u16(), 200, "GET /_received");
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_RECORDS_BYTES)
            .read_to_string()
            .expect("read /_received");
        serde_json::from_str(&text).expect("parse /_received")
    }

    /// Waits until at least `count` POSTs were received (or `timeout`
    /// passes) and returns all of them; for deliveries a test does not
    /// wait for through SMTP, such as retries after a reset.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count || Instant::now() >= deadline {
                return received;
            }
            thread::sleep(RECORDS_POLL_INTERVAL);
        }
    }

    /// Forgets all records and resets the `/fail-first/…` counters.
    pub fn clear(&self) {
        let response = self
            .agent
            .delete(format!("{}/_received", self.control))
            .call()
            .expect("DELETE /_received on the webhook receiver");
        assert_eq!(response.status().as_u16(), 200, "DELETE /_received");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Starts a receiver script (`command` with the script as its first
/// argument) with the certificate of `ca` and `secret`, and waits for its
/// `listening <port> [<port>…]` line.
fn spawn(
    mut command: Command,
    ca: &TestCa,
    secret: &str,
    program: &str,
    script: &str,
) -> (Child, Vec<u16>) {
    let mut child = command
        .arg("--cert")
        .arg(&ca.cert_pem)
        .arg("--key")
        .arg(&ca.key_pem)
        .arg("--secret")
        .arg(secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot start {program} {script}: {error} (is {program} installed?)")
        });

    let stdout = child.stdout.take().expect("stdout was piped");
    let (line_tx, line_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = line_tx.send(line);
    });
    let line = match line_rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(line) => line,
        Err(_) => {
            kill_and_reap(&mut child);
            panic!("webhook receiver did not report its port within {STARTUP_TIMEOUT:?}");
        }
    };
    let ports: Option<Vec<u16>> = line
        .trim()
        .strip_prefix("listening ")
        .map(|ports| ports.split(' ').map(str::parse::<u16>).collect())
        .and_then(Result::ok);
    match ports {
        Some(ports) if !ports.is_empty() => (child, ports),
        _ => {
            kill_and_reap(&mut child);
            panic!("webhook receiver did not start (first line {line:?}); see its stderr above");
        }
    }
}

/// A fresh Standard Webhooks secret: `whsec_` and base64 of random bytes.
pub fn new_webhook_secret() -> String {
    let mut key = [0u8; SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut key)
        .expect("the system random generator works");
    format!("whsec_{}", BASE64.encode(key))
}

/// The `webhook-signature` value (`v1,<base64>`) that Standard Webhooks
/// defines for `id`, `timestamp` and `body` under `secret` (`whsec_…`): the
/// tests' independent check of what the daemon signs.
pub fn webhook_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key_bytes = BASE64
        .decode(encoded)
        .expect("a webhook secret is base64 after whsec_");
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes);
    let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    format!("v1,{}", BASE64.encode(hmac::sign(&key, &signed).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_whsec_base64_of_24_bytes() {
        let secret = new_webhook_secret();
        let encoded = secret.strip_prefix("whsec_").expect("prefix");
        assert_eq!(BASE64.decode(encoded).expect("base64").len(), SECRET_BYTES);
        assert_ne!(secret, new_webhook_secret());
    }
}
