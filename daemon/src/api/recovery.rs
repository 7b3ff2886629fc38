//! `GET/DELETE /api/v1/recovery-key`: the data volume's LUKS recovery key, shown to the admin
//! until they confirm they stored it, then deleted from the node (DESIGN §8).
//!
//! The appliance's `mxnode-data` writes the key once, at the volume's creation, to
//! `<data_dir>/recovery-key` (inside the volume it unlocks, 0400, owned by the node). The key
//! leaves the node only in the answer to `GET`; it is never logged and never put into an audit
//! event (the audit records that it was shown and that it was deleted).

use std::io::Read as _;

use serde::Serialize;

use super::{Api, ApiError, Caller, Scope};

/// The file's name under `node.data_dir`.
pub const RECOVERY_KEY_FILE: &str = "recovery-key";
/// Longest file read (a systemd-cryptenroll recovery key is 64 modhex characters and 7 dashes).
const MAX_RECOVERY_KEY_BYTES: u64 = 256;

/// `GET /api/v1/recovery-key`.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryKey {
    pub recovery_key: String,
}

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(…)")
    }
}

fn none_pending() -> ApiError {
    ApiError::new(
        404,
        "not_found",
        "no recovery key is waiting: it was confirmed and deleted, or this is not an appliance",
    )
}

/// A recovery key as systemd-cryptenroll writes it: letters, digits and dashes only.
fn plausible(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Api {
    fn recovery_key_path(&self) -> Option<std::path::PathBuf> {
        self.data_dir().map(|dir| dir.join(RECOVERY_KEY_FILE))
    }

    /// `GET /api/v1/recovery-key` (`admin`): the key while it waits for confirmation; audited
    /// as `recovery_key.show`.
    pub fn get_recovery_key(&self, caller: &Caller) -> Result<RecoveryKey, ApiError> {
        let principal = self.authenticate(caller, Scope::Admin)?;
        let path = self.recovery_key_path().ok_or_else(none_pending)?;
        let mut text = String::new();
        match std::fs::File::open(&path) {
            Ok(file) => file
                .take(MAX_RECOVERY_KEY_BYTES)
                .read_to_string(&mut text)
                .map_err(|e| {
                    log::error!("recovery key: cannot read {}: {e}", path.display());
                    ApiError::internal()
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(none_pending()),
            Err(e) => {
                log::error!("recovery key: cannot open {}: {e}", path.display());
                return Err(ApiError::internal());
            }
        };
        let key = text.trim();
        if !plausible(key) {
            log::error!(
                "recovery key: {} does not hold a recovery key",
                path.display()
            );
            return Err(ApiError::internal());
        }
        self.audit_best_effort(&principal.actor(), "recovery_key.show", None, None);
        Ok(RecoveryKey {
            recovery_key: key.to_string(),
        })
    }

    /// `DELETE /api/v1/recovery-key` (`admin`): the admin stored the key; the node deletes its
    /// copy for good. Audited as `recovery_key.delete`.
    pub fn delete_recovery_key(&self, caller: &Caller) -> Result<(), ApiError> {
        let principal = self.authenticate(caller, Scope::Admin)?;
        let path = self.recovery_key_path().ok_or_else(none_pending)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(none_pending()),
            Err(e) => {
                log::error!("recovery key: cannot delete {}: {e}", path.display());
                return Err(ApiError::internal());
            }
        }
        if let Some(dir) = path.parent() {
            // The removal reaches the disk before the admin is told it happened.
            if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
                log::warn!("recovery key: cannot sync {}: {e}", dir.display());
            }
        }
        log::info!("recovery key: confirmed stored by the admin and deleted from the node");
        self.audit_best_effort(
            &principal.actor(),
            "recovery_key.delete",
            None,
            Some("the admin confirmed storing it; the node's copy is deleted".into()),
        );
        Ok(())
    }
}
