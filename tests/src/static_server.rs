//! A static HTTPS file server (`tests/peers/release_server.py`): the update channel the node
//! polls in the update tests.
//!
//! It must never serve anything but its directory, and never outlive its test (killed on drop).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::TestCa;
use crate::process::kill_and_reap;

/// How long the server may take to print `listening <port>`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the script lives.
const STATIC_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/release_server.py");

/// A running HTTPS file server on 127.0.0.1 with the certificate of a [`TestCa`].
pub struct StaticServer {
    /// The python process; killed on drop.
    child: Child,
    port: u16,
}

impl StaticServer {
    /// Serves `dir` (its files as they are at each request).
    pub fn start(ca: &TestCa, dir: &Path) -> StaticServer {
        let mut child = Command::new("python3")
            .arg(STATIC_SCRIPT)
            .arg("--cert")
            .arg(&ca.cert_pem)
            .arg("--key")
            .arg(&ca.key_pem)
            .arg("--root")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start python3 {STATIC_SCRIPT}: {error}"));
        let stdout = child.stdout.take().expect("stdout was piped");
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = line_tx.send(line);
            // The server prints a line per request; keep its stdout drained until it exits.
            let mut served = String::new();
            while stdout.read_line(&mut served).is_ok_and(|n| n > 0) {
                served.clear();
            }
        });
        let line = line_rx.recv_timeout(STARTUP_TIMEOUT).unwrap_or_default();
        match line
            .trim()
            .strip_prefix("listening ")
            .map(str::parse::<u16>)
        {
            Some(Ok(port)) => StaticServer { child, port },
            _ => {
                kill_and_reap(&mut child);
                panic!("static server did not start (first line {line:?}); see its stderr above");
            }
        }
    }

    /// `https://localhost:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}
