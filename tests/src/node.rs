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

/// How long a config command may run: `check-config` only reads and validates
/// a file, but `--probe` and `s3-test` talk to S3 stores (each step of a probe
/// is bounded by the daemon at 30 s).
const CHECK_CONFIG_TIMEOUT: Duration = Duration::from_secs(150);

/// How long the harness waits for the log collectors to see EOF once the
/// daemon has exited, so the last lines are in [`Node::log`].
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The log line prefix that announces the SMTP listener, e.g.
/// `listening on smtp://127.0.0.1:40123`.
const LISTENING_MARKER: &str = "listening on smtp://";

/// The log line prefix that announces the REST API listener, e.g.
/// `listening on https://127.0.0.1:40124 (setup page, console and REST API)` (or `http://`).
const HTTP_LISTENING_MARKER: &str = "listening on http";

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
    /// `[smtp] max_header_line`, `max_header_field`, `max_header_section`, e.g. `"2KiB"`.
    header_bounds: [Option<String>; 3],
    /// `[smtp] max_addresses`.
    max_addresses: Option<u64>,
    /// `[smtp] command_timeout`, e.g. `"5m"`.
    command_timeout: Option<String>,
    /// `[smtp] data_timeout`, e.g. `"3m"`.
    data_timeout: Option<String>,
    /// `[smtp] max_in_flight_per_ip`, e.g. `"64MiB"`.
    max_in_flight_per_ip: Option<String>,
    /// `[smtp] data_total_timeout`, e.g. `"10m"`.
    data_total_timeout: Option<String>,
    /// `[http] allow_from`.
    allow_from: Option<Vec<String>>,
    /// The `[[route]]` tables, in order.
    routes: Vec<RouteConfig>,
    /// Verbatim TOML appended at the end (each piece must start with a table
    /// header), for keys this builder does not know yet.
    extra: Vec<String>,
    /// Environment variables for the daemon process (e.g. for `env:NAME` secrets).
    env: Vec<(String, String)>,
    /// A command the daemon is started under, e.g. `strace -f …` or `setpriv …`:
    /// its words come before the daemon's path on the command line.
    wrapper: Vec<String>,
    /// `[node] master_key` (64 hex digits): the metadata store's key.
    master_key: Option<String>,
    /// `[http]`: the REST API on `127.0.0.1:0`, with `tls_cert`/`tls_key` when
    /// the inner value is set.
    http: Option<Option<(PathBuf, PathBuf)>>,
    /// API keys created with `mxnode api-key create` before the daemon starts:
    /// `(name, scopes)`.
    api_keys: Vec<(String, Vec<String>)>,
    /// `[auth] resolvers` and `timeout`; by default the harness's refusing resolver, so no
    /// test node sends a DNS query off the machine.
    auth: Option<(Vec<SocketAddr>, String)>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig::new()
    }
}

impl NodeConfig {
    /// Hostname `mx.test`, SMTP on `127.0.0.1:0`, a random master key, no routes,
    /// daemon defaults.
    pub fn new() -> NodeConfig {
        NodeConfig {
            hostname: "mx.test".to_string(),
            max_message_size: None,
            tls: None,
            max_sessions: None,
            max_sessions_per_ip: None,
            max_recipients: None,
            max_in_flight: None,
            header_bounds: [None, None, None],
            max_addresses: None,
            command_timeout: None,
            data_timeout: None,
            max_in_flight_per_ip: None,
            data_total_timeout: None,
            allow_from: None,
            routes: Vec::new(),
            extra: Vec::new(),
            env: Vec::new(),
            wrapper: Vec::new(),
            // Every node has a metadata store, encrypted with this key (DESIGN §6).
            master_key: Some(random_hex(32)),
            http: None,
            api_keys: Vec::new(),
            auth: None,
        }
    }

