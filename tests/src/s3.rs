//! The S3-compatible store peer: `s3s-fs` (crates.io, 0.14.1), a real S3 server that checks
//! SigV4 signatures, started on 127.0.0.1 with a random port, its own access key and secret,
//! and a root directory in a temp dir; plus an optional TLS front ([`TlsFront`]) for HTTPS.
//!
//! It owns starting and stopping the server, making buckets, rendering `[s3.NAME]` config
//! tables for it, and reading objects back from its root directory (s3s-fs keeps an object
//! at `<root>/<bucket>/<key>` and its attributes in `<root>/.bucket-….metadata.json`).
//!
//! It must never keep the server's log anywhere but in memory, never outlive its test (killed
//! on drop), and never wait without a deadline. Objects in its root are the customer's store in
//! these tests: the "content never at rest" scans look at the node's directories, not here.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use tempfile::TempDir;

use crate::process::{POLL_INTERVAL, collect_into, kill_and_reap, snapshot};
use crate::tls::TestCa;

/// How long s3s-fs may take to log its address and answer a first request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The log line that announces the address, e.g. `server is running at http://127.0.0.1:4000`.
const RUNNING_MARKER: &str = "server is running at http://";
/// Random bytes in generated access keys and secrets.
const KEY_BYTES: usize = 16;
/// Where the TLS front's script lives.
const TLS_FRONT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/tls_front.py");

/// The `s3s-fs` binary: `$S3S_FS_BIN` when set, else cargo's bin directory
/// (`$CARGO_HOME/bin`, `~/.cargo/bin`, where `./build.sh test` installs it), else `PATH`.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("S3S_FS_BIN") {
        return PathBuf::from(path);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    if let Some(candidate) = cargo_home.map(|home| home.join("bin/s3s-fs"))
        && candidate.is_file()
    {
        return candidate;
    }
    PathBuf::from("s3s-fs")
}

/// Random uppercase hex, for access keys and names.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the system random generator works");
    buf.iter().map(|b| format!("{b:02X}")).collect()
}

/// A running s3s-fs on 127.0.0.1 that accepts only requests signed with its key pair.
pub struct S3Server {
    /// The s3s-fs process; killed on drop.
    child: Child,
    /// Its stdout and stderr, interleaved by line.
    log: Arc<Mutex<String>>,
    /// `http://127.0.0.1:<port>`.
    endpoint: String,
    access_key: String,
    secret_key: String,
    /// The store's root: one directory per bucket. Dropped after the process.
    root: TempDir,
}

