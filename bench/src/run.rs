//! One benchmark sweep: every target × message size × session count, in one process, so that
//! the ratios between targets are measured under the same machine conditions.
//!
//! For each scenario: a warm-up run that also sizes the timed runs (about `seconds` long each),
//! `runs` timed `smtp-source` runs (median messages/s), then the latency client at half the
//! median rate with the same number of sessions. Postfix runs are timed until its queue is
//! empty; every run checks that each message arrived (Postfix's log, the webhook sink's
//! counter for Haraka and mxnode). mxnode is started afresh per scenario so its memory peak
//! and thread count belong to that scenario.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde::Serialize;

use crate::latency::{self, LatencyRun};
use crate::messages::{message_lf, size_label, to_crlf};
use crate::peers::{
    Haraka, HarakaConfig, Mxnode, Postfix, RouteTo, SinkStats, SmtpSink, ThreadSampler, WebhookSink,
};
use crate::source::{self, RCPT_DOMAIN};
use crate::stats::median;

/// The 20 ms receiver of the fourth target.
pub const SLOW_RECEIVER_MS: u64 = 20;
/// Longest a Postfix queue may take to drain after a run.
const QUEUE_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest the delivery counters may lag behind the replies.
const COUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// Fewest messages in a warm-up run.
const MIN_WARMUP: usize = 20;
/// Fewest and most messages of a timed run.
const MIN_RUN: usize = 20;
const MAX_RUN: usize = 100_000;
/// Fewest and most messages of a latency run: enough for a meaningful p99.
const MIN_LATENCY: usize = 100;
const MAX_LATENCY: usize = 20_000;
/// The webhook sink's executor threads.
const SINK_THREADS: usize = 2;
/// How long an idle node is left alone before its idle memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(1);
/// Haraka is JavaScript: until V8 has compiled its hot paths it runs several times slower.
/// Before any measurement it gets this many bytes of each message size (at least
/// [`MIN_WARMUP`], at most [`MAX_JIT_WARMUP`] messages), so it is measured as the long-running
/// server it is in production. (Postfix and mxnode are compiled; their warm-up runs fill
/// caches and pools.)
const JIT_WARMUP_BYTES: usize = 32 << 20;
const MAX_JIT_WARMUP: usize = 1000;
/// Sessions of that warm-up.
const JIT_WARMUP_SESSIONS: usize = 10;

/// What the benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// `smtp-source` → `smtp-sink`: SMTP with no processing at all.
    Limit,
    /// `smtp-source` → Postfix (queue on disk) → `smtp-sink`.
    Postfix,
    /// `smtp-source` → Haraka (mail in memory, `bench/haraka/plugins/queue_webhook.js`) → the
    /// webhook sink answering at once: what "SMTP in, HTTP out" is built with today.
    Haraka,
    /// `smtp-source` → mxnode → a webhook sink that answers at once.
    Mxnode,
    /// The same with a receiver that answers after [`SLOW_RECEIVER_MS`].
    #[serde(rename = "mxnode-20ms")]
    MxnodeSlow,
    /// `mxnode` with sender authentication answering (issue 15): the message DKIM-signed
    /// (rsa-sha256, by dkimpy), and a local DNS server (dnsmasq) with the sender's SPF, DKIM key
    /// and DMARC `p=reject` records, cached by the node after the warm-up. `mxnode` beside it
    /// asks a resolver that refuses at once, so the two rows differ by what verification costs.
    #[serde(rename = "mxnode-auth")]
    MxnodeAuth,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Limit,
        Target::Postfix,
        Target::Haraka,
        Target::Mxnode,
        Target::MxnodeSlow,
        Target::MxnodeAuth,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Limit => "limit",
            Target::Postfix => "postfix",
            Target::Haraka => "haraka",
            Target::Mxnode => "mxnode",
            Target::MxnodeSlow => "mxnode-20ms",
            Target::MxnodeAuth => "mxnode-auth",
        }
    }

    pub fn parse(text: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == text)
    }

    /// The webhook receiver's delay, for the targets that deliver to a webhook.
    pub fn receiver_delay_ms(self) -> Option<u64> {
        match self {
            Target::Haraka | Target::Mxnode | Target::MxnodeAuth => Some(0),
            Target::MxnodeSlow => Some(SLOW_RECEIVER_MS),
            Target::Limit | Target::Postfix => None,
        }
    }

    /// Whether the target is mxnode (with either receiver).
    pub fn is_mxnode(self) -> bool {
        matches!(
            self,
            Target::Mxnode | Target::MxnodeSlow | Target::MxnodeAuth
        )
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub targets: Vec<Target>,
    pub sizes: Vec<usize>,
    pub sessions: Vec<usize>,
    /// Timed runs per scenario (the median is reported).
    pub runs: usize,
    /// Target length of one timed run.
    pub seconds: f64,
    /// Target length of the latency run.
    pub latency_seconds: f64,
    /// The `mxnode` binary (release build).
    pub mxnode: PathBuf,
    /// A command line to run mxnode under (a profiler), empty for none.
    pub mxnode_wrapper: Vec<String>,
    /// The `webhook-sink` binary.
    pub sink: PathBuf,
    /// Haraka's installation: `bench/haraka` with its `node_modules` and plugins.
    pub haraka: PathBuf,
    /// Haraka's `nodes` (`cpus`, a number, `0` for one process without the cluster).
    pub haraka_nodes: String,
    /// Scratch space: message files, Postfix's and Haraka's instances, mxnode's data_dir.
    pub work: PathBuf,
}

