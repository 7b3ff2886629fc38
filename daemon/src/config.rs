//! Node configuration (DESIGN §5), in two stages.
//!
//! [`RawConfig`] mirrors the TOML file one to one and is deserialized without side effects;
//! [`Config::from_raw`] validates it and builds the typed objects the node runs on. Every
//! problem found is collected as a [`ConfigError`] that names its key, so `check-config` can list
//! them all at once. Unknown keys are errors too (a mistyped key must never be silently ignored).
//!
//! This module must never print a secret: errors name keys, never values.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// `node.runtime_dir` when not set: a tmpfs on the appliance.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/mxnode";
/// Where the node keeps its own self-signed HTTPS certificate, under `node.data_dir`.
pub const SELF_SIGNED_DIR: &str = "tls";

/// Default SMTP `SIZE`: what common MX providers accept.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 25 * 1024 * 1024;
/// Default concurrent SMTP sessions across all clients.
pub const DEFAULT_MAX_SESSIONS: usize = 1000;
/// Default concurrent SMTP sessions from one client IP address.
pub const DEFAULT_MAX_SESSIONS_PER_IP: usize = 20;
/// Default recipients per transaction (RFC 5321 §4.5.3.1.8 asks for at least 100).
pub const DEFAULT_MAX_RECIPIENTS: usize = 100;
/// Smallest `smtp.max_header_line`: RFC 5322 §2.1.1's 998 octets, rounded up.
pub const MIN_HEADER_LINE: usize = 1000;
/// Default message bytes held in memory across all sessions.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512 * 1024 * 1024;
/// RFC 5321 §4.5.3.2.7: the server waits at least 5 minutes for the next command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 §4.5.3.2.5: data block timeout of 3 minutes.
pub const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(3 * 60);
/// The whole of one message's data (see `smtp::session::DEFAULT_DATA_TOTAL_TIMEOUT`).
pub const DEFAULT_DATA_TOTAL_TIMEOUT: Duration = crate::smtp::session::DEFAULT_DATA_TOTAL_TIMEOUT;
/// A network in CIDR notation, or a single address.
fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// Default share of `max_in_flight` one client address may hold: an eighth, so that no
/// fewer than eight senders can fill the node, but never less than one largest message.
pub fn default_max_in_flight_per_ip(max_in_flight: usize, max_message_size: usize) -> usize {
    (max_in_flight / 8).max(max_message_size)
}
/// DESIGN §4: the webhook retry budget inside one SMTP transaction.
pub const DEFAULT_WEBHOOK_BUDGET: Duration = Duration::from_secs(30);
/// Upper bound for the webhook budget: the sending MTA waits at most 10 minutes for the reply
/// after end of data (RFC 5321 §4.5.3.2.6); stay well inside it.
pub const MAX_WEBHOOK_BUDGET: Duration = Duration::from_secs(5 * 60);
/// DESIGN §5 retention defaults.
pub const DEFAULT_METADATA_RETENTION: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Standard Webhooks secrets decode to 24..64 bytes; below 16 bytes an HMAC key is too weak.
const MIN_WEBHOOK_KEY_BYTES: usize = 16;
/// Trusted release keys the image installs (`firmware-config/update-keys.txt`).
pub const DEFAULT_UPDATE_KEYS: &str = "/usr/share/mxnode/update-keys.txt";
/// The installer's state on the plain state partition.
pub const DEFAULT_UPDATE_STATE_DIR: &str = "/var/lib/mxnode-state/update";
/// How often the channel is polled.
pub const DEFAULT_UPDATE_CHECK_INTERVAL: Duration = Duration::from_secs(6 * 3600);
/// Polling faster than this only loads the channel.
pub const MIN_UPDATE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// DESIGN §11: all DNS lookups of one message's sender authentication together.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound for `auth.timeout`: the sender waits for the reply meanwhile.
pub const MAX_AUTH_TIMEOUT: Duration = Duration::from_secs(60);

/// One problem in a configuration, named by its dotted key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `route[0].webhook`, or `""` for the whole file.
    pub key: String,
    /// What is wrong, never the value itself (it may be a secret).
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn one(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            key: key.into(),
            message: message.into(),
        }])
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1: the file as written.

/// The TOML file, field for field. Every key is optional here; defaults and requirements are
/// applied in [`Config::from_raw`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RawConfig {
    /// `[auth]`: sender authentication (DESIGN §11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub node: RawNode,
    #[serde(default)]
    pub smtp: RawSmtp,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub retention: RawRetention,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    #[serde(default)]
    pub s3: BTreeMap<String, RawS3>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<RawUpdate>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RawAuth {
    pub resolvers: Option<Vec<String>>,
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RawNode {
    pub hostname: Option<String>,
    pub data_dir: Option<String>,
    pub master_key: Option<String>,
    pub runtime_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RawSmtp {
    pub listen: Option<Vec<String>>,
    pub max_message_size: Option<SizeValue>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub max_sessions: Option<usize>,
    pub max_sessions_per_ip: Option<usize>,
    pub max_recipients: Option<usize>,
    pub max_in_flight: Option<SizeValue>,
    pub max_in_flight_per_ip: Option<SizeValue>,
    pub max_header_line: Option<SizeValue>,
    pub max_header_field: Option<SizeValue>,
    pub max_header_section: Option<SizeValue>,
    pub max_addresses: Option<usize>,
    pub command_timeout: Option<String>,
    pub data_timeout: Option<String>,
    pub data_total_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RawHttp {
    pub listen: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub allow_from: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RawRetention {
    pub metadata: Option<String>,
    pub audit: Option<String>,
    pub store_subject: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RawRoute {
    #[serde(rename = "match")]
    pub pattern: Option<String>,
    pub webhook: Option<String>,
    pub webhook_secret: Option<String>,
    pub webhook_ca: Option<String>,
    pub webhook_budget: Option<String>,
    pub attachments: Option<String>,
    pub s3: Option<String>,
    pub raw_to_s3: Option<bool>,
    pub dmarc: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RawS3 {
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub path_style: Option<bool>,
    pub ca: Option<String>,
    pub prefix: Option<String>,
}

/// `[update]`: the update channel (DESIGN §9). Every key is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RawUpdate {
    pub keys: Option<String>,
    pub channel: Option<String>,
    pub channel_ca: Option<String>,
    pub check_interval: Option<String>,
    pub auto_apply: Option<bool>,
    pub maintenance_window: Option<String>,
    pub state_dir: Option<String>,
    pub spool_dir: Option<String>,
    pub compatible: Option<String>,
}

/// A byte size: a plain integer, or a string such as `"25MiB"`, `"10MB"`, `"512k"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl RawConfig {
    /// Reads a config file (stage 1 only).
    pub fn read(path: &Path) -> Result<RawConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
        RawConfig::parse(&text)
    }

    /// Parses TOML text. Reports a syntax or type error with its line, and every unknown key.
    pub fn parse(text: &str) -> Result<RawConfig, ConfigErrors> {
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, &e))?;
        let mut unknown = Vec::new();
        let raw: RawConfig = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
            .map_err(|e| toml_error(text, &e))?;
        if !unknown.is_empty() {
            return Err(ConfigErrors(
                unknown
                    .into_iter()
                    .map(|path| ConfigError {
                        key: index_style(&path),
                        message: "unknown key".into(),
                    })
                    .collect(),
            ));
        }
        Ok(raw)
    }
}

/// Writes array indices the way validation errors do: `route.0.x` becomes `route[0].x`.
pub fn index_style(path: &str) -> String {
    let mut out = String::new();
    // serde_ignored writes `?` for a step through an `Option`: not part of the key.
    for segment in path.split('.').filter(|s| *s != "?") {
        if !out.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// Renders a TOML error as "line N: message" without quoting the offending line, which could
/// hold a literal secret.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigErrors {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let message = match line {
        Some(line) => format!("line {line}: {}", e.message().trim()),
        None => e.message().trim().to_string(),
    };
    ConfigErrors::one("", message)
}

// ---------------------------------------------------------------------------------------------
// Stage 2: validated, typed configuration.

/// The validated configuration the node runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub auth: AuthConfig,
    pub node: NodeConfig,
    pub smtp: SmtpConfig,
    pub http: HttpConfig,
    pub retention: RetentionConfig,
    pub routes: Vec<Route>,
    pub s3: BTreeMap<String, S3Config>,
    pub update: UpdateConfig,
}

