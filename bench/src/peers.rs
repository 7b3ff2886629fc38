//! The processes a benchmark runs against, each started and stopped by its owner value:
//! `smtp-sink` (the protocol limit, and Postfix's next hop), a private Postfix instance, a
//! private Haraka (SMTP in, the webhook out through `bench/haraka/plugins/queue_webhook.js`), the
//! HTTPS webhook sink, and the mxnode daemon under test.
//!
//! Every peer listens on 127.0.0.1 only, every wait has a deadline, and every process is
//! stopped when its value is dropped, also when the benchmark fails half-way (Haraka's cluster
//! workers with it: it runs in a process group of its own). Nothing here writes message content
//! anywhere: Postfix's queue (its own design) is the only exception, and it lives in the
//! benchmark's scratch directory.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long a peer may take to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a peer may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(10);
/// Lines of mxnode's log kept for the error message when something fails.
const LOG_TAIL_LINES: usize = 40;
/// Concurrent connections the sinks accept: above every session count benchmarked.
const SINK_MAX_CONNECTIONS: usize = 1000;
/// Listen backlog of smtp-sink.
const SINK_BACKLOG: usize = 1024;
/// Unprivileged user smtp-sink switches to (it refuses to run as root).
const SINK_USER: &str = "postfix";

/// How often the thread sampler reads `/proc/PID/status`.
const THREAD_SAMPLE_INTERVAL: Duration = Duration::from_millis(20);

/// A child process that is terminated (SIGTERM, then SIGKILL) when dropped.
pub struct Child {
    name: &'static str,
    child: std::process::Child,
    /// The child leads a process group of its own, and stopping it stops the whole group: for
    /// servers that fork workers (Haraka's cluster), which must not outlive the benchmark.
    group: bool,
}

impl Child {
    fn spawn(name: &'static str, command: &mut Command) -> anyhow::Result<Child> {
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        Ok(Child {
            name,
            child,
            group: false,
        })
    }

    /// Spawns `command` as the leader of a new process group (see [`Child::group`]).
    fn spawn_group(name: &'static str, command: &mut Command) -> anyhow::Result<Child> {
        let mut child = Child::spawn(name, command.process_group(0))?;
        child.group = true;
        Ok(child)
    }

    /// SIGTERM or SIGKILL to the child, or to its whole group.
    fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = match self.group {
                true => killpg(Pid::from_raw(pid), signal),
                false => kill(Pid::from_raw(pid), signal),
            };
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited already.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                thread::sleep(POLL);
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
        }
        // Whatever is left of the group once its leader is gone (the group id stays the
        // leader's pid while any member lives, and no other process can take it).
        if self.group {
            self.signal(Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Clock ticks per second of `/proc/PID/stat` times: `USER_HZ`, 100 on every Linux
/// architecture we run on (the kernel ABI keeps it fixed whatever the kernel's own HZ).
const USER_HZ: f64 = 100.0;

/// CPU time (user + system, all threads) process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(parse_stat(&stat)?.cpu_seconds)
}

/// CPU time of every live process of process group `pgid` (a server and the workers it forked),
/// in seconds.
pub fn group_cpu_seconds(pgid: u32) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process may exit between the listing and the read: it is simply not counted.
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let stat = parse_stat(&text)?;
        if stat.pgrp == pgid {
            total += stat.cpu_seconds;
        }
    }
    Ok(total)
}

/// What the benchmark reads from `/proc/PID/stat`.
struct Stat {
    pgrp: u32,
    cpu_seconds: f64,
}

fn parse_stat(stat: &str) -> anyhow::Result<Stat> {
    // The command name (field 2) may hold spaces; the fields after it start at its `)`.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |index: usize| fields.get(index).context("short /proc/PID/stat");
    // pgrp is field 5 of the whole line, the 3rd after the `)`; utime and stime are fields 14
    // and 15, the 12th and 13th after it.
    let ticks = |index: usize| -> anyhow::Result<f64> { Ok(field(index)?.parse::<f64>()?) };
    Ok(Stat {
        pgrp: field(2)?.parse()?,
        cpu_seconds: (ticks(11)? + ticks(12)?) / USER_HZ,
    })
}

/// The `Threads:` count of `/proc/PID/status`.
pub fn thread_count(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .context("Threads missing in /proc/PID/status")?;
    Ok(line.trim().parse()?)
}

