//! Settings changed at run time (DESIGN §5, §7): routes, S3 connections and retention, set
//! through `PUT /api/v1/settings`, persisted in the store (encrypted, as every stored value) and
//! winning over the config file.
//!
//! A settings document mirrors the TOML file: `{"routes": [...], "s3": {...}, "retention": {...}}`.
//! It is validated by exactly the same code as the file ([`Config::from_raw`]), so a problem is
//! named by its key the same way. Secrets are write-only: a document read back shows
//! [`MASK`] where a secret is set, and a document written with [`MASK`] (or without the secret)
//! keeps the stored value.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::{
    Config, ConfigError, ConfigErrors, RawConfig, RawRetention, RawRoute, RawS3, index_style,
};

/// What a secret reads back as.
pub const MASK: &str = "********";
/// The store's name for the persisted document.
pub const SETTINGS_KEY: &str = "settings";

/// The sections of the config that can change at run time.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SettingsDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<RawRoute>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<BTreeMap<String, RawS3>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RawRetention>,
}

impl SettingsDocument {
    /// Reads a document, naming every unknown key (e.g. `routes[0].webhok`).
    pub fn from_json(value: serde_json::Value) -> Result<SettingsDocument, Vec<ConfigError>> {
        let mut unknown = Vec::new();
        let document: SettingsDocument =
            serde_ignored::deserialize(value, |path| unknown.push(index_style(&path.to_string())))
                .map_err(|e| {
                    vec![ConfigError {
                        key: String::new(),
                        message: format!("invalid settings document: {e}"),
                    }]
                })?;
        if !unknown.is_empty() {
            return Err(unknown
                .into_iter()
                .map(|key| ConfigError {
                    key,
                    message: "unknown key".into(),
                })
                .collect());
        }
        Ok(document)
    }
}

/// The settings of a raw config, as a document with secrets masked.
pub fn masked_document(raw: &RawConfig) -> serde_json::Value {
    let mut routes = raw.route.clone();
    for route in &mut routes {
        if route.webhook_secret.is_some() {
            route.webhook_secret = Some(MASK.into());
        }
    }
    let mut s3 = raw.s3.clone();
    for connection in s3.values_mut() {
        if connection.secret_access_key.is_some() {
            connection.secret_access_key = Some(MASK.into());
        }
    }
    let document = SettingsDocument {
        routes: Some(routes),
        s3: Some(s3),
        retention: Some(raw.retention.clone()),
    };
    serde_json::to_value(document).unwrap_or(serde_json::Value::Null)
}

/// `base` with the sections `document` holds replaced. Masked or missing secrets are taken from
/// `base` (the route with the same `match`, the S3 connection with the same name).
pub fn merge(base: &RawConfig, document: &SettingsDocument) -> RawConfig {
    let mut merged = base.clone();
    if let Some(routes) = &document.routes {
        merged.route = routes
            .iter()
            .map(|route| {
                let mut route = route.clone();
                if route.webhook_secret.as_deref().is_none_or(|s| s == MASK) {
                    route.webhook_secret = base
                        .route
                        .iter()
                        .find(|old| old.pattern == route.pattern)
                        .and_then(|old| old.webhook_secret.clone());
                }
                route
            })
            .collect();
    }
    if let Some(s3) = &document.s3 {
        merged.s3 = s3
            .iter()
            .map(|(name, connection)| {
                let mut connection = connection.clone();
                if connection
                    .secret_access_key
                    .as_deref()
                    .is_none_or(|s| s == MASK)
                {
                    connection.secret_access_key = base
                        .s3
                        .get(name)
                        .and_then(|old| old.secret_access_key.clone());
                }
                (name.clone(), connection)
            })
            .collect();
    }
    if let Some(retention) = &document.retention {
        merged.retention = retention.clone();
    }
    merged
}

/// The prefixes of a secret *reference* (`file:/path`, `env:NAME`), which only the config file
/// may use: through the API they would make the node read any file or variable it can reach
/// (`file:/dev/zero` never ends) and answer with whether it exists (issue 16).
const SECRET_REFERENCE_PREFIXES: [&str; 2] = ["file:", "env:"];