/// `[update]`, validated.
#[derive(Debug, Clone)]
pub struct UpdateConfig {
    /// Trusted release keys; a missing or empty file trusts no key.
    pub keys: PathBuf,
    /// Base URL of the channel (ends in `/`); without it the node never polls.
    pub channel: Option<String>,
    /// Extra trust anchors for the channel besides the system roots.
    pub channel_ca: Option<PathBuf>,
    pub check_interval: Duration,
    /// Install what a check finds, or wait for `POST /api/v1/update/apply`.
    pub auto_apply: bool,
    /// Reboot only inside this window (UTC); none: right after the install.
    pub maintenance_window: Option<crate::update::install::MaintenanceWindow>,
    /// Root-owned state the node only reads: floor, history, installer status.
    pub state_dir: PathBuf,
    /// Node-owned: the staged release and the install request.
    pub spool_dir: PathBuf,
    pub compatible: String,
}

/// `[auth]`, validated (DESIGN §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// DNS servers to ask; `None`: the system's (`/etc/resolv.conf`).
    pub resolvers: Option<Vec<SocketAddr>>,
    /// All lookups of one message together.
    pub timeout: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            resolvers: None,
            timeout: DEFAULT_AUTH_TIMEOUT,
        }
    }
}

/// What a route does with a message that fails DMARC (DESIGN §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmarcMode {
    /// Verdicts go into the payload; nothing is refused.
    #[default]
    Report,
    /// DMARC `fail` under `p=reject` is refused (`550 5.7.1`), `temperror` deferred
    /// (`451 4.7.5`).
    Enforce,
}

impl DmarcMode {
    /// The word of the config file and the settings API.
    pub fn as_str(self) -> &'static str {
        match self {
            DmarcMode::Report => "report",
            DmarcMode::Enforce => "enforce",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// SMTP greeting and EHLO name.
    pub hostname: String,
    /// RocksDB and node state; never message content.
    pub data_dir: PathBuf,
    /// 32-byte node master key, when configured.
    pub master_key: Option<Secret>,
    /// Volatile state for the console (the setup token file the login banner shows); a tmpfs
    /// on the appliance (`/run/mxnode`).
    pub runtime_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub listen: Vec<SocketAddr>,
    pub max_message_size: usize,
    pub tls: Option<TlsFiles>,
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
    pub max_recipients: usize,
    pub max_in_flight: usize,
    /// The part of `max_in_flight` the sessions of one client address may hold together.
    pub max_in_flight_per_ip: usize,
    /// Longest physical header line, in octets without CRLF; `554 5.6.0` past it (issue 16).
    pub max_header_line: usize,
    /// Largest header field, its folded lines together; `554 5.6.0` past it.
    pub max_header_field: usize,
    /// Largest header block (the message's or a MIME part's); `554 5.6.0` past it.
    pub max_header_section: usize,
    /// Most addresses in From, To, Cc and Reply-To together; `554 5.6.0` past it.
    pub max_addresses: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// The whole of one message's data, from `354` to its end.
    pub data_total_timeout: Duration,
}

/// PEM certificate chain and private key files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    /// `tls` names the node's own certificate under `data_dir/tls/`, generated self-signed on
    /// first start because `http.tls_cert`/`http.tls_key` are not set on a non-loopback
    /// address (the setup page must never be served in the clear).
    pub self_signed: bool,
    /// Client networks the setup page, console and API answer (`http.allow_from`); empty:
    /// every network. The box itself (127.0.0.1, ::1) is always let in, for its health check.
    pub allow_from: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub metadata: Duration,
    pub audit: Duration,
    pub store_subject: bool,
}

/// Where attachments go for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentMode {
    /// Base64 inside the webhook payload.
    Inline,
    /// PUT to the route's S3 connection before the webhook.
    S3,
}

/// One `[[route]]`: which recipients it takes and where their mail goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// The `match` pattern as written; names the route in logs and ids.
    pub name: String,
    pub pattern: Pattern,
    /// `https://…` (or `http://` to a loopback address, for development).
    pub webhook: String,
    /// HMAC key: the base64-decoded part of `whsec_…`.
    pub webhook_key: Secret,
    /// Extra trust anchors (PEM) besides the system roots.
    pub webhook_ca: Option<PathBuf>,
    /// Total time for webhook attempts inside one SMTP transaction.
    pub webhook_budget: Duration,
    pub attachments: AttachmentMode,
    /// Name of the route's `[s3.NAME]` connection.
    pub s3: Option<String>,
    /// Whether the complete message is stored too (`raw.eml`) and the payload gets `raw`.
    pub raw_to_s3: bool,
    /// `report` or `enforce` (DESIGN §11).
    pub dmarc: DmarcMode,
}

/// Recipient pattern of a route: an exact address or every address of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `user@domain`, compared case-insensitively.
    Exact(String),
    /// `*@domain`, compared case-insensitively.
    Domain(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let text = text.trim();
        let (local, domain) = text
            .rsplit_once('@')
            .ok_or_else(|| "expected `user@domain` or `*@domain`".to_string())?;
        if domain.is_empty()
            || local.is_empty()
            || domain.contains(['@', '*', ' ', '<', '>'])
            || local.contains([' ', '<', '>'])
        {
            return Err("expected `user@domain` or `*@domain`".into());
        }
        if local == "*" {
            Ok(Pattern::Domain(domain.to_lowercase()))
        } else if local.contains('*') {
            Err("`*` is only allowed as the whole local part (`*@domain`)".into())
        } else {
            Ok(Pattern::Exact(text.to_lowercase()))
        }
    }

    /// Whether an envelope address (without `<>`) belongs to this pattern.
    pub fn matches(&self, address: &str) -> bool {
        let Some((_, domain)) = address.rsplit_once('@') else {
            return false;
        };
        match self {
            Pattern::Exact(exact) => address.to_lowercase() == *exact,
            Pattern::Domain(d) => domain.to_lowercase() == *d,
        }
    }
}

