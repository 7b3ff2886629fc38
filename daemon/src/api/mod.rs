//! The REST API's controller (DESIGN §7): authentication with scoped API keys, every route's
//! behaviour, its input validation, its audit events and its JSON shapes.
//!
//! It knows no HTTP types: `http::api` turns a request into one call here (the caller's
//! `Authorization` header as a string, the query values, the body bytes) and renders the
//! typed result or [`ApiError`]. The controller runs on any [`Store`] (tests use the in-memory
//! twin) and reads time only through its clock.
//!
//! It must never return or log a secret (API key secrets exist only in the response to their
//! creation; settings secrets are masked), nor put a recipient address into a log line or an
//! audit event (erasure and export audit counts, never the address).
//!
//! All methods block on the store; async callers run them on `smol::unblock`.

pub mod admin;
pub mod emails;
pub mod keys;
pub mod recovery;
pub mod settings;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod update;

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::{Format, Metrics};
use crate::store::{ApiKeyRecord, AuditEvent, Store, StoreError, new_id, unix_ms};

pub use settings::SettingsBackend;

/// Where the controller reads the current time (injectable for tests).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Failed authentications recorded (log line and audit event) per [`AUTH_FAILURE_WINDOW`];
/// beyond it they are counted and summarised once, so a key-guessing client cannot flood the
/// journal or the audit log.
const MAX_AUTH_FAILURES_RECORDED: u32 = 20;
/// The window of [`MAX_AUTH_FAILURES_RECORDED`].
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// A permission an API key can hold (DESIGN §7). `admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    MetricsRead,
    EmailsRead,
    EmailsDelete,
    AuditRead,
    SettingsRead,
    SettingsWrite,
    UpdateRead,
    UpdateWrite,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::MetricsRead,
        Scope::EmailsRead,
        Scope::EmailsDelete,
        Scope::AuditRead,
        Scope::SettingsRead,
        Scope::SettingsWrite,
        Scope::UpdateRead,
        Scope::UpdateWrite,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::MetricsRead => "metrics:read",
            Scope::EmailsRead => "emails:read",
            Scope::EmailsDelete => "emails:delete",
            Scope::AuditRead => "audit:read",
            Scope::SettingsRead => "settings:read",
            Scope::SettingsWrite => "settings:write",
            Scope::UpdateRead => "update:read",
            Scope::UpdateWrite => "update:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with one input field, e.g. `{"key": "limit", "message": "must be 1..=500"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub key: String,
    pub message: String,
}

impl FieldError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Why a request failed: the HTTP status, a stable machine-readable code, a sentence for
/// people, and for validation errors every problem by field. Rendered as
/// `{"error": {"code", "message", "fields"?}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<FieldError>,
    /// Seconds after which a retry may succeed (`Retry-After` on 429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
            retry_after: None,
        }
    }

    /// The same error, telling the client to retry after `seconds` (`Retry-After`).
    pub fn retry_after(self, seconds: u64) -> ApiError {
        ApiError {
            retry_after: Some(seconds.max(1)),
            ..self
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(401, "unauthorized", message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(404, "not_found", format!("no such {what}"))
    }

    /// 400 naming every problem by field.
    pub fn invalid(
        code: &'static str,
        message: impl Into<String>,
        fields: Vec<FieldError>,
    ) -> ApiError {
        ApiError {
            fields,
            ..ApiError::new(400, code, message)
        }
    }

    /// A failure on our side; the details went to the log, never to the client.
    pub fn internal() -> ApiError {
        ApiError::new(500, "internal", "internal error; see the node's log")
    }

    /// The JSON body: `{"error": {"code", "message", "fields"?}}`.
    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if !self.fields.is_empty() {
            error["fields"] = serde_json::to_value(&self.fields).unwrap_or_default();
        }
        serde_json::json!({ "error": error })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::BadCursor => ApiError::invalid(
                "invalid_parameter",
                "invalid cursor: use the `next` value of the previous page",
                vec![FieldError::new("cursor", "not a cursor of this listing")],
            ),
            other => {
                // Store errors name keys and engines, never stored values.
                log::error!("api: store failure: {other}");
                ApiError::internal()
            }
        }
    }
}

