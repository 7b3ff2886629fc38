//! `mxnode-bench`: the driver behind `./build.sh bench`. Runs the sweep of [`mxnode_bench::run`],
//! prints the Markdown table on stdout, and writes `results.json` and `results.md` into `--out`
//! (`plot.py` turns the JSON into the chart). Progress goes to stderr.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;
use clap::Parser;
use mxnode_bench::messages::parse_size;
use mxnode_bench::report::{self, Machine, Report};
use mxnode_bench::run::{self, Plan, Target};

#[derive(Parser)]
#[command(about = "mxnode against Postfix, Haraka and the SMTP limit, on loopback")]
struct Args {
    /// Where results.json and results.md go.
    #[arg(long)]
    out: PathBuf,
    /// Scratch directory (message files, Postfix instance and queue, Haraka's configuration,
    /// mxnode data_dir).
    #[arg(long, default_value = "/var/tmp/mxnode-bench")]
    work: PathBuf,
    /// The mxnode binary (a release build).
    #[arg(long)]
    mxnode: PathBuf,
    /// Run mxnode under this command (words split at spaces), e.g.
    /// "valgrind --tool=callgrind --callgrind-out-file=/tmp/callgrind.out.%p" for a profile.
    #[arg(long, default_value = "")]
    mxnode_wrapper: String,
    /// The webhook-sink binary.
    #[arg(long)]
    sink: PathBuf,
    /// Haraka's installation (`npm ci` in bench/haraka, which `./build.sh bench` runs).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/haraka"))]
    haraka: PathBuf,
    /// Haraka's `nodes` setting: `cpus` (one worker process per core, Haraka's performance
    /// advice), a number of workers, or `0` for a single process without the cluster.
    #[arg(long, default_value = "cpus")]
    haraka_nodes: String,
    /// Targets, comma-separated: limit, postfix, haraka, mxnode, mxnode-20ms, mxnode-auth.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "limit,postfix,haraka,mxnode,mxnode-20ms,mxnode-auth"
    )]
    targets: Vec<String>,
    /// Message sizes, comma-separated (e.g. 10KiB,1MiB).
    #[arg(long, value_delimiter = ',', default_value = "10KiB,1MiB")]
    sizes: Vec<String>,
    /// Concurrent sessions, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,20,100")]
    sessions: Vec<usize>,
    /// Timed runs per scenario; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Target length of each timed run, seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Target length of each latency run, seconds.
    #[arg(long, default_value_t = 3.0)]
    latency_seconds: f64,
    /// A short development sweep: one run of about one second per scenario.
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let targets = args
        .targets
        .iter()
        .map(|t| Target::parse(t).with_context(|| format!("unknown target {t:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sizes = args
        .sizes
        .iter()
        .map(|s| parse_size(s).with_context(|| format!("unreadable size {s:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (runs, seconds, latency_seconds) = if args.quick {
        (1, 1.0, 1.0)
    } else {
        (args.runs.max(1), args.seconds, args.latency_seconds)
    };
    let plan = Plan {
        targets,
        sizes,
        sessions: args.sessions,
        runs,
        seconds,
        latency_seconds,
        mxnode: args.mxnode,
        mxnode_wrapper: args
            .mxnode_wrapper
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        sink: args.sink,
        haraka: args.haraka,
        haraka_nodes: args.haraka_nodes,
        work: args.work,
    };
    let scenarios = run::run(&plan, &mut |line| eprintln!("bench: {line}"))?;
    let machine = machine();
    let checks = report::checks(&scenarios, machine.cores);
    let table = report::markdown(&scenarios, &checks, plan.runs);
    let report = Report {
        machine,
        runs_per_scenario: plan.runs,
        scenarios: &scenarios,
        checks,
    };
    std::fs::create_dir_all(&args.out)?;
    let json = serde_json::to_vec_pretty(&report)?;
    std::fs::write(args.out.join("results.json"), json)?;
    std::fs::write(args.out.join("results.md"), &table)?;
    print!("{table}");
    Ok(())
}

fn machine() -> Machine {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let dirty = !git(&["status", "--porcelain"]).is_empty();
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        commit: format!(
            "{}{}",
            git(&["rev-parse", "--short", "HEAD"]),
            if dirty { " (uncommitted changes)" } else { "" }
        ),
    }
}
