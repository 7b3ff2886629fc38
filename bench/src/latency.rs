//! The latency client: what `smtp-source` does not report. It keeps `sessions` SMTP sessions
//! open and sends messages at a fixed total rate (open loop: message k of the run is due at
//! `k / rate` seconds, whatever happened before), and times each message from the moment the
//! end-of-data line `.` is written to the moment its reply has been read.
//!
//! Each session is one thread with a blocking socket (`TCP_NODELAY`, so the final `.` leaves at
//! once). `MAIL`, `RCPT` and `DATA` are pipelined (every benchmarked server offers
//! `PIPELINING`); the body is written in full before the clock starts, so the time measured is
//! the server's work after the data is complete, not the transfer of the data.

use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;

use crate::source::{HELO, MAIL_FROM, RCPT_TO};
use crate::stats::percentile;

/// Longest wait for any reply; a server slower than this has failed the benchmark.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// What one latency run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    /// The offered rate, messages per second over all sessions.
    pub offered_rate: f64,
    /// Messages answered with 250.
    pub accepted: usize,
    /// Messages answered otherwise.
    pub refused: usize,
    /// Median end-of-data → reply time of the accepted messages, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank), milliseconds.
    pub p99_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
    /// Messages sent after their due time because the session was still busy: a sign that the
    /// offered rate was above what the server sustains.
    pub late: usize,
}

/// Sends `count` copies of `message` (wire form: CRLF, dot-stuffed, ending with CRLF) to `addr`
/// at `rate` messages per second over `sessions` sessions.
pub fn run(
    addr: SocketAddr,
    message: Arc<Vec<u8>>,
    sessions: usize,
    count: usize,
    rate: f64,
) -> anyhow::Result<LatencyRun> {
    ensure!(sessions > 0 && count > 0 && rate > 0.0, "empty latency run");
    let sessions = sessions.min(count);
    // Every session connects and greets before the schedule starts.
    let mut connections = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        connections.push(Session::open(addr)?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let threads: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(index, session)| {
            let message = message.clone();
            thread::spawn(move || {
                // Message k goes to session k mod sessions.
                let due: Vec<Instant> = (index..count)
                    .step_by(sessions)
                    .map(|k| start + interval.mul_f64(k as f64))
                    .collect();
                session.send_all(&message, &due)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    let (mut refused, mut late) = (0, 0);
    for thread in threads {
        let result = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a latency session panicked"))??;
        latencies.extend(result.latencies);
        refused += result.refused;
        late += result.late;
    }
    latencies.sort_by(f64::total_cmp);
    Ok(LatencyRun {
        offered_rate: rate,
        accepted: latencies.len(),
        refused,
        p50_ms: percentile(&latencies, 50.0).unwrap_or(f64::NAN),
        p99_ms: percentile(&latencies, 99.0).unwrap_or(f64::NAN),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        late,
    })
}

/// One session's results.
struct SessionResult {
    latencies: Vec<f64>,
    refused: usize,
    late: usize,
}

struct Session {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Session {
    /// Connects, reads the greeting and says EHLO.
    fn open(addr: SocketAddr) -> anyhow::Result<Session> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut session = Session {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::with_capacity(64 * 1024, stream),
        };
        session.expect(220, "greeting")?;
        write!(session.writer, "EHLO {HELO}\r\n")?;
        session.writer.flush()?;
        session.expect(250, "EHLO")?;
        Ok(session)
    }

    fn send_all(mut self, message: &[u8], due: &[Instant]) -> anyhow::Result<SessionResult> {
        let mut result = SessionResult {
            latencies: Vec::with_capacity(due.len()),
            refused: 0,
            late: 0,
        };
        for &at in due {
            let now = Instant::now();
            if at > now {
                thread::sleep(at - now);
            } else if now - at > Duration::from_millis(1) {
                result.late += 1;
            }
            write!(
                self.writer,
                "MAIL FROM:<{MAIL_FROM}>\r\nRCPT TO:<{RCPT_TO}>\r\nDATA\r\n"
            )?;
            self.writer.flush()?;
            self.expect(250, "MAIL")?;
            self.expect(250, "RCPT")?;
            self.expect(354, "DATA")?;
            self.writer.write_all(message)?;
            self.writer.flush()?;
            let sent = Instant::now();
            self.writer.write_all(b".\r\n")?;
            self.writer.flush()?;
            let (code, _) = self.reply()?;
            let elapsed = sent.elapsed().as_secs_f64() * 1000.0;
            if code == 250 {
                result.latencies.push(elapsed);
            } else {
                result.refused += 1;
            }
        }
        write!(self.writer, "QUIT\r\n")?;
        self.writer.flush()?;
        Ok(result)
    }

    /// Reads one reply and fails unless its code is `code`.
    fn expect(&mut self, code: u16, what: &str) -> anyhow::Result<()> {
        let (got, text) = self.reply()?;
        ensure!(got == code, "{what}: expected {code}, got {got} {text}");
        Ok(())
    }

    /// Reads one (possibly multi-line) reply: its code and last line.
    fn reply(&mut self) -> anyhow::Result<(u16, String)> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed while waiting for a reply");
            }
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("malformed reply {line:?}"))?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, line.trim_end().to_string()));
            }
        }
    }
}
