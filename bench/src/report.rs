//! The results of a sweep as people and programs read them: a Markdown table, the targets of
//! issues 9 and 14 checked against the numbers of the same run, and the JSON document `plot.py`
//! draws.

use std::fmt::Write as _;

use serde::Serialize;

use crate::run::{Scenario, Target};

/// mxnode against Postfix at 10 KiB × 20 sessions.
const TARGET_X_POSTFIX: f64 = 10.0;
/// mxnode against the limit at 10 KiB × 20 sessions.
const TARGET_OF_LIMIT: f64 = 0.6;
/// mxnode against Haraka at 10 KiB × 20 sessions.
const TARGET_X_HARAKA: f64 = 3.0;
/// mxnode against Haraka at 1 MiB × 20 sessions.
const TARGET_LARGE_X_HARAKA: f64 = 2.0;
/// mxnode against Postfix with 1 MiB messages, at every session count.
const TARGET_LARGE_X_POSTFIX: f64 = 2.0;
/// p99 end-of-data → reply at most this much above the receiver's own latency, ms, at half
/// saturation, for every 10 KiB scenario.
const TARGET_P99_OVERHEAD_MS: f64 = 5.0;
/// mxnode's CPU time per 1 MiB message, µs (all threads).
const TARGET_LARGE_CPU_US: f64 = 4000.0;
/// Peak RSS at most this base plus [`TARGET_RSS_PER_IN_FLIGHT`] × bytes in flight, MiB.
const TARGET_RSS_BASE_MIB: f64 = 64.0;
const TARGET_RSS_PER_IN_FLIGHT: f64 = 3.0;
/// Idle RSS, MiB.
const TARGET_IDLE_RSS_MIB: f64 = 32.0;
/// Threads of the node under [`MANY_SESSIONS`] concurrent deliveries at most the machine's
/// cores plus this.
const TARGET_EXTRA_THREADS: u64 = 8;
/// Sender authentication (`mxnode-auth`) keeps at least this share of the plain row's rate
/// at 10 KiB × 20 sessions (issue 15: it costs at most 15 %).
const TARGET_AUTH_OF_PLAIN: f64 = 0.85;
/// The size and session count of the headline targets.
const HEADLINE_SIZE: usize = 10 * 1024;
const HEADLINE_SESSIONS: usize = 20;
const LARGE_SIZE: usize = 1 << 20;
/// The session count of the scaling and thread targets.
const MANY_SESSIONS: usize = 100;

/// One target of the issue, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What the target says, with the scenario it was checked on.
    pub target: String,
    /// The measured value, in words and numbers.
    pub measured: String,
    pub met: bool,
}

/// The whole JSON document.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub machine: Machine,
    pub runs_per_scenario: usize,
    pub scenarios: &'a [Scenario],
    pub checks: Vec<Check>,
}

/// Where and when the numbers were taken.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub date: String,
    pub commit: String,
}

/// `mxnode × 10KiB × 20`: how a check names its scenario.
fn scenario_name(s: &Scenario) -> String {
    format!("{} × {} × {}", s.target.name(), s.size_label, s.sessions)
}