#[derive(Debug, Clone)]
pub struct S3Config {
    /// Base URL of the store, `https://host[:port]` (`http://` only to loopback).
    pub endpoint: String,
    pub bucket: String,
    /// Region of the SigV4 credential scope.
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Bucket in the path (`host/bucket/key`) rather than the host name (`bucket.host/key`).
    pub path_style: bool,
    /// Extra trust anchors (PEM) besides the system roots.
    pub ca: Option<PathBuf>,
    /// Key prefix without surrounding `/`; `""` for none.
    pub prefix: String,
}

/// Secret bytes. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Resolves a secret reference: a literal, `file:/path` (trailing newline trimmed) or
/// `env:NAME`.
pub fn resolve_secret(value: &str) -> Result<Vec<u8>, String> {
    if let Some(path) = value.strip_prefix("file:") {
        let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Ok(bytes)
    } else if let Some(name) = value.strip_prefix("env:") {
        std::env::var(name)
            .map(String::into_bytes)
            .map_err(|_| format!("environment variable {name} is not set"))
    } else {
        Ok(value.as_bytes().to_vec())
    }
}

/// Parses `"25MiB"`-style sizes (binary and decimal units, case-insensitive) or plain bytes.
pub fn parse_size(value: &SizeValue) -> Result<usize, String> {
    let text = match value {
        SizeValue::Bytes(n) => return usize::try_from(*n).map_err(|_| "too large".to_string()),
        SizeValue::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("expected a size such as \"25MiB\", got {text:?}"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| "too large".to_string())
}

/// Parses `"30s"`, `"5m"`, `"24h"`, `"90d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("expected a duration such as \"30s\" or \"24h\": {e}"))
}