impl S3Server {
    /// Starts s3s-fs with a fresh access key and secret and waits until it answers HTTP.
    /// Panics with its log when it does not start.
    pub fn start() -> S3Server {
        let root = tempfile::Builder::new()
            .prefix("mxnode-test-s3-")
            .tempdir()
            .expect("create the store's root");
        let access_key = format!("AK{}", random_hex(KEY_BYTES / 2));
        let secret_key = random_hex(KEY_BYTES);
        let bin = s3s_fs_bin();
        let mut child = Command::new(&bin)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg("0")
            .arg("--access-key")
            .arg(&access_key)
            .arg("--secret-key")
            .arg(&secret_key)
            .arg(root.path())
            // Its INFO line announces the port; nothing else of it is needed.
            .env("RUST_LOG", "s3s_fs=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {}: {error} (run ./build.sh test, which installs it, or set \
                     S3S_FS_BIN)",
                    bin.display()
                )
            });
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stdout) = child.stdout.take() {
            collect_into(stdout, Arc::clone(&log));
        }
        if let Some(stderr) = child.stderr.take() {
            collect_into(stderr, Arc::clone(&log));
        }

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let endpoint = loop {
            if let Some(endpoint) = parse_running(&snapshot(&log)) {
                break endpoint;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "s3s-fs exited during startup ({status}); its log:\n{}",
                    snapshot(&log)
                );
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                panic!(
                    "s3s-fs did not announce its address within {STARTUP_TIMEOUT:?}; its log:\n{}",
                    snapshot(&log)
                );
            }
            thread::sleep(POLL_INTERVAL);
        };
        let server = S3Server {
            child,
            log,
            endpoint,
            access_key,
            secret_key,
            root,
        };
        server.wait_until_answering(deadline);
        server
    }

    /// Polls until an (unsigned, hence refused) request gets an HTTP answer.
    fn wait_until_answering(&self, deadline: Instant) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        loop {
            if agent.get(&self.endpoint).call().is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs at {} does not answer; its log:\n{}",
                self.endpoint,
                self.log()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// `http://127.0.0.1:<port>`: an `[s3.NAME] endpoint`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("the endpoint ends with a port")
    }

    /// The access key id it accepts.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret of that access key.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Creates a bucket (s3s-fs keeps one directory per bucket).
    pub fn create_bucket(&self, bucket: &str) {
        fs::create_dir(self.root.path().join(bucket))
            .unwrap_or_else(|error| panic!("create bucket {bucket}: {error}"));
    }

    /// An `[s3.NAME]` connection to this server and `bucket`, with the right credentials.
    pub fn connection(&self, name: &str, bucket: &str) -> S3Connection {
        S3Connection {
            name: name.to_string(),
            endpoint: self.endpoint.clone(),
            bucket: bucket.to_string(),
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.clone(),
            prefix: None,
            ca: None,
        }
    }

    /// The bytes of object `key` in `bucket`, `None` when there is none.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        fs::read(self.root.path().join(bucket).join(key)).ok()
    }

    /// The `Content-Type` the object was stored with, from s3s-fs's attribute file.
    pub fn content_type(&self, bucket: &str, key: &str) -> Option<String> {
        let name = format!(
            ".bucket-{}.object-{}.metadata.json",
            URL_SAFE_NO_PAD.encode(bucket),
            URL_SAFE_NO_PAD.encode(key)
        );
        let text = fs::read(self.root.path().join(name)).ok()?;
        let attributes: serde_json::Value = serde_json::from_slice(&text).ok()?;
        attributes["content_type"].as_str().map(str::to_string)
    }

    /// Every object key in `bucket`, sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let base = self.root.path().join(bucket);
        let mut keys = Vec::new();
        let mut pending = vec![base.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Ok(relative) = path.strip_prefix(&base) {
                    keys.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        keys.sort();
        keys
    }

    /// Everything s3s-fs has logged so far.
    pub fn log(&self) -> String {
        snapshot(&self.log)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// The address in s3s-fs's `server is running at http://…` line.
fn parse_running(log: &str) -> Option<String> {
    let at = log.find(RUNNING_MARKER)? + RUNNING_MARKER.len();
    let rest = &log[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':')))
        .unwrap_or(rest.len());
    let address = &rest[..end];
    // The port is there only once the whole line is.
    address
        .rsplit_once(':')
        .filter(|(_, port)| !port.is_empty() && end < rest.len())
        .map(|_| format!("http://{address}"))
}

/// One `[s3.NAME]` table, by default pointing at an [`S3Server`] with its credentials.
#[derive(Debug, Clone)]
pub struct S3Connection {
    /// `NAME` of `[s3.NAME]`, what a route's `s3` names.
    pub name: String,
    pub endpoint: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `prefix`, when set.
    pub prefix: Option<String>,
    /// `ca`, when set.
    pub ca: Option<PathBuf>,
}

