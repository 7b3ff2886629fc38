//! The update routes (DESIGN §7, §9): `GET /api/v1/update` (`update:read`) and
//! `POST /api/v1/update/check|apply|upload` (`update:write`). The work is the update agent's
//! ([`crate::update::agent`]); this module authenticates, audits (every refusal is an
//! `update.refused` event) and maps outcomes to statuses.

use std::path::Path;
use std::sync::Arc;

use super::{Api, ApiError, Caller, Scope};
use crate::update::agent::{Audit, UpdateError, UpdateView, Updater, record_outcome};

impl Api {
    /// Connects the node's update agent (without one the routes answer 503).
    pub fn set_updater(&self, updater: Arc<Updater>) {
        let _ = self.updater.set(updater);
    }

    fn updater(&self) -> Result<&Arc<Updater>, ApiError> {
        self.updater.get().ok_or_else(|| {
            ApiError::new(503, "update_unavailable", "this node runs no update agent")
        })
    }

    /// The audit hook of the agent's outcomes, as `actor`.
    fn update_audit(&self, actor: String) -> Audit {
        let store = self.store.clone();
        let clock = self.clock.clone();
        Arc::new(move |action: &str, detail: String| {
            if let Err(e) =
                super::audit_event(store.as_ref(), clock(), &actor, action, None, Some(detail))
            {
                log::error!("audit: cannot store the event {action}: {e}");
            }
        })
    }

    /// `GET /api/v1/update`.
    pub fn update_status(&self, caller: &Caller) -> Result<UpdateView, ApiError> {
        self.authenticate(caller, Scope::UpdateRead)?;
        Ok(self.updater()?.view())
    }

    /// `POST /api/v1/update/check`: polls the channel now.
    pub fn update_check(&self, caller: &Caller) -> Result<UpdateView, ApiError> {
        let principal = self.authenticate(caller, Scope::UpdateWrite)?;
        let updater = self.updater()?;
        let audit = self.update_audit(principal.actor());
        let result = updater.check(self.now());
        outcome(record_outcome(&audit, "check", result), updater)
    }

    /// `POST /api/v1/update/apply`: requests the install of the staged release.
    pub fn update_apply(&self, caller: &Caller) -> Result<UpdateView, ApiError> {
        let principal = self.authenticate(caller, Scope::UpdateWrite)?;
        let updater = self.updater()?;
        let audit = self.update_audit(principal.actor());
        let result = updater.apply(self.now());
        outcome(record_outcome(&audit, "apply", result), updater)
    }

    /// `POST /api/v1/update/upload`: takes the bundle the HTTP layer spooled at `bundle`.
    pub fn update_upload(&self, caller: &Caller, bundle: &Path) -> Result<UpdateView, ApiError> {
        let principal = self.authenticate(caller, Scope::UpdateWrite)?;
        let updater = self.updater()?;
        let audit = self.update_audit(principal.actor());
        let result = updater.upload(bundle, self.now());
        outcome(record_outcome(&audit, "upload", result), updater)
    }

    /// Where the HTTP layer spools an upload of `declared` bytes (when the client said), after
    /// checking the caller may upload and that the spool filesystem can hold it (`507
    /// no_space` before a byte is spooled).
    pub fn update_upload_path(
        &self,
        caller: &Caller,
        declared: Option<u64>,
    ) -> Result<std::path::PathBuf, ApiError> {
        self.authenticate(caller, Scope::UpdateWrite)?;
        let updater = self.updater()?;
        updater
            .upload_spool(declared)
            .map_err(|e| match outcome(Err(e), updater) {
                Err(e) => e,
                Ok(_) => ApiError::internal(),
            })
    }
}

fn outcome(
    result: Result<crate::update::agent::Outcome, UpdateError>,
    updater: &Updater,
) -> Result<UpdateView, ApiError> {
    match result {
        Ok(_) => Ok(updater.view()),
        Err(e) => {
            let view = e.view();
            let status = match e {
                UpdateError::Refused(_) => 422,
                UpdateError::Busy | UpdateError::NoChannel | UpdateError::NothingStaged => 409,
                UpdateError::InvalidBundle(_) => 400,
                UpdateError::Failed {
                    code: "no_space", ..
                } => 507,
                UpdateError::ChannelStale { .. } => 502,
                UpdateError::Failed { code, .. } if code.starts_with("channel") => 502,
                UpdateError::Failed { .. } => 500,
            };
            // Codes are the agent's stable strings; ApiError wants a static one.
            Err(ApiError::new(status, static_code(&view.code), view.message))
        }
    }
}

/// The codes of [`crate::update::policy::Refusal`] and [`UpdateError`], as `'static` strings.
fn static_code(code: &str) -> &'static str {
    const CODES: &[&str] = &[
        "malformed_manifest",
        "unknown_key",
        "bad_signature",
        "wrong_product",
        "wrong_compatible",
        "not_newer",
        "bad_security_floor",
        "expired",
        "clock_before_created",
        "artifact_mismatch",
        "no_space",
        "slot_too_small",
        "not_blessed",
        "not_ab_node",
        "rolled_back_before",
        "update_busy",
        "no_channel",
        "nothing_staged",
        "invalid_bundle",
        "channel_unreachable",
        "channel_error",
        "channel_stale",
        "keys_file",
        "spool",
    ];
    CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .unwrap_or("update_failed")
}