/// Collects problems while building a [`Config`].
struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    fn size(&mut self, key: &str, value: &Option<SizeValue>, default: usize) -> usize {
        match value.as_ref().map(parse_size) {
            None => default,
            Some(Ok(0)) => {
                self.error(key, "must be greater than zero");
                default
            }
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                self.error(key, e);
                default
            }
        }
    }

    fn duration(&mut self, key: &str, value: &Option<String>, default: Duration) -> Duration {
        match value.as_deref().map(parse_duration) {
            None => default,
            Some(Ok(d)) if d.is_zero() => {
                self.error(key, "must be greater than zero");
                default
            }
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.error(key, e);
                default
            }
        }
    }

    fn count(&mut self, key: &str, value: Option<usize>, default: usize) -> usize {
        match value {
            None => default,
            Some(0) => {
                self.error(key, "must be greater than zero");
                default
            }
            Some(n) => n,
        }
    }

    fn existing_file(&mut self, key: &str, value: &Option<String>) -> Option<PathBuf> {
        let path = PathBuf::from(value.as_ref()?);
        if !path.is_file() {
            self.error(key, format!("file {} does not exist", path.display()));
        }
        Some(path)
    }

    fn tls(
        &mut self,
        section: &str,
        cert: &Option<String>,
        key: &Option<String>,
    ) -> Option<TlsFiles> {
        let cert_path = self.existing_file(&format!("{section}.tls_cert"), cert);
        let key_path = self.existing_file(&format!("{section}.tls_key"), key);
        match (cert_path, key_path) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (Some(_), None) => {
                self.error(
                    format!("{section}.tls_key"),
                    "required when tls_cert is set",
                );
                None
            }
            (None, Some(_)) => {
                self.error(
                    format!("{section}.tls_cert"),
                    "required when tls_key is set",
                );
                None
            }
            (None, None) => None,
        }
    }

    fn secret(&mut self, key: &str, value: &str) -> Option<Vec<u8>> {
        match resolve_secret(value) {
            Ok(bytes) if bytes.is_empty() => {
                self.error(key, "is empty");
                None
            }
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.error(key, e);
                None
            }
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::from_raw(RawConfig::read(path)?)
    }

    /// Validates a raw config, collecting every problem.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigErrors> {
        let mut v = Validator { errors: Vec::new() };

        let hostname = raw
            .node
            .hostname
            .clone()
            .unwrap_or_else(|| "localhost".into());
        if hostname.is_empty()
            || !hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            v.error(
                "node.hostname",
                "must be a DNS name (letters, digits, '-', '.')",
            );
        }
        let data_dir = PathBuf::from(
            raw.node
                .data_dir
                .clone()
                .unwrap_or_else(|| "/var/lib/mxnode".into()),
        );
        let runtime_dir = PathBuf::from(
            raw.node
                .runtime_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into()),
        );
        let master_key = raw.node.master_key.as_deref().and_then(|value| {
            let bytes = v.secret("node.master_key", value)?;
            match decode_master_key(&bytes) {
                Some(key) => Some(Secret(key)),
                None => {
                    v.error(
                        "node.master_key",
                        "must be 32 bytes, raw or as 64 hex digits",
                    );
                    None
                }
            }
        });

        let listen_text = raw
            .smtp
            .listen
            .clone()
            .unwrap_or_else(|| vec!["0.0.0.0:25".into()]);
        if listen_text.is_empty() {
            v.error("smtp.listen", "needs at least one address");
        }
        let mut listen = Vec::new();
        for (i, text) in listen_text.iter().enumerate() {
            match text.parse::<SocketAddr>() {
                Ok(addr) => listen.push(addr),
                Err(_) => v.error(
                    format!("smtp.listen[{i}]"),
                    "expected IP:port, e.g. \"0.0.0.0:25\"",
                ),
            }
        }
        let mut smtp = SmtpConfig {
            listen,
            max_message_size: v.size(
                "smtp.max_message_size",
                &raw.smtp.max_message_size,
                DEFAULT_MAX_MESSAGE_SIZE,
            ),
            tls: v.tls("smtp", &raw.smtp.tls_cert, &raw.smtp.tls_key),
            max_sessions: v.count(
                "smtp.max_sessions",
                raw.smtp.max_sessions,
                DEFAULT_MAX_SESSIONS,
            ),
            max_sessions_per_ip: v.count(
                "smtp.max_sessions_per_ip",
                raw.smtp.max_sessions_per_ip,
                DEFAULT_MAX_SESSIONS_PER_IP,
            ),
            max_recipients: v.count(
                "smtp.max_recipients",
                raw.smtp.max_recipients,
                DEFAULT_MAX_RECIPIENTS,
            ),
            max_in_flight: v.size(
                "smtp.max_in_flight",
                &raw.smtp.max_in_flight,
                DEFAULT_MAX_IN_FLIGHT,
            ),
            max_header_line: v.size(
                "smtp.max_header_line",
                &raw.smtp.max_header_line,
                crate::message::MAX_HEADER_LINE,
            ),
            max_header_field: v.size(
                "smtp.max_header_field",
                &raw.smtp.max_header_field,
                crate::message::MAX_HEADER_FIELD,
            ),
            max_header_section: v.size(
                "smtp.max_header_section",
                &raw.smtp.max_header_section,
                crate::message::MAX_HEADER_SECTION,
            ),
            max_addresses: v.count(
                "smtp.max_addresses",
                raw.smtp.max_addresses,
                crate::message::MAX_ADDRESSES,
            ),
            command_timeout: v.duration(
                "smtp.command_timeout",
                &raw.smtp.command_timeout,
                DEFAULT_COMMAND_TIMEOUT,
            ),
            data_timeout: v.duration(
                "smtp.data_timeout",
                &raw.smtp.data_timeout,
                DEFAULT_DATA_TIMEOUT,
            ),
            data_total_timeout: v.duration(
                "smtp.data_total_timeout",
                &raw.smtp.data_total_timeout,
                DEFAULT_DATA_TOTAL_TIMEOUT,
            ),
            max_in_flight_per_ip: 0,
        };
        smtp.max_in_flight_per_ip = v.size(
            "smtp.max_in_flight_per_ip",
            &raw.smtp.max_in_flight_per_ip,
            default_max_in_flight_per_ip(smtp.max_in_flight, smtp.max_message_size),
        );
        if smtp.max_header_line < MIN_HEADER_LINE {
            v.error(
                "smtp.max_header_line",
                format!("must be at least {MIN_HEADER_LINE} octets (RFC 5322 allows 998 per line)"),
            );
        }
        if smtp.max_header_field < smtp.max_header_line {
            v.error(
                "smtp.max_header_field",
                "must be at least smtp.max_header_line, or no field of the longest line would fit",
            );
        }
        if smtp.max_header_section < smtp.max_header_field {
            v.error(
                "smtp.max_header_section",
                "must be at least smtp.max_header_field, or no block with the largest field would fit",
            );
        }
        if smtp.max_in_flight < smtp.max_message_size {
            v.error(
                "smtp.max_in_flight",
                "must be at least smtp.max_message_size, or no maximum-size message could be received",
            );
        }
        if smtp.max_in_flight_per_ip < smtp.max_message_size {
            v.error(
                "smtp.max_in_flight_per_ip",
                "must be at least smtp.max_message_size, or no maximum-size message could be received",
            );
        }
        if smtp.data_total_timeout < smtp.data_timeout {
            v.error(
                "smtp.data_total_timeout",
                "must be at least smtp.data_timeout (it bounds the whole message, that one line)",
            );
        }

        let mut http = HttpConfig {
            self_signed: false,
            listen: raw
                .http
                .listen
                .as_deref()
                .and_then(|text| match text.parse() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        v.error("http.listen", "expected IP:port, e.g. \"0.0.0.0:443\"");
                        None
                    }
                }),
            tls: v.tls("http", &raw.http.tls_cert, &raw.http.tls_key),
            allow_from: Vec::new(),
        };
        for (i, text) in raw.http.allow_from.iter().flatten().enumerate() {
            match parse_network(text) {
                Some(net) => http.allow_from.push(net),
                None => v.error(
                    format!("http.allow_from[{i}]"),
                    "expected an address or a network, e.g. \"10.0.0.0/8\" or \"fd00::/8\"",
                ),
            }
        }
        if raw.http.allow_from.as_ref().is_some_and(Vec::is_empty) {
            v.error(
                "http.allow_from",
                "an empty list would shut every network out: leave the key out to allow all",
            );
        }
        // API keys and session cookies never cross a network in the clear: without configured
        // files, a non-loopback listener uses the node's own self-signed certificate.
        if let (Some(addr), None) = (http.listen, &http.tls)
            && !addr.ip().is_loopback()
            && raw.http.tls_cert.is_none()
            && raw.http.tls_key.is_none()
        {
            http.tls = Some(TlsFiles {
                cert: data_dir.join(SELF_SIGNED_DIR).join("cert.pem"),
                key: data_dir.join(SELF_SIGNED_DIR).join("key.pem"),
            });
            http.self_signed = true;
        }

        let retention = RetentionConfig {
            metadata: v.duration(
                "retention.metadata",
                &raw.retention.metadata,
                DEFAULT_METADATA_RETENTION,
            ),
            audit: v.duration(
                "retention.audit",
                &raw.retention.audit,
                DEFAULT_AUDIT_RETENTION,
            ),
            store_subject: raw.retention.store_subject.unwrap_or(true),
        };

        let mut s3 = BTreeMap::new();
        for (name, raw_s3) in &raw.s3 {
            let key = |field: &str| format!("s3.{name}.{field}");
            let required = |field: &str, value: &Option<String>, v: &mut Validator| match value {
                Some(s) if !s.is_empty() => s.clone(),
                _ => {
                    v.error(key(field), "is required");
                    String::new()
                }
            };
            let endpoint = required("endpoint", &raw_s3.endpoint, &mut v);
            let bucket = required("bucket", &raw_s3.bucket, &mut v);
            let access_key_id = required("access_key_id", &raw_s3.access_key_id, &mut v);
            let secret_text = required("secret_access_key", &raw_s3.secret_access_key, &mut v);
            let secret = if secret_text.is_empty() {
                Vec::new()
            } else {
                v.secret(&key("secret_access_key"), &secret_text)
                    .unwrap_or_default()
            };
            let path_style = raw_s3.path_style.unwrap_or(true);
            if !endpoint.is_empty() {
                match check_url(&endpoint).and_then(|()| crate::net::parse_endpoint(&endpoint)) {
                    Err(e) => v.error(key("endpoint"), e),
                    Ok((_, authority)) if !path_style && is_ip_authority(&authority) => v.error(
                        key("path_style"),
                        "must be true when the endpoint is an IP address \
                         (virtual-hosted addressing needs a DNS name)",
                    ),
                    Ok(_) => {}
                }
            }
            if !bucket.is_empty()
                && let Err(e) = check_bucket_name(&bucket, path_style)
            {
                v.error(key("bucket"), e);
            }
            let region = raw_s3.region.clone().unwrap_or_else(|| "us-east-1".into());
            if region.is_empty()
                || !region
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                v.error(key("region"), "must be a region name such as \"us-east-1\"");
            }
            if !access_key_id.is_empty() && !access_key_id.chars().all(|c| c.is_ascii_graphic()) {
                v.error(
                    key("access_key_id"),
                    "must be printable ASCII without spaces",
                );
            }
            let ca = v.existing_file(&key("ca"), &raw_s3.ca);
            let prefix = match normalise_s3_prefix(raw_s3.prefix.as_deref().unwrap_or("")) {
                Ok(prefix) => prefix,
                Err(e) => {
                    v.error(key("prefix"), e);
                    String::new()
                }
            };
            s3.insert(
                name.clone(),
                S3Config {
                    endpoint,
                    bucket,
                    region,
                    access_key_id,
                    secret_access_key: Secret(secret),
                    path_style,
                    ca,
                    prefix,
                },
            );
        }

        let auth = auth_config(&mut v, raw.auth.as_ref());

        let mut routes = Vec::new();
        for (i, r) in raw.route.iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            let name = r.pattern.clone().unwrap_or_default();
            let pattern = match r.pattern.as_deref().map(Pattern::parse) {
                None => {
                    v.error(key("match"), "is required");
                    None
                }
                Some(Err(e)) => {
                    v.error(key("match"), e);
                    None
                }
                Some(Ok(p)) => Some(p),
            };
            let webhook = match &r.webhook {
                None => {
                    v.error(key("webhook"), "is required");
                    String::new()
                }
                Some(url) => {
                    if let Err(e) = check_url(url) {
                        v.error(key("webhook"), e);
                    }
                    url.clone()
                }
            };
            let webhook_key = match &r.webhook_secret {
                None => {
                    v.error(key("webhook_secret"), "is required");
                    None
                }
                Some(value) => v.secret(&key("webhook_secret"), value).and_then(|bytes| {
                    match decode_webhook_secret(&bytes) {
                        Ok(k) => Some(k),
                        Err(e) => {
                            v.error(key("webhook_secret"), e);
                            None
                        }
                    }
                }),
            };
            let webhook_ca = v.existing_file(&key("webhook_ca"), &r.webhook_ca);
            let webhook_budget = v.duration(
                &key("webhook_budget"),
                &r.webhook_budget,
                DEFAULT_WEBHOOK_BUDGET,
            );
            if webhook_budget > MAX_WEBHOOK_BUDGET {
                v.error(
                    key("webhook_budget"),
                    "must be at most 5m: the sending MTA waits 10 minutes at most for the reply",
                );
            }
            let attachments = match r.attachments.as_deref() {
                None | Some("inline") => AttachmentMode::Inline,
                Some("s3") => AttachmentMode::S3,
                Some(_) => {
                    v.error(key("attachments"), "must be \"inline\" or \"s3\"");
                    AttachmentMode::Inline
                }
            };
            let raw_to_s3 = r.raw_to_s3.unwrap_or(false);
            match (&r.s3, attachments, raw_to_s3) {
                (Some(name), _, _) if !raw.s3.contains_key(name) => {
                    v.error(key("s3"), format!("no [s3.{name}] table is defined"));
                }
                (None, AttachmentMode::S3, _) => {
                    v.error(key("s3"), "required when attachments = \"s3\"");
                }
                (None, _, true) => {
                    v.error(key("s3"), "required when raw_to_s3 = true");
                }
                _ => {}
            }
            let dmarc = match r.dmarc.as_deref() {
                None | Some("report") => DmarcMode::Report,
                Some("enforce") => DmarcMode::Enforce,
                Some(_) => {
                    v.error(key("dmarc"), "must be \"report\" or \"enforce\"");
                    DmarcMode::Report
                }
            };
            if let (Some(pattern), Some(webhook_key)) = (pattern, webhook_key) {
                routes.push(Route {
                    name,
                    pattern,
                    webhook,
                    webhook_key: Secret(webhook_key),
                    webhook_ca,
                    webhook_budget,
                    attachments,
                    s3: r.s3.clone(),
                    raw_to_s3,
                    dmarc,
                });
            }
        }
        for (i, a) in routes.iter().enumerate() {
            if routes[..i].iter().any(|b| b.pattern == a.pattern) {
                v.error(
                    format!("route[{i}].match"),
                    "duplicates an earlier route's pattern (the first match wins)",
                );
            }
        }

        let update = update_config(&mut v, raw.update.clone().unwrap_or_default(), &data_dir);

        if !v.errors.is_empty() {
            return Err(ConfigErrors(v.errors));
        }
        Ok(Config {
            auth,
            node: NodeConfig {
                hostname,
                data_dir,
                master_key,
                runtime_dir,
            },
            smtp,
            http,
            retention,
            routes,
            s3,
            update,
        })
    }
}

