//! The refusal policy: whether a release may be staged or installed, as pure functions of the
//! manifest bytes, the signature, the trusted keys and the node's facts (floor, running
//! version, time, free space, boot state). No I/O, no clock: the callers (node and installer)
//! gather the facts, so both refuse exactly the same releases and every refusal is
//! unit-testable with real signatures.

use std::fmt;
use std::time::SystemTime;

use semver::Version;

use super::manifest::{ArtifactKind, Manifest, TrustedKeys, verify};

/// Room kept free on the spool filesystem beyond the release itself, so staging a release
/// never fills the data partition the node's store lives on.
pub const SPACE_MARGIN_BYTES: u64 = 256 * 1024 * 1024;

/// Why a release is refused. Each has a stable code (API `last_error.code`, audit detail) and a
/// sentence naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The manifest is not well-formed.
    Malformed(String),
    /// No trusted key has the manifest's key id.
    UnknownKey {
        key_id: String,
    },
    /// The signature does not verify under the named key.
    BadSignature {
        key_id: String,
    },
    WrongProduct {
        expected: String,
        found: String,
    },
    WrongCompatible {
        expected: String,
        found: String,
    },
    /// The version is at or below the installed floor or the running version.
    NotNewer {
        version: Version,
        floor: Version,
    },
    /// The release claims a security floor above its own version.
    FloorAboveVersion {
        version: Version,
        floor: Version,
    },
    /// The channel pointer's validity has ended.
    Expired {
        expires: String,
    },
    /// The clock is before the release's creation: it is wrong, and expiry cannot be judged.
    ClockBeforeCreated {
        created: String,
    },
    /// A downloaded or staged artifact is not what the manifest lists.
    ArtifactMismatch {
        artifact: String,
        why: String,
    },
    /// The spool filesystem lacks room for the release.
    NoSpace {
        needed: u64,
        available: u64,
    },
    /// The target slot is smaller than the root image.
    SlotTooSmall {
        slot_size: u64,
        root_size: u64,
    },
    /// The current boot still counts tries (it is not known to be good yet).
    NotBlessed {
        entry: String,
    },
    /// No boot loader variable: this machine does not boot A/B slots with systemd-boot.
    NotAbNode,
    /// This version failed its boots on this node before and was rolled back: the channel
    /// does not get to install it again (an uploaded bundle may, by an operator's decision).
    RolledBackBefore {
        version: Version,
        at: String,
    },
}

impl Refusal {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed_manifest",
            Refusal::UnknownKey { .. } => "unknown_key",
            Refusal::BadSignature { .. } => "bad_signature",
            Refusal::WrongProduct { .. } => "wrong_product",
            Refusal::WrongCompatible { .. } => "wrong_compatible",
            Refusal::NotNewer { .. } => "not_newer",
            Refusal::FloorAboveVersion { .. } => "bad_security_floor",
            Refusal::Expired { .. } => "expired",
            Refusal::ClockBeforeCreated { .. } => "clock_before_created",
            Refusal::ArtifactMismatch { .. } => "artifact_mismatch",
            Refusal::NoSpace { .. } => "no_space",
            Refusal::SlotTooSmall { .. } => "slot_too_small",
            Refusal::NotBlessed { .. } => "not_blessed",
            Refusal::NotAbNode => "not_ab_node",
            Refusal::RolledBackBefore { .. } => "rolled_back_before",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Malformed(why) => write!(f, "malformed manifest: {why}"),
            Refusal::UnknownKey { key_id } => {
                write!(
                    f,
                    "signed with key {key_id}, which this node does not trust"
                )
            }
            Refusal::BadSignature { key_id } => {
                write!(
                    f,
                    "bad signature: manifest.json.sig does not verify under key {key_id}"
                )
            }
            Refusal::WrongProduct { expected, found } => {
                write!(
                    f,
                    "release is for product {found:?}, this node is {expected:?}"
                )
            }
            Refusal::WrongCompatible { expected, found } => write!(
                f,
                "release is for {found:?} machines, this node is {expected:?}"
            ),
            Refusal::NotNewer { version, floor } => write!(
                f,
                "version {version} is not newer than the installed floor {floor}"
            ),
            Refusal::FloorAboveVersion { version, floor } => write!(
                f,
                "malformed release: security_floor {floor} is above its version {version}"
            ),
            Refusal::Expired { expires } => write!(f, "release expired at {expires}"),
            Refusal::ClockBeforeCreated { created } => write!(
                f,
                "the clock is before the release's creation time {created}: fix the time (NTP)"
            ),
            Refusal::ArtifactMismatch { artifact, why } => {
                write!(f, "artifact {artifact} does not match the manifest: {why}")
            }
            Refusal::NoSpace { needed, available } => write!(
                f,
                "not enough space: {needed} bytes needed, {available} available"
            ),
            Refusal::SlotTooSmall {
                slot_size,
                root_size,
            } => write!(
                f,
                "the target slot ({slot_size} bytes) is smaller than the root image ({root_size} bytes)"
            ),
            Refusal::NotBlessed { entry } => write!(
                f,
                "the current boot ({entry}) is not blessed yet: updates start only from a known-good boot"
            ),
            Refusal::RolledBackBefore { version, at } => write!(
                f,
                "version {version} failed its boots on this node and was rolled back at {at}; \
                 the channel does not install it again (upload the bundle to retry it)"
            ),
            Refusal::NotAbNode => write!(
                f,
                "not an A/B node: no systemd-boot LoaderEntrySelected variable (development machine?)"
            ),
        }
    }
}