/// Samples a process's thread count every [`THREAD_SAMPLE_INTERVAL`] on a thread of its own
/// until [`ThreadSampler::stop`], keeping the highest: thread pools grow and shrink with the
/// load, so a single reading after a run would miss the peak.
pub struct ThreadSampler {
    stop: Arc<AtomicBool>,
    sampler: Option<thread::JoinHandle<u64>>,
}

impl ThreadSampler {
    pub fn start(pid: u32) -> ThreadSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut max = 0;
                // Once more after the stop request, so a short run still has its sample.
                loop {
                    let stopping = stop.load(Ordering::Relaxed);
                    if let Ok(threads) = thread_count(pid) {
                        max = max.max(threads);
                    }
                    if stopping {
                        return max;
                    }
                    thread::sleep(THREAD_SAMPLE_INTERVAL);
                }
            })
        };
        ThreadSampler {
            stop,
            sampler: Some(sampler),
        }
    }

    /// Stops sampling; the most threads seen (0 when the process could not be read).
    pub fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler
            .take()
            .and_then(|s| s.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ThreadSampler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `addr` accepts TCP connections.
fn wait_for_port(addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        child.ensure_running()?;
        ensure!(
            Instant::now() < deadline,
            "{} does not listen on {addr}",
            child.name
        );
        thread::sleep(POLL);
    }
}

/// `smtp-sink`: accepts every message and throws it away.
pub struct SmtpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    _child: Child,
}

impl SmtpSink {
    pub fn start() -> anyhow::Result<SmtpSink> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut child = Child::spawn(
            "smtp-sink",
            Command::new("smtp-sink")
                .args(["-4", "-u", SINK_USER, "-m"])
                .arg(SINK_MAX_CONNECTIONS.to_string())
                .arg(addr.to_string())
                .arg(SINK_BACKLOG.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        wait_for_port(addr, &mut child)?;
        Ok(SmtpSink {
            addr,
            _child: child,
        })
    }
}

/// A private Postfix instance: its own config directory, queue and log under one scratch
/// directory, `smtpd` on a loopback port, relaying everything to `relay_to`.
pub struct Postfix {
    /// Where its smtpd listens.
    pub addr: SocketAddr,
    /// `config_directory`.
    etc: PathBuf,
    /// `queue_directory`.
    queue: PathBuf,
    /// `maillog_file`.
    log: PathBuf,
    /// How far the log has been read by [`Postfix::delivery_counts`].
    log_offset: u64,
}

impl Postfix {
    /// Writes the instance's configuration under `dir` (emptied first) and starts it.
    pub fn start(dir: &Path, relay_to: SocketAddr) -> anyhow::Result<Postfix> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clear {}", dir.display()))?;
        }
        let etc = dir.join("etc");
        let queue = dir.join("queue");
        let data = dir.join("data");
        let log = dir.join("postfix.log");
        for d in [&etc, &queue, &data] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        std::fs::write(etc.join("main.cf"), main_cf(&queue, &data, &log, relay_to))?;
        std::fs::write(etc.join("master.cf"), master_cf(addr))?;
        // The data directory belongs to the mail owner, as `postfix post-install` would set it.
        let status = Command::new("chown")
            .args(["-R", "postfix", &data.to_string_lossy()])
            .status()?;
        ensure!(status.success(), "chown {} failed", data.display());
        let postfix = Postfix {
            addr,
            etc,
            queue,
            log,
            log_offset: 0,
        };
        postfix.command("start")?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "postfix does not listen on {addr}; see {}",
                postfix.log.display()
            );
            thread::sleep(POLL);
        }
        Ok(postfix)
    }

    /// Runs `postfix -c ETC <verb>`.
    fn command(&self, verb: &str) -> anyhow::Result<()> {
        let output = Command::new("postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg(verb)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("postfix {verb}"))?;
        ensure!(
            output.status.success(),
            "postfix -c {} {verb} failed: {}{}",
            self.etc.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Messages still in the queue (every queue subdirectory, hashed levels included).
    pub fn queued(&self) -> anyhow::Result<usize> {
        let mut count = 0;
        for sub in ["maildrop", "incoming", "active", "deferred", "hold"] {
            count += count_files(&self.queue.join(sub))?;
        }
        Ok(count)
    }

    /// Waits until the queue is empty, i.e. every accepted message was relayed.
    pub fn wait_until_empty(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.queued()? == 0 {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "postfix queue not empty after {timeout:?}"
            );
            thread::sleep(POLL);
        }
    }

    /// `(sent, not sent)`: deliveries logged since the last call.
    pub fn delivery_counts(&mut self) -> anyhow::Result<(usize, usize)> {
        let Ok(mut file) = std::fs::File::open(&self.log) else {
            return Ok((0, 0));
        };
        file.seek(SeekFrom::Start(self.log_offset))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        // Only whole lines count; a line being written is read next time.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        self.log_offset += complete as u64;
        let lines = text[..complete].lines();
        let (mut sent, mut other) = (0, 0);
        for line in lines {
            if line.contains(" status=sent ") {
                sent += 1;
            } else if line.contains(" status=") {
                other += 1;
            }
        }
        Ok((sent, other))
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.command("stop").is_err() {
            let _ = self.command("abort");
        }
    }
}

/// `main.cf` of the private instance: relay everything from loopback to the sink, no local
/// delivery, no DNS, no TLS, limits raised past the benchmark's session counts; everything
/// else (queue on disk with fsync, in_flow_delay, qmgr scheduling) is Postfix's default.
fn main_cf(queue: &Path, data: &Path, log: &Path, relay_to: SocketAddr) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "compatibility_level = 3.6\n\
         queue_directory = {queue}\n\
         data_directory = {data}\n\
         maillog_file = {log}\n\
         mail_owner = postfix\n\
         setgid_group = postdrop\n\
         myhostname = postfix.bench.test\n\
         mydestination =\n\
         mynetworks = 127.0.0.0/8\n\
         inet_interfaces = 127.0.0.1\n\
         inet_protocols = ipv4\n\
         relayhost = [{relay_ip}]:{relay_port}\n\
         smtpd_relay_restrictions = permit_mynetworks, reject\n\
         alias_maps =\n\
         alias_database =\n\
         local_recipient_maps =\n\
         smtpd_tls_security_level = none\n\
         smtp_tls_security_level = none\n\
         smtp_dns_support_level = disabled\n\
         biff = no\n\
         default_process_limit = 300\n\
         smtpd_client_connection_count_limit = 0\n\
         smtpd_client_connection_rate_limit = 0\n\
         smtpd_client_message_rate_limit = 0\n",
        queue = queue.display(),
        data = data.display(),
        log = log.display(),
        relay_ip = relay_to.ip(),
        relay_port = relay_to.port(),
    );
    out
}

