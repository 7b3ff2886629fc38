//! API keys: their format, creation, verification, listing and revocation
//! (`/api/v1/keys`, admin only; and `mxnode api-key create` offline).
//!
//! A key is `mxk_<id>_<secret>`: `id` is 16 hex digits (public, names the key in lists and the
//! audit log), `secret` is 32 random bytes as 64 hex digits. The store keeps only the SHA-256 of
//! the secret; secrets are 256-bit random, so a fast hash is enough (no password stretching
//! needed) and comparing digests in constant time leaks nothing useful.
//!
//! The full key exists exactly once: in the answer to its creation. It is never stored, logged
//! or shown again.

use std::time::SystemTime;

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{Api, ApiError, Caller, FieldError, Scope, audit_event, rfc3339};
use crate::store::{ApiKeyRecord, Store, unix_ms};

/// Every key starts with this, so leaked keys are easy to scan for.
pub const KEY_PREFIX: &str = "mxk_";
/// Random bytes of a key id (16 hex digits).
const ID_BYTES: usize = 8;
/// Random bytes of a key secret (64 hex digits).
const SECRET_BYTES: usize = 32;
/// Longest key name.
pub const MAX_NAME_CHARS: usize = 100;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Splits `mxk_<id>_<secret>` into id and secret; `None` for anything else.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (is_lower_hex(id, 2 * ID_BYTES) && is_lower_hex(secret, 2 * SECRET_BYTES))
        .then_some((id, secret))
}

/// SHA-256 of a key's secret part, hex: what the store keeps.
pub fn secret_digest(secret: &str) -> String {
    hex(digest(&SHA256, secret.as_bytes()).as_ref())
}

/// Whether `secret` is the secret of `record`, compared in constant time.
pub fn secret_matches(record: &ApiKeyRecord, secret: &str) -> bool {
    let presented = secret_digest(secret);
    // Both sides are 64 hex digits; the comparison time does not depend on where they differ.
    presented.len() == record.secret_sha256.len()
        && presented
            .bytes()
            .zip(record.secret_sha256.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// `POST /api/v1/keys` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    pub scopes: Vec<String>,
}

/// An API key as listed: never its secret or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
}

impl From<&ApiKeyRecord> for KeyView {
    fn from(r: &ApiKeyRecord) -> KeyView {
        KeyView {
            id: r.id.clone(),
            name: r.name.clone(),
            scopes: r.scopes.clone(),
            created_at: rfc3339(r.created_at),
        }
    }
}

/// The answer to a key's creation: the only time `key` is ever shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    /// `mxk_<id>_<secret>`: use as `Authorization: Bearer <key>`.
    pub key: String,
}

/// `GET /api/v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// Checks a key's name and scopes; returns the scopes, deduplicated in canonical order.
pub fn validate(name: &str, scopes: &[String]) -> Result<Vec<Scope>, Vec<FieldError>> {
    let mut problems = Vec::new();
    if name.trim().is_empty() {
        problems.push(FieldError::new("name", "must not be empty"));
    } else if name.chars().count() > MAX_NAME_CHARS {
        problems.push(FieldError::new(
            "name",
            format!("at most {MAX_NAME_CHARS} characters"),
        ));
    } else if name.chars().any(char::is_control) {
        problems.push(FieldError::new(
            "name",
            "must not contain control characters",
        ));
    }
    if scopes.is_empty() {
        problems.push(FieldError::new("scopes", "at least one scope is required"));
    }
    let mut parsed = Vec::new();
    for (i, text) in scopes.iter().enumerate() {
        match Scope::parse(text) {
            Some(scope) => parsed.push(scope),
            None => problems.push(FieldError::new(
                format!("scopes[{i}]"),
                format!(
                    "unknown scope; one of {}",
                    Scope::ALL.map(Scope::as_str).join(", ")
                ),
            )),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

/// Creates a key, stores its hash and audits the creation as `actor`. Shared by the API and
/// `mxnode api-key create`.
pub fn create(
    store: &dyn Store,
    name: &str,
    scopes: &[String],
    actor: &str,
    now: SystemTime,
) -> Result<CreatedKey, ApiError> {
    let scopes = validate(name, scopes).map_err(|fields| {
        ApiError::invalid("invalid_body", "the key request is invalid", fields)
    })?;
    let rng = SystemRandom::new();
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    if rng
        .fill(&mut id)
        .and_then(|()| rng.fill(&mut secret))
        .is_err()
    {
        log::error!("api: the system random generator failed");
        return Err(ApiError::internal());
    }
    let (id, secret) = (hex(&id), hex(&secret));
    let record = ApiKeyRecord {
        id: id.clone(),
        name: name.trim().to_string(),
        scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
        created_at: unix_ms(now),
        secret_sha256: secret_digest(&secret),
    };
    store.put_api_key(&record)?;
    audit_event(
        store,
        now,
        actor,
        "api_key.create",
        Some(id.clone()),
        Some(format!("scopes {}", record.scopes.join(","))),
    )
    .map_err(|e| {
        // The key exists but its creation is not on record: refuse to hand it out.
        log::error!("audit: cannot store api_key.create: {e}");
        let _ = store.delete_api_key(&id);
        ApiError::internal()
    })?;
    Ok(CreatedKey {
        view: KeyView::from(&record),
        key: format!("{KEY_PREFIX}{id}_{secret}"),
    })
}

impl Api {
    /// `POST /api/v1/keys` (admin).
    pub fn create_key(&self, caller: &Caller, body: &[u8]) -> Result<CreatedKey, ApiError> {
        let principal = self.authenticate(caller, Scope::Admin)?;
        let request: CreateKeyRequest = super::emails::parse_body(body)?;
        create(
            self.store.as_ref(),
            &request.name,
            &request.scopes,
            &principal.actor(),
            self.now(),
        )
    }

    /// `GET /api/v1/keys` (admin), oldest first.
    pub fn list_keys(&self, caller: &Caller) -> Result<KeyList, ApiError> {
        self.authenticate(caller, Scope::Admin)?;
        let mut records = self.store.list_api_keys()?;
        records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(KeyList {
            keys: records.iter().map(KeyView::from).collect(),
        })
    }

    /// `DELETE /api/v1/keys/{id}` (admin). A key cannot revoke itself: that would let a
    /// slip lock the operator out with the last admin key (use another key, or the CLI).
    pub fn revoke_key(&self, caller: &Caller, id: &str) -> Result<(), ApiError> {
        let principal = self.authenticate(caller, Scope::Admin)?;
        if id == principal.key_id {
            return Err(ApiError::new(
                409,
                "conflict",
                "a key cannot revoke itself; revoke it with another admin key",
            ));
        }
        if !self.store.delete_api_key(id)? {
            return Err(ApiError::not_found("API key"));
        }
        self.audit_best_effort(
            &principal.actor(),
            "api_key.revoke",
            Some(id.to_string()),
            None,
        );
        Ok(())
    }
}