/// What the node knows about itself when judging a release.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub product: &'a str,
    pub compatible: &'a str,
    /// The installed-version floor (anti-rollback), if one was recorded.
    pub floor: Option<&'a Version>,
    /// The version running now.
    pub running: &'a Version,
    pub now: SystemTime,
}

/// Verifies `manifest_bytes` and `signature` against `keys`, then every rule of the release
/// itself against `facts`. Returns the trusted manifest.
///
/// The order is part of the contract (issue 16): nothing is judged before the signature
/// verified, and the manifest's validity (clock, expiry) is judged before its version, so an
/// expired manifest naming the running version is `expired` — a stale or replayed channel —
/// never `not_newer`, which the node reads as "up to date".
pub fn check_release(
    manifest_bytes: &[u8],
    signature: &[u8],
    keys: &TrustedKeys,
    facts: &Facts<'_>,
) -> Result<Manifest, Refusal> {
    let manifest = Manifest::parse(manifest_bytes).map_err(|e| Refusal::Malformed(e.0))?;
    let key = keys
        .get(&manifest.key_id)
        .ok_or_else(|| Refusal::UnknownKey {
            key_id: manifest.key_id.clone(),
        })?;
    if !verify(key, manifest_bytes, signature) {
        return Err(Refusal::BadSignature {
            key_id: manifest.key_id,
        });
    }
    if manifest.product != facts.product {
        return Err(Refusal::WrongProduct {
            expected: facts.product.to_string(),
            found: manifest.product,
        });
    }
    if manifest.compatible != facts.compatible {
        return Err(Refusal::WrongCompatible {
            expected: facts.compatible.to_string(),
            found: manifest.compatible,
        });
    }
    if manifest.security_floor > manifest.version {
        return Err(Refusal::FloorAboveVersion {
            version: manifest.version,
            floor: manifest.security_floor,
        });
    }
    if facts.now < manifest.created {
        return Err(Refusal::ClockBeforeCreated {
            created: humantime::format_rfc3339_seconds(manifest.created).to_string(),
        });
    }
    if facts.now > manifest.expires {
        return Err(Refusal::Expired {
            expires: humantime::format_rfc3339_seconds(manifest.expires).to_string(),
        });
    }
    let floor = facts
        .floor
        .filter(|f| *f > facts.running)
        .unwrap_or(facts.running);
    if manifest.version <= *floor {
        return Err(Refusal::NotNewer {
            version: manifest.version,
            floor: floor.clone(),
        });
    }
    Ok(manifest)
}

/// Whether a copied artifact is the one the manifest lists.
pub fn check_artifact(
    manifest: &Manifest,
    kind: ArtifactKind,
    size: u64,
    sha256: &str,
) -> Result<(), Refusal> {
    let expected = manifest.artifacts.get(kind);
    let mismatch = |why: String| Refusal::ArtifactMismatch {
        artifact: kind.file_name().to_string(),
        why,
    };
    if size != expected.size {
        return Err(mismatch(format!(
            "{size} bytes where the manifest lists {}",
            expected.size
        )));
    }
    if sha256 != expected.sha256 {
        return Err(mismatch("sha256 differs".to_string()));
    }
    Ok(())
}