/// `master.cf`: the services an SMTP relay needs, none chrooted (the queue directory is not
/// set up as a chroot jail), plus `postlog` for `maillog_file`.
fn master_cf(smtpd: SocketAddr) -> String {
    format!(
        "{smtpd} inet n - n - - smtpd\n\
         pickup unix n - n 60 1 pickup\n\
         cleanup unix n - n - 0 cleanup\n\
         qmgr unix n - n 300 1 qmgr\n\
         rewrite unix - - n - - trivial-rewrite\n\
         bounce unix - - n - 0 bounce\n\
         defer unix - - n - 0 bounce\n\
         trace unix - - n - 0 bounce\n\
         verify unix - - n - 1 verify\n\
         flush unix n - n 1000? 0 flush\n\
         proxymap unix - - n - - proxymap\n\
         smtp unix - - n - - smtp\n\
         relay unix - - n - - smtp\n\
         showq unix n - n - - showq\n\
         error unix - - n - - error\n\
         retry unix - - n - - error\n\
         discard unix - - n - - discard\n\
         anvil unix - - n - 1 anvil\n\
         scache unix - - n - 1 scache\n\
         postlog unix-dgram n - n - 1 postlogd\n"
    )
}

/// Regular files below `dir` (0 when it does not exist).
fn count_files(dir: &Path) -> anyhow::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    let mut count = 0;
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            count += count_files(&entry.path())?;
        } else if kind.is_file() {
            count += 1;
        }
    }
    Ok(count)
}

/// How Haraka runs, and what its queue plugin posts to.
pub struct HarakaConfig<'a> {
    /// `smtp.ini` `nodes`: `cpus` forks one worker per core (Haraka's performance tuning
    /// advice), `0` runs one process without the cluster.
    pub nodes: &'a str,
    /// The webhook sink's URL.
    pub url: &'a str,
    /// `whsec_...`: the plugin signs like mxnode (Standard Webhooks).
    pub secret: &'a str,
    /// The CA that issued the sink's certificate.
    pub ca_pem: &'a Path,
}

/// Haraka's log level: `warn` logs nothing for a message that goes well (`notice` logs four
/// lines per message, `info` every SMTP command), the setting most favourable to Haraka.
const HARAKA_LOG_LEVEL: &str = "warn";
/// The plugins of the bench configuration, in order (`bench/haraka/plugins/`).
const HARAKA_PLUGINS: [&str; 2] = ["loopback", "queue_webhook"];