impl S3Connection {
    /// Sets `prefix`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_string());
        self
    }

    /// Replaces the secret (e.g. with a wrong one).
    pub fn secret(mut self, secret: &str) -> Self {
        self.secret_access_key = secret.to_string();
        self
    }

    /// Replaces the endpoint (e.g. with a [`TlsFront`]'s).
    pub fn endpoint(mut self, endpoint: &str) -> Self {
        self.endpoint = endpoint.to_string();
        self
    }

    /// Sets `ca`.
    pub fn ca(mut self, ca_pem: &Path) -> Self {
        self.ca = Some(ca_pem.to_path_buf());
        self
    }

    /// The TOML table, for [`crate::NodeConfig::extra_toml`].
    pub fn toml(&self) -> String {
        let quote = |value: &str| serde_json::to_string(value).expect("a string serialises");
        let mut out = format!(
            "[s3.{}]\nendpoint = {}\nbucket = {}\nregion = \"us-east-1\"\naccess_key_id = {}\n\
             secret_access_key = {}\npath_style = true\n",
            self.name,
            quote(&self.endpoint),
            quote(&self.bucket),
            quote(&self.access_key_id),
            quote(&self.secret_access_key),
        );
        if let Some(prefix) = &self.prefix {
            out.push_str(&format!("prefix = {}\n", quote(prefix)));
        }
        if let Some(ca) = &self.ca {
            out.push_str(&format!("ca = {}\n", quote(&ca.to_string_lossy())));
        }
        out
    }
}

/// A TLS front for a plain-HTTP peer (`tests/peers/tls_front.py`): terminates HTTPS with a
/// [`TestCa`]'s `localhost` certificate on 127.0.0.1 and relays the bytes to the backend port,
/// so the node's S3 client can be tested over HTTPS with a connection `ca`.
pub struct TlsFront {
    /// The python process; killed on drop.
    child: Child,
    port: u16,
}

impl TlsFront {
    /// Starts a front for `127.0.0.1:<backend_port>` with `ca`'s server certificate.
    pub fn start(ca: &TestCa, backend_port: u16) -> TlsFront {
        let mut child = Command::new("python3")
            .arg(TLS_FRONT_SCRIPT)
            .arg("--cert")
            .arg(&ca.cert_pem)
            .arg("--key")
            .arg(&ca.key_pem)
            .arg("--backend")
            .arg(backend_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start python3 {TLS_FRONT_SCRIPT}: {error}"));
        let stdout = child.stdout.take().expect("stdout was piped");
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = line_tx.send(line);
        });
        let line = line_rx.recv_timeout(STARTUP_TIMEOUT).unwrap_or_default();
        match line
            .trim()
            .strip_prefix("listening ")
            .map(str::parse::<u16>)
        {
            Some(Ok(port)) => TlsFront { child, port },
            _ => {
                kill_and_reap(&mut child);
                panic!("TLS front did not start (first line {line:?}); see its stderr above");
            }
        }
    }

    /// `https://localhost:<port>`, verified by the [`TestCa`] it was started with.
    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_running(log: &str, expect: Option<&str>) {
        assert_eq!(parse_running(log).as_deref(), expect, "log: {log:?}");
    }

    #[test]
    fn running_address_is_parsed_from_the_log() {
        check_running(
            "  INFO s3s_fs: server is running at http://127.0.0.1:36957\n    at src/main.rs:121\n",
            Some("http://127.0.0.1:36957"),
        );
        check_running("server is running at http://127.0.0.1:", None);
        check_running("server is running at http://127.0.0.1:40", None);
        check_running("authentication is enabled\n", None);
    }

    #[test]
    fn connection_renders_an_s3_table() {
        let connection = S3Connection {
            name: "primary".into(),
            endpoint: "http://127.0.0.1:1".into(),
            bucket: "mail".into(),
            access_key_id: "AK".into(),
            secret_access_key: "SK".into(),
            prefix: None,
            ca: None,
        }
        .prefix("in")
        .ca(Path::new("/tmp/ca.pem"));
        assert_eq!(
            connection.toml(),
            "[s3.primary]\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"mail\"\n\
             region = \"us-east-1\"\naccess_key_id = \"AK\"\nsecret_access_key = \"SK\"\n\
             path_style = true\nprefix = \"in\"\nca = \"/tmp/ca.pem\"\n"
        );
    }
}