/// `[auth]`: resolver addresses (`IP` or `IP:port`, port 53 by default) and the timeout.
fn auth_config(v: &mut Validator, raw: Option<&RawAuth>) -> AuthConfig {
    let Some(raw) = raw else {
        return AuthConfig::default();
    };
    let resolvers = raw.resolvers.as_ref().map(|list| {
        if list.is_empty() {
            v.error(
                "auth.resolvers",
                "needs at least one address (leave it out for the system's resolvers)",
            );
        }
        let mut addrs = Vec::new();
        for (i, text) in list.iter().enumerate() {
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Some(addr) => addrs.push(addr),
                None => v.error(
                    format!("auth.resolvers[{i}]"),
                    "expected IP or IP:port, e.g. \"127.0.0.1:53\"",
                ),
            }
        }
        addrs
    });
    let timeout = v.duration("auth.timeout", &raw.timeout, DEFAULT_AUTH_TIMEOUT);
    if timeout > MAX_AUTH_TIMEOUT {
        v.error(
            "auth.timeout",
            "must be at most 60s: the sender waits for the reply meanwhile",
        );
    }
    AuthConfig { resolvers, timeout }
}

/// Only `[update]` of a file (and the `node.data_dir` its defaults derive from), for root's
/// `mxnode update …`: the rest of the node's configuration (its secrets among it, which root's
/// installer unit is not given) is not its concern. Unknown keys anywhere are still errors.
pub fn update_only(raw: &RawConfig) -> Result<UpdateConfig, ConfigErrors> {
    let mut v = Validator { errors: Vec::new() };
    let data_dir = PathBuf::from(
        raw.node
            .data_dir
            .clone()
            .unwrap_or_else(|| "/var/lib/mxnode".into()),
    );
    let update = update_config(&mut v, raw.update.clone().unwrap_or_default(), &data_dir);
    if !v.errors.is_empty() {
        return Err(ConfigErrors(v.errors));
    }
    Ok(update)
}

/// Validates `[update]`.
fn update_config(v: &mut Validator, raw: RawUpdate, data_dir: &Path) -> UpdateConfig {
    let channel = raw.channel.map(|url| {
        if let Err(e) = check_url(&url) {
            v.error("update.channel", e);
        }
        // Artifact URLs are relative to the channel: make it a directory.
        if url.ends_with('/') {
            url
        } else {
            format!("{url}/")
        }
    });
    let maintenance_window = raw.maintenance_window.as_deref().and_then(|text| {
        crate::update::install::MaintenanceWindow::parse(text)
            .map_err(|e| v.error("update.maintenance_window", e))
            .ok()
    });
    let compatible = raw
        .compatible
        .unwrap_or_else(|| crate::update::DEFAULT_COMPATIBLE.into());
    if compatible.is_empty() {
        v.error("update.compatible", "must not be empty");
    }
    let check_interval = v.duration(
        "update.check_interval",
        &raw.check_interval,
        DEFAULT_UPDATE_CHECK_INTERVAL,
    );
    if check_interval < MIN_UPDATE_CHECK_INTERVAL {
        v.error("update.check_interval", "must be at least 10s");
    }
    UpdateConfig {
        keys: PathBuf::from(raw.keys.unwrap_or_else(|| DEFAULT_UPDATE_KEYS.into())),
        channel,
        channel_ca: v.existing_file("update.channel_ca", &raw.channel_ca),
        check_interval,
        auto_apply: raw.auto_apply.unwrap_or(true),
        maintenance_window,
        state_dir: PathBuf::from(
            raw.state_dir
                .unwrap_or_else(|| DEFAULT_UPDATE_STATE_DIR.into()),
        ),
        spool_dir: raw
            .spool_dir
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("update")),
        compatible,
    }
}

/// A master key is 32 raw bytes or 64 hex digits.
fn decode_master_key(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() == 32 {
        return Some(bytes.to_vec());
    }
    if bytes.len() == 64 {
        let text = std::str::from_utf8(bytes).ok()?;
        return (0..32)
            .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
    }
    None
}