/// Who is calling: the raw `Authorization` header and, for the log, the client address; for
/// the console, the session cookie and what the CSRF check needs.
#[derive(Clone, Default)]
pub struct Caller {
    pub authorization: Option<String>,
    pub remote: Option<IpAddr>,
    /// The console's session cookie value (used only when no `Authorization` is sent).
    pub session: Option<String>,
    /// The `X-CSRF-Token` header.
    pub csrf: Option<String>,
    /// The `Origin` header, when the browser sent one.
    pub origin: Option<String>,
    /// The `Host` header (`host[:port]`), which a same-origin `Origin` must name.
    pub host: Option<String>,
    /// Whether the request changes state (any method but GET/HEAD/OPTIONS): sessions then
    /// need the CSRF token.
    pub state_changing: bool,
}

impl Caller {
    /// A caller presenting `key` as a bearer token.
    pub fn bearer(key: &str) -> Caller {
        Caller {
            authorization: Some(format!("Bearer {key}")),
            ..Caller::default()
        }
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The header carries a secret.
        f.debug_struct("Caller")
            .field("authorization", &self.authorization.as_ref().map(|_| "…"))
            .field("remote", &self.remote)
            .field("session", &self.session.as_ref().map(|_| "…"))
            .field("state_changing", &self.state_changing)
            .finish_non_exhaustive()
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// The audit log's `actor`.
    pub fn actor(&self) -> String {
        if let Some(user) = self.key_id.strip_prefix(admin::SESSION_PRINCIPAL_PREFIX) {
            return format!("admin:{user}");
        }
        format!("key:{}", self.key_id)
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes
            .iter()
            .any(|s| *s == scope || *s == Scope::Admin)
    }
}

/// `GET /healthz`: liveness, nothing secret.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

/// Failed authentications in the current window.
#[derive(Debug, Default)]
struct FailureWindow {
    started_ms: u64,
    recorded: u32,
    suppressed: u64,
}

/// The controller.
pub struct Api {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    settings: Arc<dyn SettingsBackend>,
    clock: Clock,
    /// Rate limit of failed-authentication records.
    failures: Mutex<FailureWindow>,
    /// Setup mode, the console's sessions and login lockouts.
    admin: admin::AdminState,
    /// The node's update agent, once connected.
    updater: std::sync::OnceLock<Arc<crate::update::agent::Updater>>,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// RFC 3339 UTC with milliseconds for a unix-milliseconds time (clamped to year 9999, the last
/// year RFC 3339 can write).
pub fn rfc3339(ms: u64) -> String {
    const MAX_RFC3339_MS: u64 = 253_402_300_799_999;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.min(MAX_RFC3339_MS)))
        .to_string()
}

