//! Load from Postfix's `smtp-source`: `count` messages over `sessions` parallel SMTP sessions,
//! each session sending message after message on its connection (`-d`), timed from start to
//! exit. Its reply checking is strict: any reply other than the expected positive one aborts it,
//! which fails the run.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

/// Envelope sender of every benchmark message.
pub const MAIL_FROM: &str = "sender@source.bench.test";
/// The domain the benchmark's recipients are in (mxnode routes `*@` it to the sink).
pub const RCPT_DOMAIN: &str = "bench.test";
/// Envelope recipient of every benchmark message.
pub const RCPT_TO: &str = "rcpt@bench.test";
/// HELO name of the load generators.
pub const HELO: &str = "source.bench.test";

/// Sends `count` copies of the LF-only message in `file` to `addr` over `sessions` sessions;
/// returns the wall-clock time it took.
pub fn run(
    addr: SocketAddr,
    file: &Path,
    sessions: usize,
    count: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = Command::new("smtp-source")
        .args(["-4", "-d", "-s"])
        .arg(sessions.to_string())
        .arg("-m")
        .arg(count.to_string())
        .args(["-M", HELO, "-f", MAIL_FROM, "-t", RCPT_TO, "-F"])
        .arg(file)
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .output()
        .context("run smtp-source")?;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() && stderr.trim().is_empty(),
        "smtp-source to {addr} failed ({}): {}",
        output.status,
        stderr.trim()
    );
    Ok(elapsed)
}