/// Standard Webhooks: the key is the base64-decoded part after `whsec_`.
pub fn decode_webhook_secret(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "must be text".to_string())?;
    let encoded = text
        .strip_prefix("whsec_")
        .ok_or_else(|| "must start with `whsec_` (Standard Webhooks format)".to_string())?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "the part after `whsec_` must be base64".to_string())?;
    if key.len() < MIN_WEBHOOK_KEY_BYTES {
        return Err(format!(
            "the key after `whsec_` must decode to at least {MIN_WEBHOOK_KEY_BYTES} bytes"
        ));
    }
    Ok(key)
}

/// Accepts `https://host[:port]/…`, and `http://` only to a loopback host: the rule of every
/// outbound client, owned by [`crate::net`].
pub use crate::net::check_url;

/// Whether `host[:port]` names an IP address rather than a DNS name.
fn is_ip_authority(authority: &str) -> bool {
    if authority.starts_with('[') {
        return true;
    }
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    host.parse::<IpAddr>().is_ok()
}

/// Longest configured S3 key prefix in bytes.
pub const MAX_S3_PREFIX_BYTES: usize = 256;

/// Checks a bucket name. Virtual-hosted addressing puts it into a host name, so it must follow
/// S3's DNS-compatible rules (3–63 of `a-z 0-9 . -`, starting and ending with a letter or
/// digit); path-style also allows the uppercase letters and `_` of older stores' relaxed names.
pub fn check_bucket_name(bucket: &str, path_style: bool) -> Result<(), String> {
    let allowed = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '.'
            || c == '-'
            || (path_style && (c.is_ascii_uppercase() || c == '_'))
    };
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&bucket.len())
        || !bucket.chars().all(allowed)
        || !ends_ok(bucket.chars().next())
        || !ends_ok(bucket.chars().last())
        || bucket.contains("..")
    {
        return Err(if path_style {
            "must be 3 to 63 letters, digits, '.', '-' or '_', starting and ending with a letter \
             or digit"
                .into()
        } else {
            "must be 3 to 63 lowercase letters, digits, '.' or '-', starting and ending with a \
             letter or digit (virtual-hosted addressing puts it into a host name)"
                .into()
        });
    }
    Ok(())
}