/// A private Haraka (pinned in `bench/haraka/package.json`, installed by `./build.sh bench`)
/// with its own configuration directory: SMTP on a loopback port, mail kept in memory
/// (`spool_after = -1`), every recipient accepted, and the queue plugin `queue_webhook` that
/// posts each message to the webhook sink over HTTPS keep-alive and answers the sender after
/// the sink's 2xx.
pub struct Haraka {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The `haraka` master; its cluster workers are in its process group.
    child: Child,
    log_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Haraka {
    /// Writes the configuration under `dir` (emptied first) and starts Haraka from `install`
    /// (the directory with `package.json`, `node_modules/` and `plugins/`).
    pub fn start(install: &Path, dir: &Path, config: &HarakaConfig<'_>) -> anyhow::Result<Haraka> {
        ensure!(
            config.nodes == "cpus" || config.nodes.parse::<u32>().is_ok(),
            "Haraka's nodes must be `cpus` or a number, not {:?}",
            config.nodes
        );
        let bin = install.join("node_modules/Haraka/bin/haraka");
        ensure!(
            bin.exists(),
            "{} is missing: ./build.sh bench installs Haraka (npm ci in {})",
            bin.display(),
            install.display()
        );
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clear {}", dir.display()))?;
        }
        let etc = dir.join("config");
        let plugins = dir.join("plugins");
        for d in [&etc, &plugins] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        for plugin in HARAKA_PLUGINS {
            let name = format!("{plugin}.js");
            std::fs::copy(install.join("plugins").join(&name), plugins.join(&name))
                .with_context(|| format!("copy plugin {name}"))?;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        // Haraka reads a configuration file from this directory instead of its own default, not
        // merged with it: connection.ini starts from the shipped one so every other default
        // stays Haraka's.
        let shipped = install.join("node_modules/Haraka/config/connection.ini");
        let shipped = std::fs::read_to_string(&shipped)
            .with_context(|| format!("read {}", shipped.display()))?;
        let files = [
            (
                "smtp.ini",
                format!("listen={addr}\nnodes={}\n", config.nodes),
            ),
            ("connection.ini", haraka_connection_ini(&shipped, dir)?),
            ("plugins", HARAKA_PLUGINS.map(|p| format!("{p}\n")).concat()),
            ("me", "haraka.bench.test\n".to_string()),
            (
                "log.ini",
                format!("[main]\nlevel={HARAKA_LOG_LEVEL}\ntimestamps=false\nformat=default\n"),
            ),
            ("queue_webhook.ini", haraka_queue_webhook_ini(config)),
        ];
        for (name, text) in files {
            std::fs::write(etc.join(name), text).with_context(|| format!("write {name}"))?;
        }
        let mut child = Child::spawn_group(
            "haraka",
            Command::new("node")
                .arg(&bin)
                .arg("-c")
                .arg(dir)
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )?;
        let log_tail = Arc::new(Mutex::new(VecDeque::new()));
        for output in [
            child
                .child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log_tail = log_tail.clone();
            thread::spawn(move || follow_tail(output, &log_tail));
        }
        if let Err(e) = wait_for_port(addr, &mut child) {
            child.stop();
            bail!("{e}; haraka's log:\n{}", tail(&log_tail));
        }
        Ok(Haraka {
            addr,
            child,
            log_tail,
        })
    }

    /// The master's process id, which is also the process group of its workers.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// CPU seconds of the master and its workers so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        group_cpu_seconds(self.pid())
    }

    /// Fails (with the log tail) when Haraka has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.child
            .ensure_running()
            .with_context(|| format!("haraka's log:\n{}", tail(&self.log_tail)))
    }
}

/// Haraka's shipped `connection.ini` with `spool_after = -1` (never spool a message to disk:
/// mail stays in memory, as in mxnode) and the spool directory in the scratch directory in
/// case anything spooled all the same.
fn haraka_connection_ini(shipped: &str, dir: &Path) -> anyhow::Result<String> {
    let mut out = String::with_capacity(shipped.len() + 128);
    let mut found = false;
    for line in shipped.lines() {
        out.push_str(line);
        out.push('\n');
        if !found && line.trim() == "[main]" {
            found = true;
            let _ = writeln!(out, "spool_after=-1\nspool_dir={}", dir.display());
        }
    }
    ensure!(found, "Haraka's connection.ini has no [main] section");
    Ok(out)
}