/// Refuses a document whose secrets are `file:`/`env:` references, naming each field, before
/// anything is resolved: no file is opened and no variable read.
fn refuse_secret_references(document: &SettingsDocument) -> Result<(), Vec<ConfigError>> {
    let is_reference = |value: &Option<String>| {
        value.as_deref().is_some_and(|v| {
            SECRET_REFERENCE_PREFIXES
                .iter()
                .any(|prefix| v.trim_start().starts_with(prefix))
        })
    };
    let message = "`file:` and `env:` references are allowed only in the config file; \
                   send the secret itself (it is stored encrypted)";
    let mut errors = Vec::new();
    for (i, route) in document.routes.iter().flatten().enumerate() {
        if is_reference(&route.webhook_secret) {
            errors.push(ConfigError {
                key: format!("routes[{i}].webhook_secret"),
                message: message.into(),
            });
        }
    }
    for (name, connection) in document.s3.iter().flatten() {
        if is_reference(&connection.secret_access_key) {
            errors.push(ConfigError {
                key: format!("s3.{name}.secret_access_key"),
                message: message.into(),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Errors of the merged config, with `route[…]` renamed to the document's `routes[…]`.
pub fn document_errors(errors: ConfigErrors) -> Vec<ConfigError> {
    errors
        .0
        .into_iter()
        .map(|mut e| {
            if let Some(rest) = e.key.strip_prefix("route") {
                e.key = format!("routes{rest}");
            }
            e
        })
        .collect()
}

/// The live settings of a node: the file's raw config and what was set at run time.
#[derive(Debug)]
pub struct LiveSettings {
    /// The effective raw config (file merged with the persisted document).
    effective: Mutex<RawConfig>,
}

impl LiveSettings {
    pub fn new(effective: RawConfig) -> Self {
        LiveSettings {
            effective: Mutex::new(effective),
        }
    }

    /// The effective raw config now.
    pub fn effective(&self) -> RawConfig {
        self.effective
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Validates `document` against the effective config; on success returns the merged raw
    /// config, the built config and the document to persist (with real secrets). Nothing is
    /// changed until [`LiveSettings::commit`].
    pub fn prepare(
        &self,
        value: serde_json::Value,
    ) -> Result<(RawConfig, Config, SettingsDocument), Vec<ConfigError>> {
        let document = SettingsDocument::from_json(value)?;
        refuse_secret_references(&document)?;
        let merged = merge(&self.effective(), &document);
        let config = Config::from_raw(merged.clone()).map_err(document_errors)?;
        let persisted = SettingsDocument {
            routes: document.routes.as_ref().map(|_| merged.route.clone()),
            s3: document.s3.as_ref().map(|_| merged.s3.clone()),
            retention: document
                .retention
                .as_ref()
                .map(|_| merged.retention.clone()),
        };
        Ok((merged, config, persisted))
    }

    /// Makes `merged` the effective config.
    pub fn commit(&self, merged: RawConfig) {
        *self.effective.lock().unwrap_or_else(|p| p.into_inner()) = merged;
    }
}

/// Merges a persisted document into the file's raw config, for start-up.
pub fn apply_persisted(file: &RawConfig, persisted: &[u8]) -> Result<RawConfig, String> {
    // serde_json's message can quote the offending value (a secret): only its place is told.
    let document: SettingsDocument = serde_json::from_slice(persisted).map_err(|e| {
        format!(
            "are unreadable ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    Ok(merge(file, &document))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn file_config() -> RawConfig {
        RawConfig::parse(&format!(
            r#"
[smtp]
listen = ["127.0.0.1:2525"]
[[route]]
match = "*@in.example.test"
webhook = "https://hooks.example.test/a"
webhook_secret = "{SECRET}"
"#
        ))
        .expect("valid")
    }

    #[test]
    fn read_back_masks_every_secret() {
        let doc = masked_document(&file_config());
        assert_eq!(doc["routes"][0]["webhook_secret"], MASK);
        assert!(!doc.to_string().contains("MfKQ9r8G"));
    }

    #[test]
    fn masked_secret_keeps_the_stored_value() {
        let live = LiveSettings::new(file_config());
        let mut doc = masked_document(&live.effective());
        doc["routes"][0]["webhook"] = "https://hooks.example.test/b".into();
        let (merged, config, persisted) = live.prepare(doc).expect("valid");
        assert_eq!(merged.route[0].webhook_secret.as_deref(), Some(SECRET));
        assert_eq!(config.routes[0].webhook, "https://hooks.example.test/b");
        let stored = serde_json::to_string(&persisted).expect("json");
        assert!(
            stored.contains(SECRET),
            "the persisted document keeps the secret"
        );
    }

    #[test]
    fn a_new_route_without_a_secret_is_refused_by_key() {
        let live = LiveSettings::new(file_config());
        let doc = serde_json::json!({"routes": [
            {"match": "*@in.example.test", "webhook": "https://hooks.example.test/a"},
            {"match": "*@new.example.test", "webhook": "https://hooks.example.test/n"}
        ]});
        let errors = live.prepare(doc).expect_err("invalid");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "routes[1].webhook_secret");
    }

    #[test]
    fn routes_can_switch_to_dmarc_enforcement_and_a_wrong_mode_is_named() {
        let live = LiveSettings::new(file_config());
        let route = |mode: &str| {
            serde_json::json!({"routes": [
                {"match": "*@in.example.test", "webhook": "https://hooks.example.test/a",
                 "dmarc": mode}
            ]})
        };
        let (_, config, persisted) = live.prepare(route("enforce")).expect("valid");
        assert_eq!(config.routes[0].dmarc, crate::config::DmarcMode::Enforce);
        assert_eq!(
            persisted.routes.expect("routes")[0].dmarc.as_deref(),
            Some("enforce")
        );
        let errors = live.prepare(route("strict")).expect_err("invalid");
        assert_eq!(errors[0].key, "routes[0].dmarc");
    }

    #[test]
    fn unknown_keys_in_a_document_are_named() {
        let live = LiveSettings::new(file_config());
        let doc =
            serde_json::json!({"routes": [{"match": "*@x.test", "webhok": "x"}], "colour": 1});
        let errors = live.prepare(doc).expect_err("invalid");
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"routes[0].webhok"), "{keys:?}");
        assert!(keys.contains(&"colour"), "{keys:?}");
    }

    #[test]
    fn sections_not_in_the_document_stay_as_they_are() {
        let live = LiveSettings::new(file_config());
        let doc = serde_json::json!({"retention": {"metadata": "2h"}});
        let (merged, config, persisted) = live.prepare(doc).expect("valid");
        assert_eq!(merged.route.len(), 1);
        assert_eq!(
            config.retention.metadata,
            std::time::Duration::from_secs(7200)
        );
        assert!(persisted.routes.is_none());
    }

    #[test]
    fn issue_16_file_and_env_secret_references_are_refused_in_api_documents_without_reading_them() {
        let dir = std::env::temp_dir().join(format!("mxnode-settings-ref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // A readable file holding a valid secret: the old code resolved it and accepted it.
        let readable = dir.join("secret");
        std::fs::write(&readable, format!("{SECRET}\n")).expect("write");
        let missing = dir.join("no-such-file");
        let live = LiveSettings::new(file_config());
        for value in [
            format!("file:{}", readable.display()),
            format!("file:{}", missing.display()),
            "env:HOME".to_string(),
            " file:/dev/zero".to_string(),
        ] {
            let doc = serde_json::json!({
                "routes": [{"match": "*@in.example.test", "webhook": "https://hooks.example.test/a",
                            "webhook_secret": value}],
                "s3": {"store": {"endpoint": "https://s3.example.test", "bucket": "b",
                                 "region": "r", "access_key_id": "AKID",
                                 "secret_access_key": value}}
            });
            let errors = live
                .prepare(doc)
                .expect_err("a secret reference is refused");
            let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
            assert_eq!(
                keys,
                ["routes[0].webhook_secret", "s3.store.secret_access_key"],
                "{value}"
            );
            for e in &errors {
                // Nothing was opened: no message tells whether the file exists.
                assert!(
                    e.message.contains("only in the config file"),
                    "{}",
                    e.message
                );
                assert!(!e.message.contains("cannot read"), "{}", e.message);
                assert!(!e.message.contains(&value), "{}", e.message);
            }
        }
        // A masked secret whose stored value is a file reference (from the config file) is
        // kept: only references sent through the API are refused.
        let mut raw = file_config();
        raw.route[0].webhook_secret = Some(format!("file:{}", readable.display()));
        let live = LiveSettings::new(raw);
        let doc = masked_document(&live.effective());
        live.prepare(doc).expect("the file's own reference stays");
        std::fs::remove_dir_all(&dir).ok();
    }
}