/// One timed `smtp-source` run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub messages: usize,
    pub seconds: f64,
    pub rate: f64,
}

/// mxnode's resident memory in one scenario, MiB.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// After start, before any mail.
    pub idle_mib: f64,
    /// Peak over the scenario (VmHWM).
    pub peak_mib: f64,
    /// Message bytes held at once at most: sessions × message size.
    pub in_flight_mib: f64,
    /// `(peak - idle) / in flight`.
    pub per_in_flight_mib: f64,
    /// After the scenario, idle again.
    pub after_mib: f64,
}

/// One target × size × sessions.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub target: Target,
    pub size: usize,
    pub size_label: String,
    pub sessions: usize,
    pub runs: Vec<Run>,
    /// Median messages/s of the runs.
    pub rate: f64,
    /// `rate` relative to Postfix, Haraka and the limit of the same size and sessions.
    pub ratio_to_postfix: Option<f64>,
    pub ratio_to_haraka: Option<f64>,
    pub ratio_to_limit: Option<f64>,
    pub latency: LatencyRun,
    pub receiver_delay_ms: Option<u64>,
    pub memory: Option<Memory>,
    /// Whether mxnode's metadata store wrote a database.
    pub store_on: Option<bool>,
    /// The most threads mxnode had during the scenario (`Threads:` of `/proc/PID/status`,
    /// sampled through every run).
    pub threads: Option<u64>,
    /// CPU time of the server per message in the timed runs, microseconds (all threads; for
    /// Haraka its master and workers): mxnode and Haraka.
    pub cpu_us_per_message: Option<f64>,
    /// CPU time of the webhook sink per message: what the receiver costs on this machine.
    pub sink_cpu_us_per_message: Option<f64>,
    /// TLS connections the webhook sink accepted during the scenario, and the deliveries it
    /// answered: keep-alive shows as about one connection per session, not one per message.
    pub webhook_connections: Option<u64>,
    pub webhook_requests: Option<u64>,
}

/// Where messages go for one target, and how to tell that they arrived.
enum Peer {
    Limit(SmtpSink),
    Postfix {
        postfix: Postfix,
        _relay: SmtpSink,
    },
    Haraka {
        haraka: Haraka,
        sink: WebhookSink,
        /// Issued the sink's certificate; its files live as long as it does.
        _ca: Box<mxnode_tests::TestCa>,
    },
    Mxnode {
        sink: WebhookSink,
        /// Boxed: it is large next to the other peers.
        ca: Box<mxnode_tests::TestCa>,
        secret: String,
        /// The sender's DNS (`mxnode-auth`); None: the harness's refusing resolver.
        dns: Option<mxnode_tests::DnsServer>,
    },
}

/// A message size's files: LF-only for smtp-source, wire form for the latency client; and the
/// same message DKIM-signed, for `mxnode-auth`.
struct Message {
    size: usize,
    lf_file: PathBuf,
    wire: Arc<Vec<u8>>,
    signed: Option<Signed>,
}

/// A DKIM-signed copy of a message.
struct Signed {
    lf_file: PathBuf,
    wire: Arc<Vec<u8>>,
}

