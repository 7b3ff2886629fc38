//! What the node can tell about the disk it keeps its data on, for the status page and the
//! compliance report: the free space of `data_dir`'s file system (statvfs), and on the
//! appliance the data volume's encryption (LUKS2) and how it was unlocked (TPM2, key file or
//! recovery key), as `mxnode-data` records it in [`VOLUME_STATE_FILE`].
//!
//! The node cannot inspect the volume itself (it runs unprivileged, without devices); it only
//! reads that file. It never reads or reports key material: the file holds names of methods.

use std::path::Path;

use serde::Serialize;

/// Written by the appliance's `mxnode-data` at every boot (world-readable, no secrets); absent
/// anywhere else.
pub const VOLUME_STATE_FILE: &str = "/run/mxnode-data/volume";
/// Largest state file read (it holds a few short lines).
const MAX_STATE_BYTES: u64 = 4096;
/// Longest value kept from one line.
const MAX_VALUE_CHARS: usize = 64;

/// Space on the file system that holds `data_dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskUse {
    pub total_bytes: u64,
    /// Free to the node (an unprivileged process: ext4 keeps a reserve for root).
    pub available_bytes: u64,
    pub used_bytes: u64,
}

/// The file system of `dir`, `None` when it cannot be read.
pub fn disk_use(dir: &Path) -> Option<DiskUse> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    // c_ulong and fsblkcnt_t are u64 on the 64-bit Linux targets the appliance runs on.
    let unit = stat.fragment_size();
    let total = stat.blocks().saturating_mul(unit);
    let free = stat.blocks_free().saturating_mul(unit);
    Some(DiskUse {
        total_bytes: total,
        available_bytes: stat.blocks_available().saturating_mul(unit),
        used_bytes: total.saturating_sub(free),
    })
}

/// The appliance's data volume as `mxnode-data` recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeState {
    /// e.g. `LUKS2`.
    pub format: String,
    /// What unlocks it without anyone typing: `tpm2` (sealed to PCR 7) or `keyfile` (on the
    /// state partition, no TPM).
    pub protector: String,
    /// How it was opened at this boot: `tpm2`, `keyfile` or `recovery-key`.
    pub unlocked_by: String,
}

/// Reads `key=value` lines; `None` unless `format`, `protector` and `unlocked_by` are all there.
/// Values are kept only when they are short and plain (`A-Za-z0-9._-`).
pub fn parse_volume_state(text: &str) -> Option<VolumeState> {
    let value = |key: &str| {
        text.lines()
            .filter_map(|line| line.split_once('='))
            .filter(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim())
            .next_back()
            .filter(|v| {
                !v.is_empty()
                    && v.chars().count() <= MAX_VALUE_CHARS
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            })
            .map(str::to_string)
    };
    Some(VolumeState {
        format: value("format")?,
        protector: value("protector")?,
        unlocked_by: value("unlocked_by")?,
    })
}

/// The data volume's state from `path`, `None` when the file is absent (not an appliance) or
/// unreadable.
pub fn volume_state(path: &Path) -> Option<VolumeState> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_STATE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    parse_volume_state(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<(&str, &str, &str)>) {
        let expected = expected.map(|(format, protector, unlocked_by)| VolumeState {
            format: format.into(),
            protector: protector.into(),
            unlocked_by: unlocked_by.into(),
        });
        assert_eq!(parse_volume_state(text), expected, "{text:?}");
    }

    #[test]
    fn volume_state_lines_are_read_strictly() {
        check(
            "format=LUKS2\nprotector=tpm2\nunlocked_by=tpm2\n",
            Some(("LUKS2", "tpm2", "tpm2")),
        );
        check(
            "format=LUKS2\nprotector=keyfile\nunlocked_by=recovery-key\n",
            Some(("LUKS2", "keyfile", "recovery-key")),
        );
        check("format=LUKS2\nprotector=tpm2\n", None);
        check("format=LUKS2\nprotector=tpm2\nunlocked_by=<b>x</b>\n", None);
        check("format=\nprotector=tpm2\nunlocked_by=tpm2\n", None);
        check("", None);
        check("\u{0}\u{ffff}=\n==\n", None);
    }

    #[test]
    fn disk_use_of_a_real_directory_adds_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let usage = disk_use(dir.path()).expect("statvfs");
        assert!(usage.total_bytes > 0);
        assert!(usage.used_bytes <= usage.total_bytes);
        assert!(usage.available_bytes <= usage.total_bytes);
        assert_eq!(disk_use(&dir.path().join("missing")), None);
        assert_eq!(volume_state(&dir.path().join("missing")), None);
    }
}