fn haraka_queue_webhook_ini(config: &HarakaConfig<'_>) -> String {
    format!(
        "[main]\nurl={}\nca={}\nsecret={}\n",
        config.url,
        config.ca_pem.display(),
        config.secret
    )
}

/// The HTTPS webhook sink (`webhook-sink`), answering after `delay_ms`.
pub struct WebhookSink {
    /// The URL a route posts to.
    pub url: String,
    /// Where `GET /stats` is.
    stats_url: String,
    /// Trusts the sink's test CA.
    agent: ureq::Agent,
    child: Child,
    /// Holds the stdout pipe open so the sink never writes into a closed pipe.
    _stdout: std::process::ChildStdout,
}

impl WebhookSink {
    pub fn start(
        bin: &Path,
        ca: &mxnode_tests::TestCa,
        delay_ms: u64,
        threads: usize,
    ) -> anyhow::Result<WebhookSink> {
        let mut child = Child::spawn(
            "webhook-sink",
            Command::new(bin)
                .arg("--cert")
                .arg(&ca.cert_pem)
                .arg("--key")
                .arg(&ca.key_pem)
                .arg("--delay-ms")
                .arg(delay_ms.to_string())
                .arg("--threads")
                .arg(threads.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )?;
        let stdout = child.child.stdout.take().context("sink stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            child.ensure_running()?;
            bail!("webhook-sink said {line:?} instead of its address");
        };
        let base = base.to_string();
        Ok(WebhookSink {
            url: format!("{base}/hook"),
            stats_url: format!("{base}/stats"),
            agent: ca.https_agent(),
            child,
            _stdout: reader.into_inner(),
        })
    }

    /// The sink's process id, for its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// POSTs answered since the sink started.
    pub fn requests(&mut self) -> anyhow::Result<u64> {
        Ok(self.stats()?.requests)
    }

    /// The sink's counters since it started.
    pub fn stats(&mut self) -> anyhow::Result<SinkStats> {
        self.child.ensure_running()?;
        let mut response = self
            .agent
            .get(&self.stats_url)
            .call()
            .context("GET /stats from the webhook sink")?;
        let text = response.body_mut().read_to_string()?;
        let stats: serde_json::Value = serde_json::from_str(&text)?;
        let counter = |name: &str| {
            stats[name]
                .as_u64()
                .with_context(|| format!("webhook sink stats without `{name}`"))
        };
        Ok(SinkStats {
            requests: counter("requests")?,
            connections: counter("connections")?,
        })
    }
}

/// The webhook sink's counters.
#[derive(Debug, Clone, Copy)]
pub struct SinkStats {
    /// POSTs answered.
    pub requests: u64,
    /// TLS connections accepted: with keep-alive, about one per concurrent delivery, not one
    /// per message.
    pub connections: u64,
}

/// The mxnode daemon under test (`mxnode serve`), with its log kept in memory (the tail only).
pub struct Mxnode {
    /// Its SMTP listener.
    pub addr: SocketAddr,
    /// `[node] data_dir`: where the metadata store lives when it is on.
    pub data_dir: PathBuf,
    child: Child,
    log_tail: Arc<Mutex<VecDeque<String>>>,
}

/// What the bench config needs to know about the route.
pub struct RouteTo<'a> {
    pub webhook: &'a str,
    pub secret: &'a str,
    pub ca_pem: &'a Path,
    /// Recipients of this domain go to the webhook: `*@DOMAIN`.
    pub domain: &'a str,
    /// `auth.resolvers`: always a server on loopback (never the system's resolver).
    pub resolver: SocketAddr,
}

