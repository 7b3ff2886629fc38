//! MIME → payload throughput: mxnode's `message::parse` and `payload::render` on the real-world
//! corpus, on the 1 MiB message of the end-to-end benchmark and on a 10 MiB message (both with a
//! base64 attachment), beside the `mail-parser` crate on the same bytes as a reference point.
//! The time per message of the 1 MiB input is the share of parsing and rendering in the node's
//! CPU time per 1 MiB message (issue 14's target: 4 ms for everything).
//!
//! `cargo bench -p mxnode-bench --bench parse` prints a Markdown table; with `MXNODE_BENCH_OUT`
//! set it also writes `parse.json` there. `MXNODE_BENCH_SECONDS` sets the measuring time per
//! cell (default 2). A report, never a test: nothing here asserts on time.
//!
//! Each cell repeats its input set in samples of at least [`SAMPLE_TIME`] and reports the median
//! MB/s (10^6 bytes of input per second) over the samples. The three parsers of a cell take
//! their samples in turn (one of each, then the next round), so load from elsewhere on a shared
//! machine hits them alike and their ratios stay meaningful.

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mxnode::message::{ParseLimits, parse};
use mxnode::payload::{Envelope, render};
use mxnode_bench::messages::{message_lf, to_crlf};
use mxnode_bench::stats::median;

/// Shortest sample; the per-sample overhead (one clock read) is then negligible.
const SAMPLE_TIME: Duration = Duration::from_millis(100);
/// Default measuring time per cell.
const DEFAULT_SECONDS: f64 = 2.0;
/// The large message of the end-to-end benchmark, and a larger one.
const LARGE_SIZE: usize = 1 << 20;
const HUGE_SIZE: usize = 10 << 20;

/// One input set: messages in wire form (CRLF).
struct Input {
    name: String,
    messages: Vec<Vec<u8>>,
}

impl Input {
    fn bytes(&self) -> usize {
        self.messages.iter().map(Vec::len).sum()
    }
}

/// One measured cell.
#[derive(serde::Serialize)]
struct Cell {
    input: String,
    messages: usize,
    bytes: usize,
    mxnode_parse_mb_s: f64,
    mxnode_payload_mb_s: f64,
    mail_parser_mb_s: f64,
}

fn main() {
    let seconds = std::env::var("MXNODE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let budget = Duration::from_secs_f64(seconds);
    let mut inputs = Vec::new();
    match corpus() {
        Ok(input) => inputs.push(input),
        // The large message alone is still worth a report.
        Err(why) => eprintln!("parse benchmark: corpus skipped: {why}"),
    }
    for (name, size) in [("1 MiB", LARGE_SIZE), ("10 MiB", HUGE_SIZE)] {
        inputs.push(Input {
            name: format!("{name}, base64 attachment"),
            messages: vec![to_crlf(&message_lf(size))],
        });
    }
    let envelope = Envelope {
        mail_from: "sender@source.bench.test".to_string(),
        rcpt_to: vec!["rcpt@bench.test".to_string()],
        helo: "source.bench.test".to_string(),
        remote_ip: "127.0.0.1".to_string(),
        tls: None,
    };
    let limits = ParseLimits::default();
    let mut cells = Vec::new();
    for input in &inputs {
        let mut mxnode_parse = |raw: &[u8]| {
            black_box(parse(raw, &limits));
        };
        let mut mxnode_payload = |raw: &[u8]| {
            let parsed = parse(raw, &limits);
            black_box(render(
                "msg_0123456789abcdef0123456789abcdef",
                "2025-01-06T10:00:00Z",
                &envelope,
                &parsed,
                raw.len(),
            ));
        };
        let mut mail_parser = |raw: &[u8]| {
            black_box(mail_parser::MessageParser::default().parse(raw));
        };
        let [mxnode_parse, mxnode_payload, mail_parser] = measure(
            input,
            budget,
            [&mut mxnode_parse, &mut mxnode_payload, &mut mail_parser],
        );
        cells.push(Cell {
            input: input.name.clone(),
            messages: input.messages.len(),
            bytes: input.bytes(),
            mxnode_parse_mb_s: mxnode_parse,
            mxnode_payload_mb_s: mxnode_payload,
            mail_parser_mb_s: mail_parser,
        });
    }

    println!(
        "| input | messages | MB | mxnode parse MB/s | mxnode MIME→payload MB/s | MIME→payload ms/msg | mail-parser parse MB/s | payload ÷ mail-parser |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for c in &cells {
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
            c.input,
            c.messages,
            c.bytes as f64 / 1e6,
            c.mxnode_parse_mb_s,
            c.mxnode_payload_mb_s,
            c.bytes as f64 / c.messages as f64 / (c.mxnode_payload_mb_s * 1e6) * 1e3,
            c.mail_parser_mb_s,
            c.mxnode_payload_mb_s / c.mail_parser_mb_s
        );
    }
    if let Some(out) = std::env::var_os("MXNODE_BENCH_OUT") {
        let out = PathBuf::from(out);
        let written = std::fs::create_dir_all(&out).and_then(|()| {
            let json = serde_json::to_vec_pretty(&cells).map_err(std::io::Error::other)?;
            std::fs::write(out.join("parse.json"), json)
        });
        if let Err(e) = written {
            eprintln!("cannot write {}/parse.json: {e}", out.display());
            std::process::exit(1);
        }
    }
}

/// One measured workload: called once per message of the input.
type Work<'a> = &'a mut dyn FnMut(&[u8]);

/// Median MB/s of each of `works` over `input`, in samples of at least [`SAMPLE_TIME`] taken
/// in turn for `budget` each (and at least three each).
fn measure<const N: usize>(input: &Input, budget: Duration, mut works: [Work<'_>; N]) -> [f64; N] {
    // One untimed pass each: page faults and lazy initialisation are not what is measured.
    for work in works.iter_mut() {
        for m in &input.messages {
            work(m);
        }
    }
    let bytes = input.bytes() as f64;
    let mut samples: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
    let total = budget.saturating_mul(u32::try_from(N).unwrap_or(u32::MAX));
    let started = Instant::now();
    while started.elapsed() < total || samples[0].len() < 3 {
        for (work, samples) in works.iter_mut().zip(samples.iter_mut()) {
            let sample_start = Instant::now();
            let mut passes = 0u32;
            while sample_start.elapsed() < SAMPLE_TIME {
                for m in &input.messages {
                    work(m);
                }
                passes += 1;
            }
            let elapsed = sample_start.elapsed().as_secs_f64();
            samples.push(bytes * f64::from(passes) / elapsed / 1e6);
        }
    }
    samples.map(|s| median(&s).unwrap_or(0.0))
}

/// Every `.eml` of the shared corpus, in wire form; an error naming the directory when it
/// holds none (a checkout without the shared corpus next to it).
fn corpus() -> Result<Input, String> {
    let dir = mxnode_tests::corpus_dir();
    let mut files = Vec::new();
    collect_eml(&dir, &mut files);
    files.sort();
    let messages: Vec<Vec<u8>> = files
        .iter()
        .filter_map(|f| std::fs::read(f).ok())
        .map(|raw| mxnode_tests::crlf(&raw))
        .collect();
    if messages.is_empty() {
        return Err(format!(
            "no .eml files under {} (set MXNODE_CORPUS)",
            dir.display()
        ));
    }
    Ok(Input {
        name: "corpus (../shared/corpus)".to_string(),
        messages,
    })
}

fn collect_eml(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_eml(&path, files);
        } else if path.extension().is_some_and(|e| e == "eml") {
            files.push(path);
        }
    }
}