    /// Sets `[auth] resolvers` and `timeout` (e.g. a [`crate::DnsServer`]'s address, `"1s"`).
    pub fn auth(mut self, resolvers: &[SocketAddr], timeout: &str) -> Self {
        self.auth = Some((resolvers.to_vec(), timeout.to_string()));
        self
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

    /// Sets `[smtp] max_header_line`, `max_header_field` and `max_header_section` (e.g.
    /// `"2KiB"`), issue 16.
    pub fn header_bounds(mut self, line: &str, field: &str, section: &str) -> Self {
        self.header_bounds = [line, field, section].map(|v| Some(v.to_string()));
        self
    }

    /// Sets `[smtp] max_addresses` (issue 16).
    pub fn max_addresses(mut self, addresses: u64) -> Self {
        self.max_addresses = Some(addresses);
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

    /// Sets `[smtp] max_in_flight_per_ip` (e.g. `"64MiB"`).
    pub fn max_in_flight_per_ip(mut self, size: &str) -> Self {
        self.max_in_flight_per_ip = Some(size.to_string());
        self
    }

    /// Sets `[smtp] data_total_timeout` (e.g. `"10m"`).
    pub fn data_total_timeout(mut self, duration: &str) -> Self {
        self.data_total_timeout = Some(duration.to_string());
        self
    }

    /// Sets `[http] allow_from` (networks, e.g. `["10.0.0.0/8"]`).
    pub fn allow_from(mut self, networks: &[&str]) -> Self {
        self.allow_from = Some(networks.iter().map(|n| n.to_string()).collect());
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

    /// Starts the daemon under `command` (e.g. `["strace", "-f", …]`): the
    /// daemon's path and arguments follow its words. [`Node::pid`] is then the
    /// wrapper's process id, which is the daemon's only for a wrapper that
    /// execs it (like `setpriv`).
    pub fn wrapper(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|word| word.to_string()).collect();
        self
    }

    /// Sets `[node] master_key` (32 bytes as 64 hex digits).
    pub fn master_key(mut self, hex: &str) -> Self {
        self.master_key = Some(hex.to_string());
        self
    }

    /// Serves the REST API over HTTPS on `127.0.0.1:0` with `ca`'s `localhost`
    /// / `127.0.0.1` certificate (see [`Node::api_url`]). Sets a fresh random
    /// master key unless one is set: the API reads the metadata store.
    pub fn http(mut self, ca: &TestCa) -> Self {
        self.http = Some(Some((ca.cert_pem.clone(), ca.key_pem.clone())));
        self.with_master_key()
    }

    /// Serves the REST API over plain HTTP on `127.0.0.1:0` (loopback only).
    pub fn http_plain(mut self) -> Self {
        self.http = Some(None);
        self.with_master_key()
    }

    fn with_master_key(mut self) -> Self {
        if self.master_key.is_none() {
            self.master_key = Some(random_hex(32));
        }
        self
    }

    /// Creates an API key `name` with `scopes` through the CLI before the
    /// daemon starts; [`Node::api_key`] returns it.
    pub fn api_key(mut self, name: &str, scopes: &[&str]) -> Self {
        self.api_keys.push((
            name.to_string(),
            scopes.iter().map(|scope| scope.to_string()).collect(),
        ));
        self.with_master_key()
    }

    /// The config file text with `data_dir` as `[node] data_dir`.
    pub fn render(&self, data_dir: &Path) -> String {
        let mut out = String::new();
        let path = |p: &Path| toml_string(&p.to_string_lossy());
        // Writing to a String cannot fail; the results are ignored on purpose.
        let _ = writeln!(out, "[node]");
        let _ = writeln!(out, "hostname = {}", toml_string(&self.hostname));
        let _ = writeln!(out, "data_dir = {}", path(data_dir));
        // The setup token file, beside data_dir inside the test's temp dir.
        let runtime_dir = data_dir.parent().unwrap_or(data_dir).join("run");
        let _ = writeln!(out, "runtime_dir = {}", path(&runtime_dir));
        if let Some(key) = &self.master_key {
            let _ = writeln!(out, "master_key = {}", toml_string(key));
        }
        let _ = writeln!(out);
        let (resolvers, timeout) = match &self.auth {
            Some((resolvers, timeout)) => (resolvers.clone(), timeout.clone()),
            None => (vec![crate::dns::refusing_resolver()], "1s".to_string()),
        };
        let _ = writeln!(out, "[auth]");
        let resolvers: Vec<String> = resolvers
            .iter()
            .map(|r| toml_string(&r.to_string()))
            .collect();
        let _ = writeln!(out, "resolvers = [{}]", resolvers.join(", "));
        let _ = writeln!(out, "timeout = {}", toml_string(&timeout));
        let _ = writeln!(out);
        let _ = writeln!(out, "[smtp]");
        let _ = writeln!(out, "listen = [\"127.0.0.1:0\"]");
        let strings = [
            ("max_message_size", &self.max_message_size),
            ("max_in_flight", &self.max_in_flight),
            ("max_header_line", &self.header_bounds[0]),
            ("max_header_field", &self.header_bounds[1]),
            ("max_header_section", &self.header_bounds[2]),
            ("command_timeout", &self.command_timeout),
            ("data_timeout", &self.data_timeout),
            ("max_in_flight_per_ip", &self.max_in_flight_per_ip),
            ("data_total_timeout", &self.data_total_timeout),
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
            ("max_addresses", self.max_addresses),
        ];
        for (key, value) in numbers {
            if let Some(value) = value {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        if let Some(tls) = &self.http {
            let _ = writeln!(out);
            let _ = writeln!(out, "[http]");
            let _ = writeln!(out, "listen = \"127.0.0.1:0\"");
            if let Some((cert, key)) = tls {
                let _ = writeln!(out, "tls_cert = {}", path(cert));
                let _ = writeln!(out, "tls_key = {}", path(key));
            }
            if let Some(networks) = &self.allow_from {
                let list: Vec<String> = networks.iter().map(|n| toml_string(n)).collect();
                let _ = writeln!(out, "allow_from = [{}]", list.join(", "));
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
    /// `s3`: the name of an `[s3.NAME]` connection.
    s3: Option<String>,
    /// `raw_to_s3 = true` when set.
    raw_to_s3: bool,
    /// `dmarc`: `"report"` or `"enforce"`; the daemon's default when unset.
    dmarc: Option<String>,
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
            s3: None,
            raw_to_s3: false,
            dmarc: None,
        }
    }

    /// Sets `dmarc` (`"report"` or `"enforce"`).
    pub fn dmarc(mut self, mode: &str) -> Self {
        self.dmarc = Some(mode.to_string());
        self
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

    /// Sets `s3`, the route's `[s3.NAME]` connection.
    pub fn s3(mut self, connection: &str) -> Self {
        self.s3 = Some(connection.to_string());
        self
    }

    /// Sets `raw_to_s3 = true`: the complete message is stored too.
    pub fn raw_to_s3(mut self) -> Self {
        self.raw_to_s3 = true;
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
        if let Some(s3) = &self.s3 {
            let _ = writeln!(out, "s3 = {}", toml_string(s3));
        }
        if self.raw_to_s3 {
            let _ = writeln!(out, "raw_to_s3 = true");
        }
        if let Some(mode) = &self.dmarc {
            let _ = writeln!(out, "dmarc = {}", toml_string(mode));
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
    /// The REST API's base URL (`https://127.0.0.1:PORT`), when configured.
    api_base: Option<String>,
    /// The API keys created before start, by name.
    api_keys: Vec<(String, String)>,
    /// What the daemon was started with, for [`Node::restart`].
    config: NodeConfig,
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
        let api_keys: Vec<(String, String)> = config
            .api_keys
            .iter()
            .map(|(name, scopes)| (name.clone(), create_api_key(&config_path, name, scopes)))
            .collect();

        let launched = launch(config, &config_path, &tmp_dir);
        Node {
            child: launched.child,
            log: launched.log,
            collectors: launched.collectors,
            smtp_addr: launched.smtp_addr,
            data_dir,
            config_path,
            temp,
            api_base: launched.api_base,
            api_keys,
            config: config.clone(),
        }
    }

    /// Starts the daemon again on the same config, data dir and temp dir, after it stopped
    /// (`terminate` or `kill`): for persistence and crash-recovery tests. Listening addresses
    /// change; the log keeps what the earlier run wrote.
    pub fn restart(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "restart needs the daemon stopped first"
        );
        let earlier = snapshot(&self.log);
        let tmp_dir = self.temp.path().join("tmp");
        let launched = launch(&self.config, &self.config_path, &tmp_dir);
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            *log = format!("{earlier}{}", snapshot(&launched.log));
        }
        self.child = launched.child;
        self.log = launched.log;
        self.collectors = launched.collectors;
        self.smtp_addr = launched.smtp_addr;
        self.api_base = launched.api_base;
    }

    /// The REST API's URL for `path` (e.g. `/api/v1/emails`), on 127.0.0.1.
    /// Panics unless the node was configured with [`NodeConfig::http`].
    pub fn api_url(&self, path: &str) -> String {
        let base = self
            .api_base
            .as_deref()
            .expect("the node serves the API: configure NodeConfig::http");
        format!("{base}{path}")
    }

    /// The address the REST API listens on.
    pub fn http_addr(&self) -> SocketAddr {
        let url = self.api_url("");
        let (_, addr) = url.split_once("://").expect("a URL has a scheme");
        addr.parse().expect("the API URL holds IP:port")
    }

    /// The API key created before start under `name` (see [`NodeConfig::api_key`]).
    pub fn api_key(&self, name: &str) -> &str {
        self.api_keys
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, key)| key.as_str())
            .unwrap_or_else(|| panic!("no API key {name:?} was configured"))
    }

    /// Runs `mxnode check-config --config <file>` on `toml` and returns its
    /// exit code (-1 when killed by a signal) and its stdout+stderr.
    pub fn check_config(toml: &str) -> (i32, String) {
        Node::run_with_config("check-config", toml, &[])
    }

    /// Runs `mxnode <subcommand> --config <file> <args…>` on `toml` (e.g.
    /// `check-config … --probe`, `s3-test … NAME`) and returns its exit code
    /// (-1 when killed by a signal) and its stdout+stderr.
    pub fn run_with_config(subcommand: &str, toml: &str, args: &[&str]) -> (i32, String) {
        let temp = tempfile::Builder::new()
            .prefix("mxnode-test-config-")
            .tempdir()
            .expect("create a temp dir for the config");
        let path = temp.path().join("mxnode.toml");
        fs::write(&path, toml).expect("write the config file");
        let output = output_with_timeout(
            Command::new(mxnode_bin())
                .arg(subcommand)
                .arg("--config")
                .arg(&path)
                .args(args)
                .env_remove("JOURNAL_STREAM"),
            &format!("mxnode {subcommand}"),
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

    /// `[node] runtime_dir`, where the node writes its setup token.
    pub fn runtime_dir(&self) -> PathBuf {
        self.temp.path().join("run")
    }

    /// The one-time setup token the node wrote at start (`runtime_dir/setup-token`), or `None`
    /// once setup is complete.
    pub fn setup_token(&self) -> Option<String> {
        fs::read_to_string(self.runtime_dir().join("setup-token"))
            .ok()
            .map(|text| text.trim().to_string())
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

    /// Sends SIGHUP, as `systemctl reload` does (the daemon re-reads its
    /// STARTTLS certificate).
    pub fn reload(&self) {
        signal(self.child.id(), Signal::SIGHUP);
    }

    /// The peak resident memory of the process ([`Node::pid`]) so far, in KiB
    /// (`VmHWM` of `/proc/<pid>/status`).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status of the running node");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmHWM line in /proc/<pid>/status")
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
/// A daemon process just started and listening.
struct Launched {
    child: Child,
    log: Arc<Mutex<String>>,
    collectors: Vec<JoinHandle<()>>,
    smtp_addr: SocketAddr,
    api_base: Option<String>,
}

/// Spawns `mxnode serve --config <config_path>` and waits until it listens.
fn launch(config: &NodeConfig, config_path: &Path, tmp_dir: &Path) -> Launched {
    let mut command = match config.wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(mxnode_bin());
            command
        }
        None => Command::new(mxnode_bin()),
    };
    command
        .arg("serve")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Anything the daemon puts in a temp file lands where the
        // content-at-rest scan looks.
        .env("TMPDIR", tmp_dir)
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
    let api_base = config.http.as_ref().map(|_| {
        // The API listener is bound before the SMTP one, so its line is
        // already in the log when the SMTP line is.
        match parse_http_listening(&snapshot(&log)) {
            Some(base) => base,
            None => {
                kill_and_reap(&mut child);
                drain(&mut collectors);
                panic!(
                    "mxnode did not log `{HTTP_LISTENING_MARKER}s://<addr>`; its log:\n{}",
                    snapshot(&log)
                );
            }
        }
    });

    Launched {
        child,
        log,
        collectors,
        smtp_addr,
        api_base,
    }
}

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

/// `n` random bytes as hex.
fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `mxnode api-key create` on `config_path` and returns the key it prints.
fn create_api_key(config_path: &Path, name: &str, scopes: &[String]) -> String {
    let mut command = Command::new(mxnode_bin());
    command
        .arg("api-key")
        .arg("create")
        .arg("--config")
        .arg(config_path)
        .arg("--name")
        .arg(name)
        .env_remove("JOURNAL_STREAM");
    for scope in scopes {
        command.arg("--scope").arg(scope);
    }
    let output = output_with_timeout(&mut command, "mxnode api-key create", CHECK_CONFIG_TIMEOUT);
    let key = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success() && key.starts_with("mxk_"),
        "mxnode api-key create failed ({}): {}{}",
        output.status,
        key,
        String::from_utf8_lossy(&output.stderr)
    );
    key
}

/// The base URL (`https://ADDR` or `http://ADDR`) of the first
/// `listening on http[s]://<addr>` line in `log`.
pub fn parse_http_listening(log: &str) -> Option<String> {
    log.match_indices(HTTP_LISTENING_MARKER)
        .find_map(|(at, _)| {
            let rest = &log[at + "listening on ".len()..];
            let (scheme, rest) = rest.split_once("://")?;
            if scheme != "http" && scheme != "https" {
                return None;
            }
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))
                .unwrap_or(rest.len());
            let addr: SocketAddr = rest[..end].parse().ok()?;
            Some(format!("{scheme}://{addr}"))
        })
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
    fn api_listening_address_is_parsed_from_log_lines() {
        let check = |log: &str, expect: Option<&str>| {
            assert_eq!(parse_http_listening(log).as_deref(), expect, "log: {log:?}");
        };
        check(
            "INFO listening on https://127.0.0.1:4431 (REST API)\n",
            Some("https://127.0.0.1:4431"),
        );
        check(
            "listening on http://127.0.0.1:80\n",
            Some("http://127.0.0.1:80"),
        );
        check("listening on smtp://127.0.0.1:25\n", None);
        check("listening on httpx://127.0.0.1:25\n", None);
    }

    #[test]
    fn config_renders_the_contract_keys() {
        let config = NodeConfig::new()
            .master_key(&"ab".repeat(32))
            .max_message_size("10MiB")
            .max_sessions(100)
            .command_timeout("5m")
            .auth(&["127.0.0.1:5353".parse().expect("addr")], "2s")
            .route(
                RouteConfig::new("*@in.example.test", "https://localhost:1/ok", "whsec_AAAA")
                    .ca(Path::new("/tmp/ca.pem"))
                    .budget("30s")
                    .dmarc("enforce"),
            );
        let text = config.render(Path::new("/tmp/x/data"));
        let expect = r#"[node]
hostname = "mx.test"
data_dir = "/tmp/x/data"
runtime_dir = "/tmp/x/run"
master_key = "abababababababababababababababababababababababababababababababab"

[auth]
resolvers = ["127.0.0.1:5353"]
timeout = "2s"

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
dmarc = "enforce"
"#;
        assert_eq!(text, expect);
        // Without `auth`, the node asks the harness's refusing resolver, never the system's.
        let text = NodeConfig::new().render(Path::new("/tmp/x/data"));
        let resolver = crate::dns::refusing_resolver().to_string();
        assert!(
            text.contains(&format!(
                "[auth]\nresolvers = [\"{resolver}\"]\ntimeout = \"1s\"\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