impl Mxnode {
    /// Writes a config into `dir` (emptied first) and starts the daemon on a free port, under
    /// `wrapper` when given (e.g. `valgrind --tool=callgrind` for a profile).
    pub fn start(
        bin: &Path,
        wrapper: &[String],
        dir: &Path,
        route: &RouteTo<'_>,
    ) -> anyhow::Result<Mxnode> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clear {}", dir.display()))?;
        }
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let config = dir.join("mxnode.toml");
        std::fs::write(&config, mxnode_toml(&data_dir, route))?;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(bin);
                command
            }
            None => Command::new(bin),
        };
        let mut child = Child::spawn(
            "mxnode",
            command
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                // Log to our pipe, not to the journal of the machine running the benchmark.
                .env_remove("JOURNAL_STREAM")
                .env_remove("NOTIFY_SOCKET"),
        )?;
        let stderr = child.child.stderr.take().context("mxnode stderr")?;
        let log_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (found, listening) = mpsc::channel();
        {
            let log_tail = log_tail.clone();
            thread::spawn(move || follow_log(stderr, &log_tail, &found));
        }
        let addr = match listening.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                child.stop();
                bail!(
                    "mxnode did not start listening; its log:\n{}",
                    tail(&log_tail)
                );
            }
        };
        Ok(Mxnode {
            addr,
            data_dir,
            child,
            log_tail,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `(VmRSS, VmHWM)` in bytes: resident memory now and at its peak since start.
    pub fn rss(&mut self) -> anyhow::Result<(u64, u64)> {
        self.child.ensure_running()?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("{name} missing in /proc/PID/status"))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?;
            Ok(kib * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Whether the metadata store wrote a database under `data_dir` (a RocksDB `CURRENT` file
    /// somewhere below it).
    pub fn store_is_on(&self) -> bool {
        fn has_current(dir: &Path) -> bool {
            std::fs::read_dir(dir).is_ok_and(|entries| {
                entries.flatten().any(|e| {
                    let path = e.path();
                    e.file_name() == "CURRENT" || (path.is_dir() && has_current(&path))
                })
            })
        }
        has_current(&self.data_dir)
    }

    /// The last lines of the daemon's log (ids and statuses only, never content).
    pub fn log_tail(&self) -> String {
        tail(&self.log_tail)
    }

    /// Fails (with the log tail) when the daemon has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.child
            .ensure_running()
            .with_context(|| format!("its log:\n{}", tail(&self.log_tail)))
    }
}

/// A 32-byte master key in hex: the store is on as soon as the daemon has one. Fixed, since the
/// benchmark's store is scratch data.
const BENCH_MASTER_KEY: &str = "6d786e6f64652062656e63686d61726b206d6173746572206b65792021212121";
/// The highest session counts the benchmark uses, with room.
const BENCH_MAX_SESSIONS: usize = 1000;

fn mxnode_toml(data_dir: &Path, route: &RouteTo<'_>) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    format!(
        "[node]\n\
         hostname = \"mx.bench.test\"\n\
         data_dir = {data_dir}\n\
         master_key = \"{BENCH_MASTER_KEY}\"\n\
         \n\
         [smtp]\n\
         listen = [\"127.0.0.1:0\"]\n\
         max_sessions = {BENCH_MAX_SESSIONS}\n\
         max_sessions_per_ip = {BENCH_MAX_SESSIONS}\n\
         \n\
         [auth]\n\
         resolvers = [{resolver}]\n\
         \n\
         [[route]]\n\
         match = {pattern}\n\
         webhook = {webhook}\n\
         webhook_secret = {secret}\n\
         webhook_ca = {ca}\n",
        data_dir = quote(&data_dir.to_string_lossy()),
        // Sender authentication asks a resolver on loopback: the harness's, which refuses every
        // query at once (authentication answers `temperror`/`none` at once), or `mxnode-auth`'s
        // dnsmasq with the sender's records. The benchmark never sends DNS off the machine.
        resolver = quote(&route.resolver.to_string()),
        pattern = quote(&format!("*@{}", route.domain)),
        webhook = quote(route.webhook),
        secret = quote(route.secret),
        ca = quote(&route.ca_pem.to_string_lossy()),
    )
}

/// Reads the daemon's stderr to the end: reports the SMTP address once, keeps a short tail.
fn follow_log(
    stderr: impl std::io::Read,
    tail: &Mutex<VecDeque<String>>,
    found: &mpsc::Sender<SocketAddr>,
) {
    const MARKER: &str = "listening on smtp://";
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if let Some(at) = text.find(MARKER) {
            let rest = &text[at + MARKER.len()..];
            let addr = rest.split_whitespace().next().unwrap_or_default();
            if let Ok(addr) = addr.parse() {
                let _ = found.send(addr);
            }
        }
        push_tail(tail, text);
    }
}

/// Reads a process's output to the end, keeping the last lines.
fn follow_tail(output: impl std::io::Read, tail: &Mutex<VecDeque<String>>) {
    let mut reader = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => push_tail(tail, String::from_utf8_lossy(&line).trim_end().to_string()),
        }
    }
}

fn push_tail(tail: &Mutex<VecDeque<String>>, line: String) {
    let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
    if tail.len() == LOG_TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line);
}

fn tail(log: &Mutex<VecDeque<String>>) -> String {
    let tail = log.lock().unwrap_or_else(|p| p.into_inner());
    tail.iter().map(|l| format!("  {l}\n")).collect()
}
