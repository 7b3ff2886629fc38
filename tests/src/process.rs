//! Child-process plumbing for the harness: run a command with a deadline,
//! collect a child's output into memory, stop a child.
//!
//! It must never let a child outlive its test unnoticed or block a test
//! without a deadline, and never put captured output in a file.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How often the harness looks again while waiting for a child or a log line.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `command` to completion with its output captured; kills it and
/// panics (naming `what`) if it takes longer than `timeout`.
pub fn output_with_timeout(command: &mut Command, what: &str, timeout: Duration) -> Output {
    use std::process::Stdio;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {what}: {error}"));
    let pid = child.id();
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match result.recv_timeout(timeout) {
        Ok(output) => output.unwrap_or_else(|error| panic!("waiting for {what}: {error}")),
        Err(_) => {
            signal(pid, Signal::SIGKILL);
            panic!("{what} did not finish within {timeout:?}; killed it");
        }
    }
}

/// Sends `signal` to process `pid`, ignoring a process that is already gone.
pub(crate) fn signal(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

/// Polls `child` until it exits or `timeout` passes.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Kills `child` (SIGKILL) and reaps it; used on drop, where nothing may panic.
pub(crate) fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Appends everything `stream` produces to `sink`, line by line, until EOF.
/// Lossy UTF-8, so a stray byte in a log cannot stop the collection.
pub(crate) fn collect_into(
    stream: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    match sink.lock() {
                        Ok(mut log) => log.push_str(&text),
                        Err(poisoned) => poisoned.into_inner().push_str(&text),
                    }
                }
            }
        }
    })
}

/// The current contents of a shared log buffer, even if a collector panicked.
pub(crate) fn snapshot(log: &Mutex<String>) -> String {
    match log.lock() {
        Ok(log) => log.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}
