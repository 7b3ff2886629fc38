//! The daemon under test: rendering its config file (DESIGN §5), starting the
//! real `mxnode` binary, capturing its log, and stopping it.
//!
//! It must never write the daemon's output to a file (the log stays in
//! memory), never leave a daemon running after its test, and never wait
//! without a deadline.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{
    POLL_INTERVAL, collect_into, kill_and_reap, output_with_timeout, signal, snapshot, wait_timeout,
};
use crate::receiver::Receiver;
use crate::tls::TestCa;

/// How long the daemon may take to log its SMTP listening address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the daemon may take to exit after SIGTERM (it finishes open
/// transactions first, which a test may have made slow on purpose).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `check-config` may run: it only reads and validates a file.
const CHECK_CONFIG_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the harness waits for the log collectors to see EOF once the
/// daemon has exited, so the last lines are in [`Node::log`].
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The log line prefix that announces the SMTP listener, e.g.
/// `listening on smtp://127.0.0.1:40123`.
const LISTENING_MARKER: &str = "listening on smtp://";

/// The `mxnode` binary to test: `$MXNODE_BIN` when set, else `mxnode` in the
/// cargo profile directory this test binary was built into (test binaries
/// live in `<target>/<profile>/deps/`). Panics telling how to build it.
pub fn mxnode_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("MXNODE_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "MXNODE_BIN={} does not exist",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in <target>/<profile>/deps/");
    let path = profile_dir.join("mxnode");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p mxnode` first (with the same CARGO_TARGET_DIR), \
         or set MXNODE_BIN",
        path.display()
    );
    path
}

/// A TOML basic string for `value`. JSON string escapes are a subset of
/// TOML's, so serde_json gives correct quoting for paths and secrets.
fn toml_string(value: &str) -> String {
    serde_json::to_string(value).expect("a string always serialises")
}

/// The daemon's configuration, rendered to the TOML of DESIGN §5. Optional
/// keys appear only when set, so the daemon's defaults are what tests see
/// unless a test chooses otherwise.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `[node] hostname`: the SMTP greeting and EHLO name.
    hostname: String,
    /// `[smtp] max_message_size`, e.g. `"10MiB"`.
    max_message_size: Option<String>,
    /// `[smtp] tls_cert` and `tls_key`: enables STARTTLS.
    tls: Option<(PathBuf, PathBuf)>,
    /// `[smtp] max_sessions`.
    max_sessions: Option<u64>,
    /// `[smtp] max_sessions_per_ip`.
    max_sessions_per_ip: Option<u64>,
    /// `[smtp] max_recipients`.
    max_recipients: Option<u64>,
    /// `[smtp] max_in_flight`, e.g. `"256MiB"`.
    max_in_flight: Option<String>,
    /// `[smtp] command_timeout`, e.g. `"5m"`.
    command_timeout: Option<String>,
    /// `[smtp] data_timeout`, e.g. `"3m"`.
    data_timeout: Option<String>,
    /// The `[[route]]` tables, in order.
    routes: Vec<RouteConfig>,
    /// Verbatim TOML appended at the end (each piece must start with a table
    /// header), for keys this builder does not know yet.
    extra: Vec<String>,
    /// Environment variables for the daemon process (e.g. for `env:NAME` secrets).
    env: Vec<(String, String)>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig::new()
    }
}

impl NodeConfig {
    /// Hostname `mx.test`, SMTP on `127.0.0.1:0`, no routes, daemon defaults.
    pub fn new() -> NodeConfig {
        NodeConfig {
            hostname: "mx.test".to_string(),
            max_message_size: None,
            tls: None,
            max_sessions: None,
            max_sessions_per_ip: None,
            max_recipients: None,
            max_in_flight: None,
            command_timeout: None,
            data_timeout: None,
            routes: Vec::new(),
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Sets `[node] hostname`.
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = hostname.to_string();
        self
    }

    /// Sets `[smtp] max_message_size` (e.g. `"10MiB"`).
    pub fn max_message_size(mut self, size: &str) -> Self {
        self.max_message_size = Some(size.to_string());
        self
    }

    /// Enables STARTTLS with `ca`'s `localhost` certificate.
    pub fn tls(self, ca: &TestCa) -> Self {
        self.tls_files(&ca.cert_pem, &ca.key_pem)
    }

    /// Enables STARTTLS with these PEM files (e.g. from [`TestCa::issue`]).
    pub fn tls_files(mut self, cert_pem: &Path, key_pem: &Path) -> Self {
        self.tls = Some((cert_pem.to_path_buf(), key_pem.to_path_buf()));
        self
    }

    /// Sets `[smtp] max_sessions`.
    pub fn max_sessions(mut self, sessions: u64) -> Self {
        self.max_sessions = Some(sessions);
        self
    }

    /// Sets `[smtp] max_sessions_per_ip`.
    pub fn max_sessions_per_ip(mut self, sessions: u64) -> Self {
        self.max_sessions_per_ip = Some(sessions);
        self
    }

    /// Sets `[smtp] max_recipients`.
    pub fn max_recipients(mut self, recipients: u64) -> Self {
        self.max_recipients = Some(recipients);
        self
    }

    /// Sets `[smtp] max_in_flight` (e.g. `"256MiB"`).
    pub fn max_in_flight(mut self, size: &str) -> Self {
        self.max_in_flight = Some(size.to_string());
        self
    }

    /// Sets `[smtp] command_timeout` (e.g. `"5m"`).
    pub fn command_timeout(mut self, duration: &str) -> Self {
        self.command_timeout = Some(duration.to_string());
        self
    }

    /// Sets `[smtp] data_timeout` (e.g. `"3m"`).
    pub fn data_timeout(mut self, duration: &str) -> Self {
        self.data_timeout = Some(duration.to_string());
        self
    }

    /// Adds a `[[route]]`.
    pub fn route(mut self, route: RouteConfig) -> Self {
        self.routes.push(route);
        self
    }

    /// Appends verbatim TOML that starts with a table header (e.g.
    /// `"[retention]\nmetadata = \"1h\"\n"`), for keys this builder lacks.
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_string());
        self
    }

    /// Sets an environment variable for the daemon process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// The config file text with `data_dir` as `[node] data_dir`.
    pub fn render(&self, data_dir: &Path) -> String {
        let mut out = String::new();
        let path = |p: &Path| toml_string(&p.to_string_lossy());
        // Writing to a String cannot fail; the results are ignored on purpose.
        let _ = writeln!(out, "[node]");
        let _ = writeln!(out, "hostname = {}", toml_string(&self.hostname));
        let _ = writeln!(out, "data_dir = {}", path(data_dir));
        let _ = writeln!(out);
        let _ = writeln!(out, "[smtp]");
        let _ = writeln!(out, "listen = [\"127.0.0.1:0\"]");
        let strings = [
            ("max_message_size", &self.max_message_size),
            ("max_in_flight", &self.max_in_flight),
            ("command_timeout", &self.command_timeout),
            ("data_timeout", &self.data_timeout),
        ];
        for (key, value) in strings {
            if let Some(value) = value {
                let _ = writeln!(out, "{key} = {}", toml_string(value));
            }
        }
        if let Some((cert, key)) = &self.tls {
            let _ = writeln!(out, "tls_cert = {}", path(cert));
            let _ = writeln!(out, "tls_key = {}", path(key));
        }
        let numbers = [
            ("max_sessions", self.max_sessions),
            ("max_sessions_per_ip", self.max_sessions_per_ip),
            ("max_recipients", self.max_recipients),
        ];
        for (key, value) in numbers {
            if let Some(value) = value {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        for route in &self.routes {
            let _ = writeln!(out);
            route.render_into(&mut out);
        }
        for extra in &self.extra {
            let _ = writeln!(out);
            out.push_str(extra);
            if !extra.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

/// One `[[route]]` table: which recipients it matches and where their mail goes.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// `match`: an exact address or `*@domain`.
    pattern: String,
    /// `webhook`: the HTTPS URL.
    webhook: String,
    /// `webhook_secret`: `whsec_…`.
    webhook_secret: String,
    /// `webhook_ca`: an extra trust anchor (the test CA).
    webhook_ca: Option<PathBuf>,
    /// `attachments`: `"inline"` by default, since tests run no S3 store.
    attachments: String,
    /// `webhook_budget`, e.g. `"30s"`.
    webhook_budget: Option<String>,
}

impl RouteConfig {
    /// A route for `pattern` to `webhook` signed with `secret`, attachments inline.
    pub fn new(pattern: &str, webhook: &str, secret: &str) -> RouteConfig {
        RouteConfig {
            pattern: pattern.to_string(),
            webhook: webhook.to_string(),
            webhook_secret: secret.to_string(),
            webhook_ca: None,
            attachments: "inline".to_string(),
            webhook_budget: None,
        }
    }

    /// A route for `pattern` to `receiver`'s `path` (e.g. `/ok`), with the
    /// receiver's secret and CA: the common case in end-to-end tests.
    pub fn to_receiver(pattern: &str, receiver: &Receiver, path: &str) -> RouteConfig {
        RouteConfig::new(pattern, &receiver.url(path), receiver.secret()).ca(receiver.ca_pem())
    }

    /// Sets `webhook_ca`.
    pub fn ca(mut self, ca_pem: &Path) -> Self {
        self.webhook_ca = Some(ca_pem.to_path_buf());
        self
    }

    /// Sets `attachments` (`"inline"` or `"s3"`).
    pub fn attachments(mut self, mode: &str) -> Self {
        self.attachments = mode.to_string();
        self
    }

    /// Sets `webhook_budget` (e.g. `"5s"`).
    pub fn budget(mut self, duration: &str) -> Self {
        self.webhook_budget = Some(duration.to_string());
        self
    }

    /// Appends this route as a `[[route]]` table.
    fn render_into(&self, out: &mut String) {
        let _ = writeln!(out, "[[route]]");
        let _ = writeln!(out, "match = {}", toml_string(&self.pattern));
        let _ = writeln!(out, "webhook = {}", toml_string(&self.webhook));
        let _ = writeln!(
            out,
            "webhook_secret = {}",
            toml_string(&self.webhook_secret)
        );
        if let Some(ca) = &self.webhook_ca {
            let _ = writeln!(out, "webhook_ca = {}", toml_string(&ca.to_string_lossy()));
        }
        let _ = writeln!(out, "attachments = {}", toml_string(&self.attachments));
        if let Some(budget) = &self.webhook_budget {
            let _ = writeln!(out, "webhook_budget = {}", toml_string(budget));
        }
    }
}

/// A running `mxnode serve` with its own temp directory (config file,
/// `data/`, and `tmp/` as its TMPDIR) and its output captured in memory.
/// Killed on drop; its log is printed to stderr when the test is failing.
pub struct Node {
    /// The daemon process.
    child: Child,
    /// Everything the daemon wrote to stdout and stderr, interleaved by line.
    log: Arc<Mutex<String>>,
    /// The threads filling `log`; joined (bounded) after exit.
    collectors: Vec<JoinHandle<()>>,
    /// The SMTP address parsed from the daemon's listening log line.
    smtp_addr: SocketAddr,
    /// `[node] data_dir`.
    data_dir: PathBuf,
    /// The config file the daemon was started with.
    config_path: PathBuf,
    /// Root of everything the daemon may write; scanned for content markers.
    temp: TempDir,
}

impl Node {
    /// Starts `mxnode serve` with `config` and waits until it listens for
    /// SMTP. Panics with the captured log when it exits or stays silent.
    pub fn start(config: &NodeConfig) -> Node {
        let temp = tempfile::Builder::new()
            .prefix("mxnode-test-node-")
            .tempdir()
            .expect("create the node's temp dir");
        let data_dir = temp.path().join("data");
        let tmp_dir = temp.path().join("tmp");
        fs::create_dir_all(&data_dir).expect("create data_dir");
        fs::create_dir_all(&tmp_dir).expect("create the node's TMPDIR");
        let config_path = temp.path().join("mxnode.toml");
        fs::write(&config_path, config.render(&data_dir)).expect("write the config file");

        let mut command = Command::new(mxnode_bin());
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Anything the daemon puts in a temp file lands where the
            // content-at-rest scan looks.
            .env("TMPDIR", &tmp_dir)
            // Logs must reach our pipe, not the journal of the machine
            // running the tests.
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET");
        for (name, value) in &config.env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", mxnode_bin().display()));

        let log = Arc::new(Mutex::new(String::new()));
        let mut collectors = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            collectors.push(collect_into(stdout, Arc::clone(&log)));
        }
        if let Some(stderr) = child.stderr.take() {
            collectors.push(collect_into(stderr, Arc::clone(&log)));
        }

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let smtp_addr = loop {
            let text = snapshot(&log);
            if let Some(addr) = parse_listening(&text) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                drain(&mut collectors);
                panic!(
                    "mxnode exited during startup ({status}); its log:\n{}",
                    snapshot(&log)
                );
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                drain(&mut collectors);
                panic!(
                    "mxnode did not log `{LISTENING_MARKER}<addr>` within {STARTUP_TIMEOUT:?}; \
                     its log:\n{}",
                    snapshot(&log)
                );
            }
            thread::sleep(POLL_INTERVAL);
        };

        Node {
            child,
            log,
            collectors,
            smtp_addr,
            data_dir,
            config_path,
            temp,
        }
    }

    /// Runs `mxnode check-config --config <file>` on `toml` and returns its
    /// exit code (-1 when killed by a signal) and its stdout+stderr.
    pub fn check_config(toml: &str) -> (i32, String) {
        let temp = tempfile::Builder::new()
            .prefix("mxnode-test-config-")
            .tempdir()
            .expect("create a temp dir for the config");
        let path = temp.path().join("mxnode.toml");
        fs::write(&path, toml).expect("write the config file");
        let output = output_with_timeout(
            Command::new(mxnode_bin())
                .arg("check-config")
                .arg("--config")
                .arg(&path)
                .env_remove("JOURNAL_STREAM"),
            "mxnode check-config",
            CHECK_CONFIG_TIMEOUT,
        );
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap_or(-1), text)
    }

    /// The address the daemon accepts SMTP on.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    /// Everything the daemon has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        snapshot(&self.log)
    }

    /// Waits until the log contains `needle`; false after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// `[node] data_dir` (RocksDB and node state).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The node's temp directory: config file, `data/`, and `tmp/` (its
    /// TMPDIR). Everything the daemon could write lies below it.
    pub fn temp_root(&self) -> &Path {
        self.temp.path()
    }

    /// The config file the daemon runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the daemon to exit, returning its status.
    /// Panics (after SIGKILL) with the log when it does not exit in time.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), Signal::SIGTERM);
        match wait_timeout(&mut self.child, SHUTDOWN_TIMEOUT) {
            Some(status) => {
                drain(&mut self.collectors);
                status
            }
            None => {
                kill_and_reap(&mut self.child);
                drain(&mut self.collectors);
                panic!(
                    "mxnode did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM; its log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Kills the daemon with SIGKILL (a crash) and returns its status.
    pub fn kill(&mut self) -> ExitStatus {
        kill_and_reap(&mut self.child);
        drain(&mut self.collectors);
        self.child
            .wait()
            .expect("a reaped child reports its status again")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if thread::panicking() {
            drain(&mut self.collectors);
            eprintln!(
                "---- mxnode log ----\n{}---- end of mxnode log ----",
                self.log()
            );
        }
    }
}

/// Joins the log collectors once they have seen EOF, waiting at most
/// [`LOG_DRAIN_TIMEOUT`] (a grandchild holding the pipe must not hang us).
fn drain(collectors: &mut Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + LOG_DRAIN_TIMEOUT;
    while collectors.iter().any(|c| !c.is_finished()) && Instant::now() < deadline {
        thread::sleep(POLL_INTERVAL);
    }
    for collector in std::mem::take(collectors) {
        if collector.is_finished() {
            let _ = collector.join();
        }
    }
}

/// The first `listening on smtp://<addr>` address in `log`.
fn parse_listening(log: &str) -> Option<SocketAddr> {
    log.match_indices(LISTENING_MARKER).find_map(|(at, _)| {
        let rest = &log[at + LISTENING_MARKER.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_listening(log: &str, expect: Option<&str>) {
        let expect = expect.map(|addr| addr.parse::<SocketAddr>().expect("valid expectation"));
        assert_eq!(parse_listening(log), expect, "log: {log:?}");
    }

    #[test]
    fn listening_address_is_parsed_from_log_lines() {
        check_listening(
            "INFO listening on smtp://127.0.0.1:2525\n",
            Some("127.0.0.1:2525"),
        );
        check_listening(
            "x\nlistening on smtp://127.0.0.1:40000, tls=off\n",
            Some("127.0.0.1:40000"),
        );
        check_listening("listening on smtp://[::1]:25\"", Some("[::1]:25"));
        check_listening("listening on smtp://127.0.0.1:0", Some("127.0.0.1:0"));
        check_listening("listening on smtp://", None);
        check_listening("starting\n", None);
    }

    #[test]
    fn config_renders_the_contract_keys() {
        let config = NodeConfig::new()
            .max_message_size("10MiB")
            .max_sessions(100)
            .command_timeout("5m")
            .route(
                RouteConfig::new("*@in.example.test", "https://localhost:1/ok", "whsec_AAAA")
                    .ca(Path::new("/tmp/ca.pem"))
                    .budget("30s"),
            );
        let text = config.render(Path::new("/tmp/x/data"));
        let expect = r#"[node]
hostname = "mx.test"
data_dir = "/tmp/x/data"

[smtp]
listen = ["127.0.0.1:0"]
max_message_size = "10MiB"
command_timeout = "5m"
max_sessions = 100

[[route]]
match = "*@in.example.test"
webhook = "https://localhost:1/ok"
webhook_secret = "whsec_AAAA"
webhook_ca = "/tmp/ca.pem"
attachments = "inline"
webhook_budget = "30s"
"#;
        assert_eq!(text, expect);
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
