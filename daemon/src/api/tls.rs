//! `GET/PUT /api/v1/tls`: the certificate the node's TLS listeners serve, and replacing it with
//! an uploaded PEM chain and key ([`crate::certificate`] validates, stores and switches).
//!
//! The key travels in the request body only: it is never returned, logged or put into an audit
//! event (the audit names the new certificate's fingerprint).

use std::time::UNIX_EPOCH;

use serde::Deserialize;

use super::{Api, ApiError, Caller, FieldError, Scope};
use crate::certificate::{TlsState, Upload};

/// The node's TLS listeners as the controller sees them (the node's
/// [`crate::certificate::NodeCertificates`]).
pub trait CertificateBackend: Send + Sync {
    fn state(&self) -> TlsState;
    /// Stores a validated upload and switches the listeners to it.
    fn install(&self, upload: &Upload) -> Result<TlsState, String>;
}

impl CertificateBackend for crate::certificate::NodeCertificates {
    fn state(&self) -> TlsState {
        crate::certificate::NodeCertificates::state(self)
    }

    fn install(&self, upload: &Upload) -> Result<TlsState, String> {
        crate::certificate::NodeCertificates::install(self, upload)
    }
}

/// `PUT /api/v1/tls` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsUpload {
    certificate: String,
    key: String,
}

fn no_tls() -> ApiError {
    ApiError::new(
        409,
        "no_tls",
        "this node serves neither STARTTLS nor HTTPS: configure smtp.tls_cert or an https \
         http.listen first",
    )
}

impl Api {
    /// `GET /api/v1/tls` (`settings:read`).
    pub fn get_tls(&self, caller: &Caller) -> Result<TlsState, ApiError> {
        self.authenticate(caller, Scope::SettingsRead)?;
        Ok(match self.certificates() {
            Some(backend) => backend.state(),
            None => TlsState {
                certificate: None,
                source: "none",
                used_by: Vec::new(),
            },
        })
    }

    /// `PUT /api/v1/tls` (`settings:write`): validates the chain and key, stores them and
    /// switches STARTTLS and HTTPS to them without a restart; audited as `tls.update`.
    pub fn put_tls(&self, caller: &Caller, body: &[u8]) -> Result<TlsState, ApiError> {
        let principal = self.authenticate(caller, Scope::SettingsWrite)?;
        let request: TlsUpload = serde_json::from_slice(body).map_err(|_| {
            ApiError::invalid(
                "invalid_body",
                "expected {\"certificate\": PEM chain, \"key\": PEM private key}",
                Vec::new(),
            )
        })?;
        let backend = self.certificates().ok_or_else(no_tls)?;
        if backend.state().used_by.is_empty() {
            return Err(no_tls());
        }
        let now = self
            .now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let upload = crate::certificate::validate(&request.certificate, &request.key, now)
            .map_err(|e| {
                ApiError::invalid(
                    "invalid_certificate",
                    format!("{} problem(s) with the certificate or key", e.len()),
                    e.into_iter()
                        .map(|e| FieldError::new(e.key, e.message))
                        .collect(),
                )
            })?;
        let state = backend.install(&upload).map_err(|e| {
            log::error!("tls: {e}");
            ApiError::internal()
        })?;
        self.audit_best_effort(
            &principal.actor(),
            "tls.update",
            Some(upload.facts.sha256_fingerprint.clone()),
            Some(format!(
                "{}; expires {}; serves {}",
                upload.facts.subject,
                upload.facts.not_after,
                state.used_by.join(", ")
            )),
        );
        Ok(state)
    }
}