/// Checks and normalises a configured key prefix: surrounding `/` are dropped; segments must
/// be non-empty, not `.` or `..`, and free of control characters and `\`.
pub fn normalise_s3_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.len() > MAX_S3_PREFIX_BYTES {
        return Err(format!("must be at most {MAX_S3_PREFIX_BYTES} bytes"));
    }
    for segment in trimmed.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err("must not contain empty, `.` or `..` segments".into());
        }
        if segment.chars().any(|c| c.is_control() || c == '\\') {
            return Err("must not contain control characters or `\\`".into());
        }
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn minimal() -> String {
        format!(
            r#"
[node]
hostname = "mx1.example.test"
data_dir = "/tmp/mxnode-config-test"

[smtp]
listen = ["127.0.0.1:2525"]

[[route]]
match = "*@in.example.test"
webhook = "https://hooks.example.test/email"
webhook_secret = "{SECRET}"
"#
        )
    }

    /// Parses and validates; returns the rendered errors.
    fn errors(text: &str) -> Vec<String> {
        match RawConfig::parse(text).and_then(Config::from_raw) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn auth_keys_default_validate_and_name_every_problem() {
        let config =
            Config::from_raw(RawConfig::parse(&minimal()).expect("parses")).expect("valid");
        assert_eq!(config.auth, AuthConfig::default());
        assert_eq!(config.routes[0].dmarc, DmarcMode::Report);

        let text = format!(
            "[auth]\nresolvers = [\"127.0.0.1:5353\", \"::1\"]\ntimeout = \"1500ms\"\n{}dmarc = \"enforce\"\n",
            minimal()
        );
        let config = Config::from_raw(RawConfig::parse(&text).expect("parses")).expect("valid");
        assert_eq!(
            config.auth.resolvers,
            Some(vec![
                "127.0.0.1:5353".parse().expect("addr"),
                "[::1]:53".parse().expect("addr")
            ])
        );
        assert_eq!(config.auth.timeout, Duration::from_millis(1500));
        assert_eq!(config.routes[0].dmarc, DmarcMode::Enforce);

        let text = format!(
            "[auth]\nresolvers = [\"dns.example\"]\ntimeout = \"2m\"\nresolver = 1\n{}dmarc = \"reject\"\n",
            minimal()
        );
        assert_eq!(errors(&text), ["auth.resolver: unknown key"]);
        let text = text.replace("resolver = 1\n", "");
        assert_eq!(
            errors(&text),
            [
                "auth.resolvers[0]: expected IP or IP:port, e.g. \"127.0.0.1:53\"",
                "auth.timeout: must be at most 60s: the sender waits for the reply meanwhile",
                "route[0].dmarc: must be \"report\" or \"enforce\"",
            ]
        );
    }

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let config =
            Config::from_raw(RawConfig::parse(&minimal()).expect("parses")).expect("valid");
        assert_eq!(config.smtp.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
        assert_eq!(config.routes[0].webhook_budget, DEFAULT_WEBHOOK_BUDGET);
        assert_eq!(config.routes[0].attachments, AttachmentMode::Inline);
        assert!(config.smtp.tls.is_none());
    }

    /// Issue 16 (budget pinning): the per-address share and the total data time have
    /// defaults derived from the other limits and are validated against them by name.
    #[test]
    fn budget_share_and_total_data_time_default_sanely_and_are_checked_against_their_peers() {
        let config =
            Config::from_raw(RawConfig::parse(&minimal()).expect("parses")).expect("valid");
        assert_eq!(config.smtp.max_in_flight_per_ip, DEFAULT_MAX_IN_FLIGHT / 8);
        assert_eq!(config.smtp.data_total_timeout, DEFAULT_DATA_TOTAL_TIMEOUT);
        let small = minimal().replace("[smtp]\n", "[smtp]\nmax_in_flight = \"30MiB\"\n");
        let config = Config::from_raw(RawConfig::parse(&small).expect("parses")).expect("valid");
        assert_eq!(
            config.smtp.max_in_flight_per_ip, DEFAULT_MAX_MESSAGE_SIZE,
            "never less than one largest message"
        );
        let text = minimal().replace(
            "[smtp]\n",
            "[smtp]\nmax_in_flight_per_ip = \"1MiB\"\ndata_timeout = \"5m\"\ndata_total_timeout = \"1m\"\n",
        );
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e
                .starts_with("smtp.max_in_flight_per_ip: must be at least smtp.max_message_size")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e
                    .starts_with("smtp.data_total_timeout: must be at least smtp.data_timeout")),
            "{errs:?}"
        );
    }

    /// Issue 16: the header and address bounds default, parse, and name their key when wrong.
    #[test]
    fn header_limits_default_validate_and_name_their_key_issue_16() {
        let config =
            Config::from_raw(RawConfig::parse(&minimal()).expect("parses")).expect("valid");
        assert_eq!(config.smtp.max_header_line, crate::message::MAX_HEADER_LINE);
        assert_eq!(
            config.smtp.max_header_field,
            crate::message::MAX_HEADER_FIELD
        );
        assert_eq!(
            config.smtp.max_header_section,
            crate::message::MAX_HEADER_SECTION
        );
        assert_eq!(config.smtp.max_addresses, crate::message::MAX_ADDRESSES);

        let set = |keys: &str| minimal().replace("[smtp]\n", &format!("[smtp]\n{keys}\n"));
        let text = set(
            "max_header_line = \"4KiB\"\nmax_header_field = \"8KiB\"\nmax_header_section = \"64KiB\"\nmax_addresses = 50",
        );
        let config = Config::from_raw(RawConfig::parse(&text).expect("parses")).expect("valid");
        assert_eq!(config.smtp.max_header_line, 4096);
        assert_eq!(config.smtp.max_header_field, 8192);
        assert_eq!(config.smtp.max_header_section, 65536);
        assert_eq!(config.smtp.max_addresses, 50);

        assert_eq!(
            errors(&set(
                "max_header_line = 500\nmax_header_section = 0\nmax_addresses = 0"
            )),
            [
                "smtp.max_header_section: must be greater than zero",
                "smtp.max_addresses: must be greater than zero",
                "smtp.max_header_line: must be at least 1000 octets (RFC 5322 allows 998 per line)",
            ]
        );
        assert_eq!(
            errors(&set(
                "max_header_line = \"64KiB\"\nmax_header_field = \"32KiB\"\nmax_header_section = \"16KiB\""
            )),
            [
                "smtp.max_header_field: must be at least smtp.max_header_line, or no field of the longest line would fit",
                "smtp.max_header_section: must be at least smtp.max_header_field, or no block with the largest field would fit",
            ]
        );
    }

    /// Issue 16: `http.allow_from` takes networks and single addresses, and names a bad entry.
    #[test]
    fn management_networks_parse_and_a_bad_entry_is_named() {
        let with = |list: &str| format!("{}\n[http]\nallow_from = {list}\n", minimal());
        let config = Config::from_raw(
            RawConfig::parse(&with(r#"["10.0.0.0/8", "fd00::/8", "192.0.2.7"]"#)).expect("parses"),
        )
        .expect("valid");
        assert_eq!(config.http.allow_from.len(), 3);
        assert!(
            config.http.allow_from[2]
                .contains(&"192.0.2.7".parse::<std::net::IpAddr>().expect("an address"))
        );
        assert_eq!(
            errors(&with(r#"["10.0.0.0/8", "10.0.0.0/33"]"#)),
            [
                "http.allow_from[1]: expected an address or a network, e.g. \"10.0.0.0/8\" or \"fd00::/8\""
            ]
        );
        assert!(errors(&with("[]"))[0].starts_with("http.allow_from: an empty list"));
    }

    #[test]
    fn every_unknown_key_is_named() {
        let text = minimal().replace("[smtp]\n", "[smtp]\nmax_mesage_size = \"1MiB\"\nfoo = 1\n")
            + "\n[bogus]\nx = 1\n";
        let errs = errors(&text);
        assert!(
            errs.contains(&"smtp.max_mesage_size: unknown key".to_string()),
            "{errs:?}"
        );
        assert!(
            errs.contains(&"smtp.foo: unknown key".to_string()),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.starts_with("bogus")), "{errs:?}");
    }

    #[test]
    fn unknown_key_inside_a_route_is_named_with_its_index() {
        let text = minimal() + "webhok = \"https://x.test/\"\n";
        assert_eq!(
            errors(&text),
            vec!["route[0].webhok: unknown key".to_string()]
        );
    }

    #[test]
    fn type_error_names_the_line_but_not_the_value() {
        let text = minimal().replace("listen = [\"127.0.0.1:2525\"]", "listen = 5");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("line 7:"), "{errs:?}");
    }

    #[test]
    fn all_semantic_problems_are_listed_at_once() {
        let text = minimal()
            .replace(
                "https://hooks.example.test/email",
                "http://hooks.example.test/email",
            )
            .replace(SECRET, "secret")
            .replace("[smtp]\n", "[smtp]\nmax_message_size = \"12 parsecs\"\n");
        let errs = errors(&text);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("route[0].webhook: must use https://"))
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("route[0].webhook_secret: must start with `whsec_`"))
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("smtp.max_message_size: unknown size unit"))
        );
    }

    #[test]
    fn errors_never_echo_secret_values() {
        let text = minimal().replace(SECRET, "whsec_!!!not-base64-topsecret");
        let errs = errors(&text).join("\n");
        assert!(errs.contains("route[0].webhook_secret"), "{errs}");
        assert!(!errs.contains("topsecret"), "{errs}");
    }

    #[test]
    fn secrets_resolve_from_env_and_file() {
        let dir = std::env::temp_dir().join(format!("mxnode-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("secret");
        std::fs::write(&file, format!("{SECRET}\n")).expect("write secret");
        let text = minimal().replace(SECRET, &format!("file:{}", file.display()));
        assert!(errors(&text).is_empty());
        let text = minimal().replace(SECRET, "env:MXNODE_TEST_SURELY_UNSET_VARIABLE");
        assert_eq!(
            errors(&text),
            vec![
                "route[0].webhook_secret: environment variable MXNODE_TEST_SURELY_UNSET_VARIABLE is not set"
            ]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn plain_http_api_is_allowed_only_on_loopback() {
        let with_http = |listen: &str| minimal() + &format!("\n[http]\nlisten = \"{listen}\"\n");
        let config = |listen: &str| {
            Config::from_raw(RawConfig::parse(&with_http(listen)).expect("parses")).expect("valid")
        };
        let loopback = config("127.0.0.1:8443");
        assert!(loopback.http.tls.is_none() && !loopback.http.self_signed);
        let public = config("0.0.0.0:443");
        assert!(public.http.self_signed);
        let tls = public.http.tls.expect("self-signed files");
        assert!(tls.cert.starts_with(&public.node.data_dir), "{tls:?}");
    }

    #[test]
    fn http_webhook_is_allowed_only_to_loopback() {
        assert!(check_url("http://127.0.0.1:8080/x").is_ok());
        assert!(check_url("http://localhost:8080/x").is_ok());
        assert!(check_url("http://[::1]:8080/x").is_ok());
        assert!(check_url("http://10.0.0.1/x").is_err());
        assert!(check_url("ftp://example.test/").is_err());
        assert!(check_url("https://hooks.example.test/email").is_ok());
    }

    #[test]
    fn sizes_and_durations_parse() {
        let s = |t: &str| parse_size(&SizeValue::Text(t.into()));
        assert_eq!(s("25MiB"), Ok(25 << 20));
        assert_eq!(s("10 MB"), Ok(10_000_000));
        assert_eq!(s("512"), Ok(512));
        assert!(s("MiB").is_err());
        assert!(s("5 parsecs").is_err());
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn patterns_match_case_insensitively() {
        let domain = Pattern::parse("*@In.Example.Test").expect("valid");
        assert!(domain.matches("bob@in.example.test"));
        assert!(domain.matches("Bob@IN.EXAMPLE.TEST"));
        assert!(!domain.matches("bob@example.test"));
        assert!(!domain.matches("bob@evil.in.example.test"));
        let exact = Pattern::parse("Bob@in.example.test").expect("valid");
        assert!(exact.matches("bob@in.example.test"));
        assert!(!exact.matches("alice@in.example.test"));
        assert!(Pattern::parse("in.example.test").is_err());
        assert!(Pattern::parse("a*@x.test").is_err());
    }

    /// `minimal()` with an `[s3.primary]` table holding `extra` lines, and the route's S3 keys.
    fn with_s3(route_keys: &str, extra: &str) -> String {
        minimal()
            + route_keys
            + "\n[s3.primary]\nendpoint = \"https://s3.example.test:9000\"\nbucket = \"mail\"\n\
               access_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = \"s3cr3t\"\n"
            + extra
    }

    #[test]
    fn s3_route_with_a_connection_is_valid_with_defaults() {
        let text = with_s3("attachments = \"s3\"\ns3 = \"primary\"\n", "");
        let config = Config::from_raw(RawConfig::parse(&text).expect("parses")).expect("valid");
        assert_eq!(config.routes[0].attachments, AttachmentMode::S3);
        assert!(!config.routes[0].raw_to_s3);
        let s3 = &config.s3["primary"];
        assert_eq!(s3.region, "us-east-1");
        assert!(s3.path_style);
        assert_eq!(s3.prefix, "");
        assert!(s3.ca.is_none());
    }

    #[test]
    fn s3_prefix_is_normalised() {
        let text = with_s3(
            "attachments = \"s3\"\ns3 = \"primary\"\nraw_to_s3 = true\n",
            "prefix = \"/mail/in/\"\n",
        );
        let config = Config::from_raw(RawConfig::parse(&text).expect("parses")).expect("valid");
        assert_eq!(config.s3["primary"].prefix, "mail/in");
        assert!(config.routes[0].raw_to_s3);
    }

    #[test]
    fn raw_to_s3_needs_a_connection() {
        let text = minimal() + "raw_to_s3 = true\n";
        assert_eq!(
            errors(&text),
            vec!["route[0].s3: required when raw_to_s3 = true".to_string()]
        );
    }

    #[test]
    fn every_s3_problem_is_named_by_its_key() {
        let text = with_s3(
            "attachments = \"s3\"\ns3 = \"primary\"\n",
            "prefix = \"a/../b\"\nca = \"/surely/missing/ca.pem\"\nregion = \"us east\"\n\
             path_style = false\n",
        )
        .replace("bucket = \"mail\"", "bucket = \"Mail_Box\"")
        .replace(
            "https://s3.example.test:9000",
            "https://s3.example.test/bucket",
        );
        let errs = errors(&text);
        for key in [
            "s3.primary.prefix:",
            "s3.primary.ca:",
            "s3.primary.region:",
            "s3.primary.bucket:",
            "s3.primary.endpoint:",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(key)), "{key} in {errs:?}");
        }
        assert_eq!(errs.len(), 5, "{errs:?}");
    }

    #[test]
    fn virtual_hosted_addressing_needs_a_dns_name() {
        let text = with_s3(
            "attachments = \"s3\"\ns3 = \"primary\"\n",
            "path_style = false\n",
        )
        .replace("https://s3.example.test:9000", "http://127.0.0.1:9000");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("s3.primary.path_style:"), "{errs:?}");
    }

    #[test]
    fn s3_route_needs_a_defined_connection() {
        let text = minimal() + "attachments = \"s3\"\ns3 = \"primary\"\n";
        let errs = errors(&text);
        assert!(
            errs.iter()
                .any(|e| e == "route[0].s3: no [s3.primary] table is defined"),
            "{errs:?}"
        );
    }

    #[test]
    fn update_table_defaults_and_every_problem_by_key() {
        let config = RawConfig::parse(&minimal())
            .and_then(Config::from_raw)
            .expect("valid");
        let u = &config.update;
        assert_eq!(u.keys, PathBuf::from(DEFAULT_UPDATE_KEYS));
        assert_eq!(u.channel, None);
        assert_eq!(u.check_interval, DEFAULT_UPDATE_CHECK_INTERVAL);
        assert!(u.auto_apply);
        assert_eq!(u.maintenance_window, None);
        assert_eq!(u.state_dir, PathBuf::from(DEFAULT_UPDATE_STATE_DIR));
        assert_eq!(u.spool_dir, PathBuf::from("/tmp/mxnode-config-test/update"));
        assert_eq!(u.compatible, crate::update::DEFAULT_COMPATIBLE);

        let text = minimal()
            + "[update]\nchannel = \"https://updates.example.test/stable\"\n\
               maintenance_window = \"02:00-04:00\"\ncheck_interval = \"30m\"\n";
        let config = RawConfig::parse(&text)
            .and_then(Config::from_raw)
            .expect("valid");
        assert_eq!(
            config.update.channel.as_deref(),
            Some("https://updates.example.test/stable/"),
            "the channel is a directory"
        );
        assert!(config.update.maintenance_window.is_some());

        let text = minimal()
            + "[update]\nchannel = \"http://updates.example.test/\"\n\
               channel_ca = \"/nonexistent/ca.pem\"\ncheck_interval = \"1s\"\n\
               maintenance_window = \"2am\"\ncompatible = \"\"\nmirror = \"x\"\n";
        assert_eq!(errors(&text), ["update.mirror: unknown key"]);
        let text = text.replace("mirror = \"x\"\n", "");
        let keys: Vec<String> = errors(&text)
            .iter()
            .map(|e| e.split(':').next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "update.channel",
                "update.maintenance_window",
                "update.compatible",
                "update.check_interval",
                "update.channel_ca",
            ]
        );
    }

    #[test]
    fn bucket_names_follow_the_addressing_rules() {
        for ok in ["mail", "mail-attachments", "a.b.c", "123"] {
            assert_eq!(check_bucket_name(ok, false), Ok(()), "{ok}");
        }
        for bad in [
            "ab", "-mail", "mail-", "Mail", "ma_il", "a..b", "a/b", "a b", "",
        ] {
            assert!(check_bucket_name(bad, false).is_err(), "{bad}");
        }
        assert_eq!(check_bucket_name("Legacy_Bucket", true), Ok(()));
        assert!(check_bucket_name("a/b", true).is_err());
        assert!(check_bucket_name(&"a".repeat(64), true).is_err());
    }

    fn check_prefix(prefix: &str, expect: Result<&str, ()>) {
        let got = normalise_s3_prefix(prefix);
        match expect {
            Ok(e) => assert_eq!(got.as_deref(), Ok(e), "{prefix:?}"),
            Err(()) => assert!(got.is_err(), "{prefix:?} should be refused: {got:?}"),
        }
    }

    #[test]
    fn prefixes_are_normalised_or_refused() {
        check_prefix("", Ok(""));
        check_prefix("/", Ok(""));
        check_prefix("mail", Ok("mail"));
        check_prefix("/mail/in/", Ok("mail/in"));
        check_prefix("mail//in", Err(()));
        check_prefix("mail/../x", Err(()));
        check_prefix("./x", Err(()));
        check_prefix("a\nb", Err(()));
        check_prefix("a\\b", Err(()));
        check_prefix(&"p".repeat(MAX_S3_PREFIX_BYTES + 1), Err(()));
    }
}