impl Message {
    /// The LF file and the wire form `target` is sent.
    fn for_target(&self, target: Target) -> (&Path, &Arc<Vec<u8>>) {
        match (&self.signed, target) {
            (Some(signed), Target::MxnodeAuth) => (&signed.lf_file, &signed.wire),
            _ => (&self.lf_file, &self.wire),
        }
    }
}

/// Runs the whole plan; `progress` hears one line per step.
///
/// Targets are interleaved: for each size × session count, every target gets its warm-up, then
/// timed run 1 of every target, run 2 of every target, and so on, then the latency runs. Load
/// from elsewhere on the machine then hits all targets alike instead of whichever ran during it,
/// which is what keeps the ratios meaningful on a shared machine.
pub fn run(plan: &Plan, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<Scenario>> {
    std::fs::create_dir_all(&plan.work)
        .with_context(|| format!("create {}", plan.work.display()))?;
    let signer = plan
        .targets
        .contains(&Target::MxnodeAuth)
        .then(|| DkimSigner::new(&plan.work))
        .transpose()?;
    let messages = plan
        .sizes
        .iter()
        .map(|&size| write_message(&plan.work, size, signer.as_ref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut peers = plan
        .targets
        .iter()
        .map(|&target| {
            let peer = start_peer(plan, target, &messages, signer.as_ref(), progress)?;
            Ok((target, peer))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut scenarios = Vec::new();
    for message in &messages {
        for &sessions in &plan.sessions {
            let group = format!("{} × {sessions} sessions", size_label(message.size));
            progress(&group);
            let results = run_group(plan, &mut peers, message, sessions, progress)
                .with_context(|| group.clone())?;
            for scenario in &results {
                progress(&format!(
                    "  {:<12} {:>8.1} msg/s, p50 {:.2} ms, p99 {:.2} ms{}{}",
                    scenario.target.name(),
                    scenario.rate,
                    scenario.latency.p50_ms,
                    scenario.latency.p99_ms,
                    scenario
                        .memory
                        .as_ref()
                        .map(|m| format!(", peak RSS {:.1} MiB", m.peak_mib))
                        .unwrap_or_default(),
                    scenario
                        .threads
                        .map(|t| format!(", {t} threads"))
                        .unwrap_or_default()
                ));
            }
            scenarios.extend(results);
        }
    }
    add_ratios(&mut scenarios);
    Ok(scenarios)
}

fn write_message(work: &Path, size: usize, signer: Option<&DkimSigner>) -> anyhow::Result<Message> {
    let lf = message_lf(size);
    let lf_file = work.join(format!("message-{}.eml", size_label(size)));
    std::fs::write(&lf_file, &lf).with_context(|| format!("write {}", lf_file.display()))?;
    let wire = to_crlf(&lf);
    let signed = match signer {
        Some(signer) => {
            let wire = signer.sign(&wire)?;
            let lf_file = work.join(format!("message-{}-signed.eml", size_label(size)));
            let lf = String::from_utf8_lossy(&wire).replace("\r\n", "\n");
            std::fs::write(&lf_file, lf).with_context(|| format!("write {}", lf_file.display()))?;
            Some(Signed {
                lf_file,
                wire: Arc::new(wire),
            })
        }
        None => None,
    };
    Ok(Message {
        size,
        lf_file,
        wire: Arc::new(wire),
        signed,
    })
}

/// The DKIM signer of `mxnode-auth`'s messages: dkimpy (`tests/peers/dkim_sign.py`, from the venv
/// `./build.sh bench` makes, or `$MXNODE_DKIMPY_PYTHON`), with an RSA 2048 key made per run.
struct DkimSigner {
    python: String,
    dir: PathBuf,
    /// The key's DKIM record (`v=DKIM1; k=rsa; p=…`).
    record: String,
}

/// The sender domain of the benchmark's messages (`source::MAIL_FROM`'s and `From:`'s).
const SENDER_DOMAIN: &str = "source.bench.test";
/// The DKIM selector of `mxnode-auth`'s signatures.
const DKIM_SELECTOR: &str = "bench";
const DKIM_SIGNER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers/dkim_sign.py");

impl DkimSigner {
    fn new(work: &Path) -> anyhow::Result<DkimSigner> {
        let python = std::env::var("MXNODE_DKIMPY_PYTHON")
            .unwrap_or_else(|_| "/var/tmp/mxnode-auth-venv/bin/python".to_string());
        let dir = work.join("dkim");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let output = std::process::Command::new(&python)
            .arg(DKIM_SIGNER)
            .arg("keygen")
            .arg(&dir)
            .output()
            .with_context(|| format!("run the dkimpy signer with {python}"))?;
        ensure!(
            output.status.success(),
            "dkimpy keygen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let records: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let record = records["rsa"]
            .as_str()
            .context("no RSA key record from the signer")?
            .to_string();
        Ok(DkimSigner {
            python,
            dir,
            record,
        })
    }

    /// `wire` with a DKIM-Signature (rsa-sha256, relaxed/relaxed) of `d=SENDER_DOMAIN`.
    fn sign(&self, wire: &[u8]) -> anyhow::Result<Vec<u8>> {
        use std::io::Write as _;
        let mut child = std::process::Command::new(&self.python)
            .arg(DKIM_SIGNER)
            .arg("sign")
            .arg(self.dir.join("rsa.pem"))
            .args([SENDER_DOMAIN, DKIM_SELECTOR])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("start the dkimpy signer")?;
        child
            .stdin
            .take()
            .context("signer stdin")?
            .write_all(wire)?;
        let output = child.wait_with_output()?;
        ensure!(
            output.status.success(),
            "dkimpy sign failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output.stdout)
    }

    /// The sender's records: SPF for the load generators' address, the DKIM key, DMARC
    /// `p=reject` (every benchmark message passes it).
    fn zone(&self) -> Vec<(String, String)> {
        vec![
            (
                SENDER_DOMAIN.to_string(),
                "v=spf1 ip4:127.0.0.0/8 -all".to_string(),
            ),
            (
                format!("{DKIM_SELECTOR}._domainkey.{SENDER_DOMAIN}"),
                self.record.clone(),
            ),
            (
                format!("_dmarc.{SENDER_DOMAIN}"),
                "v=DMARC1; p=reject".to_string(),
            ),
        ]
    }
}

fn start_peer(
    plan: &Plan,
    target: Target,
    messages: &[Message],
    signer: Option<&DkimSigner>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Peer> {
    Ok(match target {
        Target::Limit => Peer::Limit(SmtpSink::start()?),
        Target::Postfix => {
            let relay = SmtpSink::start()?;
            let postfix = Postfix::start(&plan.work.join("postfix"), relay.addr)?;
            Peer::Postfix {
                postfix,
                _relay: relay,
            }
        }
        Target::Haraka => {
            let ca = Box::new(mxnode_tests::TestCa::new());
            let sink = WebhookSink::start(&plan.sink, &ca, 0, SINK_THREADS)?;
            let config = HarakaConfig {
                nodes: &plan.haraka_nodes,
                url: &sink.url,
                secret: &mxnode_tests::new_webhook_secret(),
                ca_pem: &ca.ca_pem,
            };
            let haraka = Haraka::start(&plan.haraka, &plan.work.join("haraka"), &config)?;
            for message in messages {
                let count = (JIT_WARMUP_BYTES / message.size).clamp(MIN_WARMUP, MAX_JIT_WARMUP);
                progress(&format!(
                    "haraka: JIT warm-up, {count} × {}",
                    size_label(message.size)
                ));
                source::run(haraka.addr, &message.lf_file, JIT_WARMUP_SESSIONS, count)
                    .context("haraka warm-up")?;
            }
            Peer::Haraka {
                haraka,
                sink,
                _ca: ca,
            }
        }
        Target::Mxnode | Target::MxnodeSlow | Target::MxnodeAuth => {
            let ca = Box::new(mxnode_tests::TestCa::new());
            let delay = target.receiver_delay_ms().unwrap_or_default();
            let sink = WebhookSink::start(&plan.sink, &ca, delay, SINK_THREADS)?;
            let dns = match (target, signer) {
                (Target::MxnodeAuth, Some(signer)) => {
                    let zone = signer.zone();
                    let records: Vec<(&str, &str)> =
                        zone.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    Some(mxnode_tests::DnsServer::start(&records))
                }
                _ => None,
            };
            Peer::Mxnode {
                sink,
                ca,
                secret: mxnode_tests::new_webhook_secret(),
                dns,
            }
        }
    })
}

impl Peer {
    /// The webhook sink of the targets that deliver to one (Haraka, mxnode).
    fn sink(&mut self) -> Option<&mut WebhookSink> {
        match self {
            Peer::Haraka { sink, .. } | Peer::Mxnode { sink, .. } => Some(sink),
            Peer::Limit(_) | Peer::Postfix { .. } => None,
        }
    }
}

/// The scenario's SMTP server, and what makes its numbers honest.
struct Under<'a> {
    target: Target,
    peer: &'a mut Peer,
    addr: SocketAddr,
    /// The mxnode started for this scenario (mxnode targets).
    node: Option<Mxnode>,
    /// Samples the node's thread count from its start to the end of the scenario.
    threads: Option<ThreadSampler>,
    /// CPU seconds used by the server (mxnode, Haraka) and by the webhook sink during the timed
    /// runs so far, and the messages those runs sent.
    server_cpu: f64,
    sink_cpu: f64,
    cpu_messages: usize,
    /// The webhook sink's counters when the scenario started (targets with a sink).
    sink_start: Option<SinkStats>,
}

impl<'a> Under<'a> {
    /// Where `target`'s messages go; starts a fresh mxnode (its own scratch directory, by
    /// `index`) for the mxnode targets.
    fn start(
        plan: &Plan,
        target: Target,
        index: usize,
        peer: &'a mut Peer,
    ) -> anyhow::Result<Under<'a>> {
        let (addr, node) = match &mut *peer {
            Peer::Limit(sink) => (sink.addr, None),
            Peer::Postfix { postfix, .. } => (postfix.addr, None),
            Peer::Haraka { haraka, .. } => {
                haraka.ensure_running()?;
                (haraka.addr, None)
            }
            Peer::Mxnode {
                sink,
                ca,
                secret,
                dns,
            } => {
                let route = RouteTo {
                    webhook: &sink.url,
                    secret,
                    ca_pem: &ca.ca_pem,
                    domain: RCPT_DOMAIN,
                    resolver: dns
                        .as_ref()
                        .map_or_else(mxnode_tests::refusing_resolver, |dns| dns.addr()),
                };
                let node = Mxnode::start(
                    &plan.mxnode,
                    &plan.mxnode_wrapper,
                    &plan.work.join(format!("mxnode-{index}")),
                    &route,
                )?;
                (node.addr, Some(node))
            }
        };
        let sink_start = peer.sink().map(|sink| sink.stats()).transpose()?;
        let threads = node.as_ref().map(|node| ThreadSampler::start(node.pid()));
        Ok(Under {
            target,
            peer,
            addr,
            node,
            threads,
            server_cpu: 0.0,
            sink_cpu: 0.0,
            cpu_messages: 0,
            sink_start,
        })
    }

    /// Connections and requests the webhook sink saw since the scenario started.
    fn sink_delta(&mut self) -> anyhow::Result<Option<SinkStats>> {
        match (self.sink_start, self.peer.sink()) {
            (Some(start), Some(sink)) => {
                let now = sink.stats()?;
                Ok(Some(SinkStats {
                    requests: now.requests - start.requests,
                    connections: now.connections - start.connections,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Sends `count` messages with smtp-source and returns the seconds until all were
    /// delivered (for Postfix: until its queue is empty).
    fn timed(&mut self, message: &Message, sessions: usize, count: usize) -> anyhow::Result<f64> {
        let before = self.delivered_before()?;
        let cpu_before = self.cpu()?;
        let started = Instant::now();
        let (lf_file, _) = message.for_target(self.target);
        source::run(self.addr, lf_file, sessions, count)?;
        if let Peer::Postfix { postfix, .. } = self.peer {
            postfix.wait_until_empty(QUEUE_DRAIN_TIMEOUT)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu_after = self.cpu()?;
        self.server_cpu += cpu_after.0 - cpu_before.0;
        self.sink_cpu += cpu_after.1 - cpu_before.1;
        self.cpu_messages += count;
        self.check_delivered(before, count)?;
        Ok(seconds)
    }

    /// Whether the server's CPU time is measured: mxnode's and Haraka's (Postfix's is spread
    /// over processes that come and go, the limit is not a server under test).
    fn measures_cpu(&self) -> bool {
        self.node.is_some() || matches!(self.peer, Peer::Haraka { .. })
    }

    /// CPU seconds of the server and of its webhook sink so far (zero for the other targets).
    fn cpu(&self) -> anyhow::Result<(f64, f64)> {
        match (&self.node, &*self.peer) {
            (Some(node), Peer::Mxnode { sink, .. }) => Ok((
                crate::peers::cpu_seconds(node.pid())?,
                crate::peers::cpu_seconds(sink.pid())?,
            )),
            (None, Peer::Haraka { haraka, sink, .. }) => Ok((
                haraka.cpu_seconds()?,
                crate::peers::cpu_seconds(sink.pid())?,
            )),
            _ => Ok((0.0, 0.0)),
        }
    }

    /// Microseconds of CPU per message of the server and of the sink in the timed runs.
    fn cpu_per_message(&self) -> Option<(f64, f64)> {
        (self.measures_cpu() && self.cpu_messages > 0).then(|| {
            let per = |seconds: f64| seconds * 1e6 / self.cpu_messages as f64;
            (per(self.server_cpu), per(self.sink_cpu))
        })
    }

    /// The sink's counter before a run (targets with a sink).
    fn delivered_before(&mut self) -> anyhow::Result<u64> {
        if let Peer::Postfix { postfix, .. } = self.peer {
            // Forget what earlier runs logged.
            postfix.delivery_counts()?;
            return Ok(0);
        }
        match self.peer.sink() {
            Some(sink) => sink.requests(),
            None => Ok(0),
        }
    }

    /// Fails unless `count` messages arrived since `before`.
    fn check_delivered(&mut self, before: u64, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + COUNT_TIMEOUT;
        if let Peer::Haraka { haraka, .. } = self.peer {
            haraka.ensure_running()?;
        }
        match self.peer {
            Peer::Limit(_) => Ok(()),
            Peer::Postfix { postfix, .. } => {
                let (mut sent, mut other) = (0, 0);
                loop {
                    let (s, o) = postfix.delivery_counts()?;
                    sent += s;
                    other += o;
                    if sent >= count || Instant::now() > deadline {
                        break;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                ensure!(
                    sent == count && other == 0,
                    "postfix relayed {sent} of {count} messages ({other} not sent)"
                );
                Ok(())
            }
            Peer::Haraka { sink, .. } | Peer::Mxnode { sink, .. } => {
                let mut arrived = 0;
                while Instant::now() < deadline {
                    arrived = sink.requests()? - before;
                    if arrived >= count as u64 {
                        break;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                ensure!(
                    arrived == count as u64,
                    "the webhook sink got {arrived} of {count} messages"
                );
                Ok(())
            }
        }
    }

    fn latency(
        &mut self,
        message: &Message,
        sessions: usize,
        count: usize,
        rate: f64,
    ) -> anyhow::Result<LatencyRun> {
        let before = self.delivered_before()?;
        let (_, wire) = message.for_target(self.target);
        let result = latency::run(self.addr, wire.clone(), sessions, count, rate)?;
        if let Peer::Postfix { postfix, .. } = self.peer {
            postfix.wait_until_empty(QUEUE_DRAIN_TIMEOUT)?;
        }
        ensure!(
            result.refused == 0,
            "{} messages refused in the latency run",
            result.refused
        );
        self.check_delivered(before, count)?;
        Ok(result)
    }
}

/// Every target for one message size and session count, interleaved (see [`run`]).
fn run_group(
    plan: &Plan,
    peers: &mut [(Target, Peer)],
    message: &Message,
    sessions: usize,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<Scenario>> {
    let mut unders = Vec::with_capacity(peers.len());
    for (index, (target, peer)) in peers.iter_mut().enumerate() {
        unders.push(Under::start(plan, *target, index, peer)?);
    }
    // Idle memory before any mail, then warm-ups that also size the timed runs.
    let mut idle = Vec::with_capacity(unders.len());
    for under in &mut unders {
        idle.push(match &mut under.node {
            Some(node) => {
                thread::sleep(IDLE_SETTLE);
                Some(node.rss()?.0)
            }
            None => None,
        });
    }
    let mut counts = Vec::with_capacity(unders.len());
    for under in &mut unders {
        let warmup = (2 * sessions).max(MIN_WARMUP);
        let seconds = under.timed(message, sessions, warmup)?;
        let estimate = warmup as f64 / seconds;
        counts.push(((estimate * plan.seconds) as usize).clamp(MIN_RUN.max(2 * sessions), MAX_RUN));
        // CPU is accounted over the timed runs only.
        under.server_cpu = 0.0;
        under.sink_cpu = 0.0;
        under.cpu_messages = 0;
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); unders.len()];
    for round in 0..plan.runs {
        for (i, under) in unders.iter_mut().enumerate() {
            let seconds = under
                .timed(message, sessions, counts[i])
                .with_context(|| format!("{} run {}", under.target.name(), round + 1))?;
            runs[i].push(Run {
                messages: counts[i],
                seconds,
                rate: counts[i] as f64 / seconds,
            });
        }
    }
    let mut scenarios = Vec::with_capacity(unders.len());
    for (i, under) in unders.iter_mut().enumerate() {
        let runs = std::mem::take(&mut runs[i]);
        let rate = median(&runs.iter().map(|r| r.rate).collect::<Vec<_>>()).unwrap_or(0.0);
        progress(&format!(
            "  {:<12} runs: {}",
            under.target.name(),
            runs.iter()
                .map(|r| format!("{:.1}", r.rate))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let latency_rate = rate / 2.0;
        let latency_count =
            ((latency_rate * plan.latency_seconds) as usize).clamp(MIN_LATENCY, MAX_LATENCY);
        let latency = under
            .latency(message, sessions, latency_count, latency_rate)
            .with_context(|| format!("{} latency run", under.target.name()))?;
        let (memory, store_on) = match (&mut under.node, idle[i]) {
            (Some(node), Some(idle)) => {
                node.ensure_running()?;
                let (_, peak) = node.rss()?;
                let in_flight = (sessions * message.size) as f64;
                let mib = |bytes: f64| bytes / f64::from(1 << 20);
                let memory = Memory {
                    idle_mib: mib(idle as f64),
                    peak_mib: mib(peak as f64),
                    in_flight_mib: mib(in_flight),
                    per_in_flight_mib: (peak as f64 - idle as f64) / in_flight,
                    after_mib: 0.0,
                };
                (Some(memory), Some(node.store_is_on()))
            }
            _ => (None, None),
        };
        let sink = under.sink_delta()?;
        let threads = under.threads.as_mut().map(ThreadSampler::stop);
        scenarios.push(Scenario {
            target: under.target,
            size: message.size,
            size_label: size_label(message.size),
            sessions,
            runs,
            rate,
            ratio_to_postfix: None,
            ratio_to_haraka: None,
            ratio_to_limit: None,
            latency,
            receiver_delay_ms: under.target.receiver_delay_ms(),
            memory,
            store_on,
            threads,
            cpu_us_per_message: under.cpu_per_message().map(|(node, _)| node),
            sink_cpu_us_per_message: under.cpu_per_message().map(|(_, sink)| sink),
            webhook_connections: sink.map(|s| s.connections),
            webhook_requests: sink.map(|s| s.requests),
        });
    }
    // Memory once the node is idle again: what it keeps after the load.
    thread::sleep(IDLE_SETTLE);
    for (under, scenario) in unders.iter_mut().zip(&mut scenarios) {
        if let (Some(node), Some(memory)) = (&mut under.node, &mut scenario.memory) {
            memory.after_mib = node.rss()?.0 as f64 / f64::from(1 << 20);
        }
    }
    Ok(scenarios)
}

/// Fills in each scenario's ratio to Postfix, Haraka and the limit of the same size and
/// sessions.
fn add_ratios(scenarios: &mut [Scenario]) {
    let rate_of = |scenarios: &[Scenario], target: Target, size: usize, sessions: usize| {
        scenarios
            .iter()
            .find(|s| s.target == target && s.size == size && s.sessions == sessions)
            .map(|s| s.rate)
    };
    let snapshot = scenarios.to_vec();
    for scenario in scenarios.iter_mut() {
        let (size, sessions) = (scenario.size, scenario.sessions);
        scenario.ratio_to_postfix =
            rate_of(&snapshot, Target::Postfix, size, sessions).map(|p| scenario.rate / p);
        scenario.ratio_to_haraka =
            rate_of(&snapshot, Target::Haraka, size, sessions).map(|h| scenario.rate / h);
        scenario.ratio_to_limit =
            rate_of(&snapshot, Target::Limit, size, sessions).map(|l| scenario.rate / l);
    }
}