/// Checks every target that the scenarios allow checking; `cores` is the machine's.
pub fn checks(scenarios: &[Scenario], cores: usize) -> Vec<Check> {
    let find = |target: Target, size: usize, sessions: usize| {
        scenarios
            .iter()
            .find(|s| s.target == target && s.size == size && s.sessions == sessions)
    };
    let mxnode = || scenarios.iter().filter(|s| s.target.is_mxnode());
    let mut checks = Vec::new();
    let mut ratio = |target: String, ratio: Option<f64>, bound: f64| {
        if let Some(r) = ratio {
            checks.push(Check {
                target,
                measured: format!("{r:.2}×"),
                met: r >= bound,
            });
        }
    };
    if let Some(s) = find(Target::Mxnode, HEADLINE_SIZE, HEADLINE_SESSIONS) {
        ratio(
            format!("mxnode ≥ {TARGET_X_POSTFIX}× Postfix at 10 KiB × 20 sessions"),
            s.ratio_to_postfix,
            TARGET_X_POSTFIX,
        );
        ratio(
            format!("mxnode ≥ {TARGET_X_HARAKA}× Haraka at 10 KiB × 20 sessions"),
            s.ratio_to_haraka,
            TARGET_X_HARAKA,
        );
    }
    if let Some(s) = find(Target::Mxnode, LARGE_SIZE, HEADLINE_SESSIONS) {
        ratio(
            format!("mxnode ≥ {TARGET_LARGE_X_HARAKA}× Haraka at 1 MiB × 20 sessions"),
            s.ratio_to_haraka,
            TARGET_LARGE_X_HARAKA,
        );
    }
    for s in scenarios
        .iter()
        .filter(|s| s.target == Target::Mxnode && s.size == LARGE_SIZE)
    {
        ratio(
            format!(
                "mxnode ≥ {TARGET_LARGE_X_POSTFIX}× Postfix at 1 MiB × {} sessions",
                s.sessions
            ),
            s.ratio_to_postfix,
            TARGET_LARGE_X_POSTFIX,
        );
    }
    if let Some(r) =
        find(Target::Mxnode, HEADLINE_SIZE, HEADLINE_SESSIONS).and_then(|s| s.ratio_to_limit)
    {
        checks.push(Check {
            target: format!(
                "mxnode ≥ {:.0} % of the limit at 10 KiB × 20 sessions",
                TARGET_OF_LIMIT * 100.0
            ),
            measured: format!("{:.0} %", r * 100.0),
            met: r >= TARGET_OF_LIMIT,
        });
    }
    if let (Some(many), Some(headline)) = (
        find(Target::Mxnode, HEADLINE_SIZE, MANY_SESSIONS),
        find(Target::Mxnode, HEADLINE_SIZE, HEADLINE_SESSIONS),
    ) {
        checks.push(Check {
            target: "mxnode at 10 KiB × 100 sessions not below 10 KiB × 20".to_string(),
            measured: format!(
                "{:.0} vs {:.0} msg/s ({:.2}×)",
                many.rate,
                headline.rate,
                many.rate / headline.rate
            ),
            met: many.rate >= headline.rate,
        });
    }
    if let (Some(auth), Some(plain)) = (
        find(Target::MxnodeAuth, HEADLINE_SIZE, HEADLINE_SESSIONS),
        find(Target::Mxnode, HEADLINE_SIZE, HEADLINE_SESSIONS),
    ) {
        checks.push(Check {
            target: format!(
                "mxnode-auth ≥ {:.0} % of mxnode at 10 KiB × 20 sessions (authentication costs ≤ {:.0} %)",
                TARGET_AUTH_OF_PLAIN * 100.0,
                (1.0 - TARGET_AUTH_OF_PLAIN) * 100.0
            ),
            measured: format!(
                "{:.0} vs {:.0} msg/s ({:.0} %)",
                auth.rate,
                plain.rate,
                auth.rate / plain.rate * 100.0
            ),
            met: auth.rate >= TARGET_AUTH_OF_PLAIN * plain.rate,
        });
    }
    for s in mxnode().filter(|s| s.size == HEADLINE_SIZE) {
        let delay = s.receiver_delay_ms.unwrap_or_default() as f64;
        let bound = delay + TARGET_P99_OVERHEAD_MS;
        checks.push(Check {
            target: format!(
                "p99 ≤ receiver {delay:.0} ms + {TARGET_P99_OVERHEAD_MS:.0} ms at half saturation: {}",
                scenario_name(s)
            ),
            // The limit's own p99 beside it: what loopback SMTP alone costs in this run.
            measured: format!(
                "{:.2} ms at {:.0} msg/s{}",
                s.latency.p99_ms,
                s.latency.offered_rate,
                find(Target::Limit, s.size, s.sessions)
                    .map(|l| format!(" (limit: {:.2} ms)", l.latency.p99_ms))
                    .unwrap_or_default()
            ),
            met: s.latency.p99_ms <= bound,
        });
    }
    for s in mxnode().filter(|s| s.size == LARGE_SIZE) {
        let Some(cpu) = s.cpu_us_per_message else {
            continue;
        };
        checks.push(Check {
            target: format!(
                "CPU per 1 MiB message ≤ {:.0} ms: {}",
                TARGET_LARGE_CPU_US / 1000.0,
                scenario_name(s)
            ),
            measured: format!("{:.2} ms", cpu / 1000.0),
            met: cpu <= TARGET_LARGE_CPU_US,
        });
    }
    for s in scenarios.iter() {
        let Some(m) = &s.memory else { continue };
        let bound = TARGET_RSS_BASE_MIB + TARGET_RSS_PER_IN_FLIGHT * m.in_flight_mib;
        checks.push(Check {
            target: format!(
                "peak RSS ≤ {TARGET_RSS_BASE_MIB:.0} MiB + {TARGET_RSS_PER_IN_FLIGHT:.0} × in flight = {bound:.0} MiB: {}",
                scenario_name(s)
            ),
            measured: format!("{:.1} MiB", m.peak_mib),
            met: m.peak_mib <= bound,
        });
    }
    let idle = scenarios
        .iter()
        .filter_map(|s| s.memory.as_ref().map(|m| m.idle_mib))
        .fold(None, |max: Option<f64>, v| {
            Some(max.map_or(v, |m| m.max(v)))
        });
    if let Some(idle) = idle {
        checks.push(Check {
            target: format!("idle RSS ≤ {TARGET_IDLE_RSS_MIB:.0} MiB"),
            measured: format!("{idle:.1} MiB (highest of all starts)"),
            met: idle <= TARGET_IDLE_RSS_MIB,
        });
    }
    let thread_bound = cores as u64 + TARGET_EXTRA_THREADS;
    for s in mxnode().filter(|s| s.sessions >= MANY_SESSIONS) {
        let Some(threads) = s.threads else { continue };
        checks.push(Check {
            target: format!(
                "threads under {} concurrent deliveries ≤ cores + {TARGET_EXTRA_THREADS} = {thread_bound}: {}",
                s.sessions,
                scenario_name(s)
            ),
            measured: format!("{threads} (most sampled)"),
            met: threads <= thread_bound,
        });
    }
    checks
}

