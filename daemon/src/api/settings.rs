//! `GET/PUT /api/v1/settings`: the [`SettingsBackend`] the controller reads and writes through,
//! secret masking, and [`FileSettings`], a read-only stand-in serving the config file.
//!
//! Secrets are write-only: whatever a backend returns, the controller masks every value under a
//! secret key ([`SECRET_KEYS`]) before it leaves the node.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{Api, ApiError, Caller, FieldError, Scope};
use crate::config::{AttachmentMode, Config, ConfigError};

/// What a set secret reads back as.
pub const MASK: &str = "********";
/// Keys whose values are secrets wherever they appear in a settings document.
pub const SECRET_KEYS: [&str; 2] = ["webhook_secret", "secret_access_key"];
/// Top-level sections of a settings document.
pub const SECTIONS: [&str; 3] = ["routes", "s3", "retention"];

/// The node's live settings (routes, S3 connections, retention).
pub trait SettingsBackend: Send + Sync {
    /// The live settings document, secrets masked ("********" when set, null when not).
    fn current(&self) -> Value;
    /// Validates and applies a new document (replaces the sections present: "routes", "s3",
    /// "retention"); secrets that are absent or "********" keep their stored value. Returns the
    /// new masked document, or every problem named by key.
    fn apply(&self, document: Value) -> Result<Value, Vec<ConfigError>>;
    /// Whether [`SettingsBackend::apply`] is supported; when not, `PUT` answers 501.
    fn writable(&self) -> bool {
        true
    }
    /// Posts a signed sample payload through route number `index`'s webhook client (the
    /// console's "send test delivery"); `None` when there is no such route.
    fn test_delivery(&self, index: usize) -> Option<TestDelivery> {
        let _ = index;
        None
    }
    /// Runs the write/read/delete probe of S3 connection `name` (the console's "probe"
    /// button, like `mxnode s3-test`); `None` when there is no such connection.
    fn probe_s3(&self, name: &str) -> Option<S3Probe> {
        let _ = name;
        None
    }
}

/// How an S3 probe went (`POST /api/v1/settings/s3/{name}/probe`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct S3Probe {
    /// Whether the probe object was written, read back intact and deleted.
    pub ok: bool,
    /// One line naming the connection and, on failure, the step and the S3 error code; never
    /// a secret.
    pub detail: String,
}

/// What the receiver answered to a test delivery (`POST /api/v1/settings/routes/{index}/test`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TestDelivery {
    /// `accepted`, `rejected` or `failed` (classified as for real mail, DESIGN §4).
    pub outcome: &'static str,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// A short, sanitised reason or error; never the payload.
    pub detail: String,
}

/// `value` with every non-null value under a [`SECRET_KEYS`] key replaced by [`MASK`].
pub fn mask_secrets(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let value = if SECRET_KEYS.contains(&key.as_str()) && !value.is_null() {
                        Value::String(MASK.into())
                    } else {
                        mask_secrets(value)
                    };
                    (key, value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(mask_secrets).collect()),
        other => other,
    }
}

/// A duration the way the config file writes it: `30s`, `5m`, `24h`, `90d`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        // `24h` reads better than `1d`; `90d` better than `2160h`.
        s if s % 86_400 == 0 && s > 86_400 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The settings sections of a validated config as a document, secrets masked.
pub fn document_of(config: &Config) -> Value {
    let routes: Vec<Value> = config
        .routes
        .iter()
        .map(|r| {
            json!({
                "match": r.name,
                "webhook": r.webhook,
                "webhook_secret": MASK,
                "webhook_ca": r.webhook_ca.as_ref().map(|p| p.display().to_string()),
                "webhook_budget": format_duration(r.webhook_budget),
                "attachments": match r.attachments {
                    AttachmentMode::Inline => "inline",
                    AttachmentMode::S3 => "s3",
                },
                "s3": r.s3,
                "dmarc": r.dmarc.as_str(),
            })
        })
        .collect();
    let s3: Map<String, Value> = config
        .s3
        .iter()
        .map(|(name, s)| {
            let secret = (!s.secret_access_key.expose().is_empty()).then_some(MASK);
            (
                name.clone(),
                json!({
                    "endpoint": s.endpoint,
                    "bucket": s.bucket,
                    "region": s.region,
                    "access_key_id": s.access_key_id,
                    "secret_access_key": secret,
                    "path_style": s.path_style,
                }),
            )
        })
        .collect();
    json!({
        "routes": routes,
        "s3": s3,
        "retention": {
            "metadata": format_duration(config.retention.metadata),
            "audit": format_duration(config.retention.audit),
            "store_subject": config.retention.store_subject,
        },
    })
}

