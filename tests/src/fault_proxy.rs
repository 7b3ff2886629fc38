//! A TCP proxy that breaks connections mid-stream (`tests/peers/fault_proxy.py`), put between
//! the node and a peer (the S3 store) to fail uploads half way.
//!
//! It must never keep the bytes it relays, and never outlive its test (killed on drop).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::process::kill_and_reap;

/// How long the proxy may take to print `listening <port>`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the script lives.
const FAULT_PROXY_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/fault_proxy.py");

/// A running proxy on 127.0.0.1 in front of `127.0.0.1:<backend>`.
pub struct FaultProxy {
    /// The python process; killed on drop.
    child: Child,
    port: u16,
}

impl FaultProxy {
    /// Starts a proxy for `backend_port` that resets `cut_percent` % of its connections after
    /// a random number of client bytes between `cut_window / 2` and `cut_window`. Until the
    /// first reset has happened every connection is cut, so a run always breaks at least one
    /// transfer longer than `cut_window` bytes.
    pub fn start(backend_port: u16, cut_percent: u8, cut_window: usize) -> FaultProxy {
        let mut child = Command::new("python3")
            .arg(FAULT_PROXY_SCRIPT)
            .arg("--backend")
            .arg(backend_port.to_string())
            .arg("--cut-percent")
            .arg(cut_percent.to_string())
            .arg("--cut-window")
            .arg(cut_window.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start python3 {FAULT_PROXY_SCRIPT}: {error}"));
        let stdout = child.stdout.take().expect("stdout was piped");
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = line_tx.send(line);
        });
        let line = line_rx.recv_timeout(STARTUP_TIMEOUT).unwrap_or_default();
        match line
            .trim()
            .strip_prefix("listening ")
            .map(str::parse::<u16>)
        {
            Some(Ok(port)) => FaultProxy { child, port },
            _ => {
                kill_and_reap(&mut child);
                panic!("fault proxy did not start (first line {line:?}); see its stderr above");
            }
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}