/// The results table and the checked targets, in Markdown.
pub fn markdown(scenarios: &[Scenario], checks: &[Check], runs: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| size | sessions | target | msg/s (median of {runs}) | × postfix | × haraka | × limit | p50 ms | p99 ms | at msg/s | peak RSS MiB | RSS per MiB in flight | threads | CPU µs/msg (sink) | webhook TLS conns / msgs |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut rows: Vec<&Scenario> = scenarios.iter().collect();
    rows.sort_by_key(|s| (s.size, s.sessions, s.target as u8));
    for s in rows {
        let ratio = |r: Option<f64>| r.map_or("–".to_string(), |r| format!("{r:.2}"));
        let (peak, per) = match &s.memory {
            Some(m) => (
                format!("{:.1}", m.peak_mib),
                format!("{:.2}", m.per_in_flight_mib),
            ),
            None => ("–".to_string(), "–".to_string()),
        };
        let cpu = match (s.cpu_us_per_message, s.sink_cpu_us_per_message) {
            (Some(node), Some(sink)) => format!("{node:.0} ({sink:.0})"),
            _ => "–".to_string(),
        };
        let threads = s.threads.map_or("–".to_string(), |t| t.to_string());
        let conns = match (s.webhook_connections, s.webhook_requests) {
            (Some(c), Some(r)) => format!("{c} / {r}"),
            _ => "–".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {peak} | {per} | {threads} | {cpu} | {conns} |",
            s.size_label,
            s.sessions,
            s.target.name(),
            s.rate,
            ratio(s.ratio_to_postfix),
            ratio(s.ratio_to_haraka),
            ratio(s.ratio_to_limit),
            s.latency.p50_ms,
            s.latency.p99_ms,
            s.latency.offered_rate,
        );
    }
    if let Some(idle) = scenarios.iter().find_map(|s| s.memory.as_ref()) {
        let store = scenarios
            .iter()
            .find_map(|s| s.store_on)
            .map_or("unknown", |on| if on { "on" } else { "off" });
        let _ = writeln!(
            out,
            "\nmxnode idle RSS {:.1} MiB; metadata store {store}.",
            idle.idle_mib
        );
    }
    if !checks.is_empty() {
        let _ = writeln!(out, "\n| target | measured | met |");
        let _ = writeln!(out, "|---|---|---|");
        for c in checks {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                c.target,
                c.measured,
                if c.met { "yes" } else { "**no**" }
            );
        }
    }
    out
}