/// Refuses, for the channel, a version that this node already rolled back from: without it a
/// channel that still offers a release whose new slot failed its boots would have the node
/// install it, fail three boots and fall back again, for ever. `history` is the node's update
/// history as (event, version, at, cause). A rollback whose every failed try showed the node
/// running (cause `probe`: its health check was kept from getting through, issue 16) does not
/// bar the release: whoever could starve the probe must not be able to keep a node off a
/// security release for good.
pub fn check_not_rolled_back<'h>(
    manifest: &Manifest,
    history: impl IntoIterator<Item = (&'h str, &'h str, &'h str, Option<&'h str>)>,
) -> Result<(), Refusal> {
    let version = manifest.version.to_string();
    match history.into_iter().find(|(event, v, _, cause)| {
        *event == "rolled_back" && *v == version && *cause != Some("probe")
    }) {
        Some((_, _, at, _)) => Err(Refusal::RolledBackBefore {
            version: manifest.version.clone(),
            at: at.to_string(),
        }),
        None => Ok(()),
    }
}

/// Whether `available` bytes on the spool filesystem hold the release plus the margin.
pub fn check_space(manifest: &Manifest, available: u64) -> Result<(), Refusal> {
    let needed = manifest
        .artifacts
        .total_size()
        .saturating_add(SPACE_MARGIN_BYTES);
    if available < needed {
        return Err(Refusal::NoSpace { needed, available });
    }
    Ok(())
}

/// Whether the target slot holds the root image.
pub fn check_slot(manifest: &Manifest, slot_size: u64) -> Result<(), Refusal> {
    let root_size = manifest.artifacts.root.size;
    if slot_size < root_size {
        return Err(Refusal::SlotTooSmall {
            slot_size,
            root_size,
        });
    }
    Ok(())
}

/// The boot state systemd-boot reports through `LoaderEntrySelected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// No such EFI variable: not an A/B node.
    NotAb,
    /// The selected entry's name (e.g. `mxnode-a.conf`, `mxnode-b+2-1.conf`).
    Entry(String),
}

/// The boot counter of a systemd-boot entry name: `mxnode-b+2-1.conf` counts, `mxnode-a.conf`
/// does not. An entry without a counter is blessed (systemd-bless-boot removed it, or it never
/// counted).
pub fn is_blessed(entry: &str) -> bool {
    let stem = entry.strip_suffix(".conf").unwrap_or(entry);
    let Some((_, counter)) = stem.rsplit_once('+') else {
        return true;
    };
    // `+LEFT` or `+LEFT-DONE`, digits only; anything else is part of the name.
    let mut parts = counter.splitn(2, '-');
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let left_ok = parts.next().is_some_and(digits);
    let done_ok = parts.next().is_none_or(digits);
    !(left_ok && done_ok)
}

/// Refuses an update from a boot that is not blessed, or from a machine without A/B boot.
pub fn check_boot(boot: &Boot) -> Result<(), Refusal> {
    match boot {
        Boot::NotAb => Err(Refusal::NotAbNode),
        Boot::Entry(entry) if !is_blessed(entry) => Err(Refusal::NotBlessed {
            entry: entry.clone(),
        }),
        Boot::Entry(_) => Ok(()),
    }
}

/// Parses the `LoaderEntrySelected` EFI variable as efivarfs shows it: a 4-byte attributes
/// header, then the entry name in UTF-16LE, usually NUL-terminated. `None` if malformed.
pub fn parse_loader_entry(bytes: &[u8]) -> Option<String> {
    /// The longest entry name worth reading (systemd-boot's names are short).
    const MAX_ENTRY_UNITS: usize = 512;
    let body = bytes.get(4..)?;
    if body.len() % 2 != 0 || body.len() / 2 > MAX_ENTRY_UNITS {
        return None;
    }
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    let name = String::from_utf16(&units).ok()?;
    (!name.is_empty()).then_some(name)
}