/// TEMPORARY stand-in until the live settings backend (persisted in the store, applied without
/// restart) is wired in: serves the config file's settings, masked, and refuses changes
/// (`PUT` answers 501).
#[derive(Debug)]
pub struct FileSettings {
    document: Value,
}

impl FileSettings {
    pub fn new(config: &Config) -> FileSettings {
        FileSettings {
            document: document_of(config),
        }
    }
}

impl SettingsBackend for FileSettings {
    fn current(&self) -> Value {
        self.document.clone()
    }

    fn apply(&self, _document: Value) -> Result<Value, Vec<ConfigError>> {
        Err(vec![ConfigError {
            key: String::new(),
            message: "settings cannot be changed at run time by this version".into(),
        }])
    }

    fn writable(&self) -> bool {
        false
    }
}

impl Api {
    /// `GET /api/v1/settings` (`settings:read`).
    pub fn get_settings(&self, caller: &Caller) -> Result<Value, ApiError> {
        self.authenticate(caller, Scope::SettingsRead)?;
        Ok(mask_secrets(self.settings.current()))
    }

    /// `PUT /api/v1/settings` (`settings:write`): replaces the sections the document holds.
    /// `POST /api/v1/settings/routes/{index}/test` (`settings:write`): a signed sample payload
    /// through the route's webhook client; audited as `route.test`.
    pub fn test_route(&self, caller: &Caller, index: &str) -> Result<TestDelivery, ApiError> {
        let principal = self.authenticate(caller, Scope::SettingsWrite)?;
        let Some(index) = index.parse::<usize>().ok() else {
            return Err(ApiError::not_found("route"));
        };
        let Some(result) = self.settings.test_delivery(index) else {
            return Err(ApiError::not_found("route"));
        };
        self.audit_best_effort(
            &principal.actor(),
            "route.test",
            Some(format!("routes[{index}]")),
            Some(
                format!(
                    "{} {}",
                    result.outcome,
                    result.status.map(|s| s.to_string()).unwrap_or_default()
                )
                .trim()
                .to_string(),
            ),
        );
        Ok(result)
    }

    /// `POST /api/v1/settings/s3/{name}/probe` (`settings:write`): writes, reads back and
    /// deletes a probe object through the live connection `name`; audited as `s3.probe`.
    pub fn probe_s3(&self, caller: &Caller, name: &str) -> Result<S3Probe, ApiError> {
        let principal = self.authenticate(caller, Scope::SettingsWrite)?;
        let Some(result) = self.settings.probe_s3(name) else {
            return Err(ApiError::not_found("S3 connection"));
        };
        self.audit_best_effort(
            &principal.actor(),
            "s3.probe",
            Some(format!("s3.{name}")),
            Some(if result.ok { "ok" } else { "failed" }.into()),
        );
        Ok(result)
    }

    pub fn put_settings(&self, caller: &Caller, body: &[u8]) -> Result<Value, ApiError> {
        let principal = self.authenticate(caller, Scope::SettingsWrite)?;
        if !self.settings.writable() {
            return Err(ApiError::new(
                501,
                "not_implemented",
                "this node cannot change settings at run time yet; edit the config file",
            ));
        }
        let document: Value = super::emails::parse_body(body)?;
        let Some(object) = document.as_object() else {
            return Err(ApiError::invalid(
                "invalid_body",
                "the settings document must be a JSON object",
                Vec::new(),
            ));
        };
        let sections: Vec<&str> = SECTIONS
            .into_iter()
            .filter(|s| object.contains_key(*s))
            .collect();
        let target = sections.join(",");
        match self.settings.apply(document) {
            Ok(applied) => {
                self.audit_best_effort(
                    &principal.actor(),
                    "settings.update",
                    (!target.is_empty()).then_some(target),
                    None,
                );
                Ok(mask_secrets(applied))
            }
            Err(errors) => Err(ApiError::invalid(
                "invalid_settings",
                format!("{} problem(s) in the settings document", errors.len()),
                errors
                    .into_iter()
                    .map(|e| FieldError::new(e.key, e.message))
                    .collect(),
            )),
        }
    }
}