impl Api {
    /// A controller on the system clock.
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        settings: Arc<dyn SettingsBackend>,
    ) -> Api {
        Api::with_clock(store, metrics, settings, Arc::new(SystemTime::now))
    }

    pub fn with_clock(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        settings: Arc<dyn SettingsBackend>,
        clock: Clock,
    ) -> Api {
        Api {
            store,
            metrics,
            settings,
            clock,
            failures: Mutex::new(FailureWindow::default()),
            admin: admin::AdminState::default(),
            updater: std::sync::OnceLock::new(),
        }
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// `GET /healthz`.
    pub fn health(&self) -> Health {
        Health {
            status: "ok",
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// `GET /metrics` (`metrics:read`): samples the store size, then renders every metric.
    pub fn metrics(&self, caller: &Caller, format: Format) -> Result<String, ApiError> {
        self.authenticate(caller, Scope::MetricsRead)?;
        self.metrics.set_store_size(self.store.size_bytes());
        self.metrics.set_development_keys(self.development_keys());
        self.metrics.set_channel_stale(
            self.updater
                .get()
                .is_some_and(|updater| updater.channel_stale()),
        );
        Ok(self.metrics.render_as(format))
    }

    /// Checks the caller's key and that it holds `scope` (or `admin`).
    pub fn authenticate(&self, caller: &Caller, scope: Scope) -> Result<Principal, ApiError> {
        let Some(header) = caller.authorization.as_deref() else {
            if caller.session.is_some() {
                return self.authenticate_session(caller, scope);
            }
            return Err(ApiError::unauthorized(
                "missing API key: send `Authorization: Bearer <key>`",
            ));
        };
        let token = header
            .trim()
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            self.auth_failed(caller, None, "not a bearer token");
            return Err(ApiError::unauthorized(
                "expected `Authorization: Bearer <key>`",
            ));
        };
        let Some((id, secret)) = keys::parse(token) else {
            self.auth_failed(caller, None, "malformed key");
            return Err(ApiError::unauthorized("invalid API key"));
        };
        let record = self.store.get_api_key(id)?;
        let Some(record) = record.filter(|r| keys::secret_matches(r, secret)) else {
            self.auth_failed(caller, Some(id), "unknown key or wrong secret");
            return Err(ApiError::unauthorized("invalid API key"));
        };
        let principal = principal_of(&record);
        if !principal.has(scope) {
            self.record_failure(
                caller,
                "access.denied",
                Some(principal.actor()),
                Some(record.id.clone()),
                format!("lacks scope {scope}"),
            );
            return Err(ApiError::new(
                403,
                "forbidden",
                format!("this API key lacks the scope `{scope}`"),
            ));
        }
        Ok(principal)
    }

    fn auth_failed(&self, caller: &Caller, key_id: Option<&str>, why: &str) {
        self.record_failure(
            caller,
            "login.failed",
            None,
            key_id.map(str::to_string),
            why.to_string(),
        );
    }

    /// Logs and audits a refused request, at most [`MAX_AUTH_FAILURES_RECORDED`] per window.
    fn record_failure(
        &self,
        caller: &Caller,
        action: &str,
        actor: Option<String>,
        target: Option<String>,
        detail: String,
    ) {
        let now = unix_ms(self.now());
        let window_ms = u64::try_from(AUTH_FAILURE_WINDOW.as_millis()).unwrap_or(u64::MAX);
        let (record, summary) = {
            let mut w = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let mut summary = None;
            if now.saturating_sub(w.started_ms) >= window_ms {
                if w.suppressed > 0 {
                    summary = Some(w.suppressed);
                }
                *w = FailureWindow {
                    started_ms: now,
                    ..FailureWindow::default()
                };
            }
            let record = w.recorded < MAX_AUTH_FAILURES_RECORDED;
            if record {
                w.recorded += 1;
            } else {
                w.suppressed += 1;
            }
            (record, summary)
        };
        if let Some(count) = summary {
            self.audit_best_effort(
                "system",
                "login.failed",
                None,
                Some(format!(
                    "{count} further refused requests not recorded individually"
                )),
            );
        }
        if record {
            let remote = caller
                .remote
                .map(|ip| format!(" from {ip}"))
                .unwrap_or_default();
            log::warn!(
                "api: refused request{remote}: {detail}{}",
                target
                    .as_deref()
                    .map(|t| format!(" (key {t})"))
                    .unwrap_or_default()
            );
            let actor = actor.unwrap_or_else(|| "anonymous".to_string());
            self.audit_best_effort(&actor, action, target, Some(detail));
        }
    }

    /// Appends an audit event and sends it to the log (journald).
    fn audit(
        &self,
        actor: &str,
        action: &str,
        target: Option<String>,
        detail: Option<String>,
    ) -> Result<(), StoreError> {
        audit_event(
            self.store.as_ref(),
            self.now(),
            actor,
            action,
            target,
            detail,
        )
    }

    /// [`Api::audit`] for events that follow a change already made: a failure to record is
    /// logged loudly (the log line itself still reaches journald) but does not undo the change.
    fn audit_best_effort(
        &self,
        actor: &str,
        action: &str,
        target: Option<String>,
        detail: Option<String>,
    ) {
        if let Err(e) = self.audit(actor, action, target, detail) {
            log::error!("audit: cannot store the event {action}: {e}");
        }
    }
}

fn principal_of(record: &ApiKeyRecord) -> Principal {
    Principal {
        key_id: record.id.clone(),
        // Unknown scope names (from a newer version) grant nothing.
        scopes: record
            .scopes
            .iter()
            .filter_map(|s| Scope::parse(s))
            .collect(),
    }
}

/// Stores an audit event and logs it. Shared by the controller and the CLI.
pub fn audit_event(
    store: &dyn Store,
    now: SystemTime,
    actor: &str,
    action: &str,
    target: Option<String>,
    detail: Option<String>,
) -> Result<(), StoreError> {
    log::info!(
        "audit: {actor} {action}{}{}",
        target
            .as_deref()
            .map(|t| format!(" target={t}"))
            .unwrap_or_default(),
        detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    );
    store.append_audit(&AuditEvent {
        id: new_id("aud_", now),
        time: unix_ms(now),
        actor: actor.to_string(),
        action: action.to_string(),
        target,
        detail,
    })
}
