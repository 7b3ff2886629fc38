//! A release's `manifest.json`: its strict parser, the trusted-keys file and Ed25519
//! signature verification.
//!
//! The parser refuses anything it does not know (unknown fields, another format, artifact
//! paths other than the fixed names, malformed versions, times or hashes) and never panics:
//! its input comes from a network channel or an uploaded bundle (fuzz target
//! `update_manifest`). A parsed manifest is not yet trusted: only [`verify`] and the policy of
//! [`super::policy`] make it so.

use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use ring::signature::{ED25519, UnparsedPublicKey};
use semver::Version;
use serde::{Deserialize, Serialize};

/// The only manifest format this code reads.
pub const FORMAT: u32 = 1;
/// Largest manifest accepted; a real one is well under 1 KiB.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Largest artifact a manifest may list: the root slots are a few GiB.
pub const MAX_ARTIFACT_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Longest product, compatible or version string.
const MAX_NAME_BYTES: usize = 128;
/// Length of a raw Ed25519 signature and public key.
pub const SIGNATURE_BYTES: usize = 64;
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Most trusted keys in a keys file (a few, for rotation).
pub const MAX_TRUSTED_KEYS: usize = 64;

/// The artifacts of a release, each under its fixed file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    Root,
    Kernel,
    Initrd,
}

impl ArtifactKind {
    pub const ALL: [ArtifactKind; 3] = [
        ArtifactKind::Root,
        ArtifactKind::Kernel,
        ArtifactKind::Initrd,
    ];

    /// The fixed file name in a release directory, a bundle and the staging directory.
    pub fn file_name(self) -> &'static str {
        match self {
            ArtifactKind::Root => "root.erofs",
            ArtifactKind::Kernel => "vmlinuz",
            ArtifactKind::Initrd => "initrd.img",
        }
    }

    /// The key under `artifacts` in the manifest.
    pub fn key(self) -> &'static str {
        match self {
            ArtifactKind::Root => "root",
            ArtifactKind::Kernel => "kernel",
            ArtifactKind::Initrd => "initrd",
        }
    }
}

/// One artifact as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub path: String,
    pub size: u64,
    /// Lowercase hex sha256 of the file.
    pub sha256: String,
}

/// The three artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifacts {
    pub root: Artifact,
    pub kernel: Artifact,
    pub initrd: Artifact,
}

impl Artifacts {
    pub fn get(&self, kind: ArtifactKind) -> &Artifact {
        match kind {
            ArtifactKind::Root => &self.root,
            ArtifactKind::Kernel => &self.kernel,
            ArtifactKind::Initrd => &self.initrd,
        }
    }

    /// Sum of the sizes (saturating: each is bounded by [`MAX_ARTIFACT_BYTES`]).
    pub fn total_size(&self) -> u64 {
        ArtifactKind::ALL
            .iter()
            .map(|k| self.get(*k).size)
            .fold(0u64, u64::saturating_add)
    }
}

/// `manifest.json` field for field, as written by `mxnode release sign` (the field order of
/// this struct is the order in the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDocument {
    pub format: u32,
    pub product: String,
    pub compatible: String,
    pub version: String,
    pub security_floor: String,
    /// RFC 3339 UTC.
    pub created: String,
    /// RFC 3339 UTC.
    pub expires: String,
    pub key_id: String,
    pub artifacts: Artifacts,
}

/// A parsed, well-formed manifest (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub product: String,
    pub compatible: String,
    pub version: Version,
    pub security_floor: Version,
    pub created: SystemTime,
    pub expires: SystemTime,
    pub key_id: String,
    pub artifacts: Artifacts,
}

/// Why a manifest is not well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError(pub String);

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn name(field: &str, value: &str) -> Result<String, ManifestError> {
    if value.is_empty()
        || value.len() > MAX_NAME_BYTES
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ManifestError(format!(
            "{field} must be 1 to {MAX_NAME_BYTES} letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(value.to_string())
}

fn version(field: &str, value: &str) -> Result<Version, ManifestError> {
    if value.len() > MAX_NAME_BYTES {
        return Err(ManifestError(format!("{field} is too long")));
    }
    Version::parse(value)
        .map_err(|e| ManifestError(format!("{field} is not a semantic version: {e}")))
}

fn time(field: &str, value: &str) -> Result<SystemTime, ManifestError> {
    if !value.is_ascii() || !value.ends_with('Z') {
        return Err(ManifestError(format!(
            "{field} must be an RFC 3339 UTC time ending in Z"
        )));
    }
    humantime::parse_rfc3339(value)
        .map_err(|e| ManifestError(format!("{field} is not an RFC 3339 time: {e}")))
}

impl Manifest {
    /// Parses `manifest.json` strictly.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError(format!(
                "the manifest exceeds {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let doc: ManifestDocument = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError(format!("not a manifest: {e}")))?;
        Manifest::from_document(&doc)
    }

    /// Checks every field of a document.
    pub fn from_document(doc: &ManifestDocument) -> Result<Manifest, ManifestError> {
        if doc.format != FORMAT {
            return Err(ManifestError(format!(
                "format {} is not supported (this node reads format {FORMAT})",
                doc.format
            )));
        }
        if !is_lower_hex(&doc.key_id, 16) {
            return Err(ManifestError(
                "key_id must be 16 lowercase hex digits".into(),
            ));
        }
        for kind in ArtifactKind::ALL {
            let a = doc.artifacts.get(kind);
            let key = kind.key();
            if a.path != kind.file_name() {
                return Err(ManifestError(format!(
                    "artifacts.{key}.path must be {:?}",
                    kind.file_name()
                )));
            }
            if a.size == 0 || a.size > MAX_ARTIFACT_BYTES {
                return Err(ManifestError(format!(
                    "artifacts.{key}.size must be 1 to {MAX_ARTIFACT_BYTES} bytes"
                )));
            }
            if !is_lower_hex(&a.sha256, 64) {
                return Err(ManifestError(format!(
                    "artifacts.{key}.sha256 must be 64 lowercase hex digits"
                )));
            }
        }
        Ok(Manifest {
            product: name("product", &doc.product)?,
            compatible: name("compatible", &doc.compatible)?,
            version: version("version", &doc.version)?,
            security_floor: version("security_floor", &doc.security_floor)?,
            created: time("created", &doc.created)?,
            expires: time("expires", &doc.expires)?,
            key_id: doc.key_id.clone(),
            artifacts: doc.artifacts.clone(),
        })
    }
}

/// The public keys a node trusts for releases, from the keys file
/// (`firmware-config/update-keys.txt`): one base64 raw Ed25519 public key per line; blank lines
/// and `#` comments are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl TrustedKeys {
    /// Parses a keys file; a malformed line is an error naming the line (a keys file that
    /// half-works would silently distrust a key).
    pub fn parse(text: &str) -> Result<TrustedKeys, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(line)
                .ok()
                .filter(|k| k.len() == PUBLIC_KEY_BYTES)
                .ok_or_else(|| {
                    format!(
                        "line {}: not a base64 raw Ed25519 public key ({PUBLIC_KEY_BYTES} bytes)",
                        i + 1
                    )
                })?;
            if keys.len() == MAX_TRUSTED_KEYS {
                return Err(format!("more than {MAX_TRUSTED_KEYS} keys"));
            }
            keys.push((super::key_id(&raw), raw));
        }
        Ok(TrustedKeys { keys })
    }

    /// Reads a keys file; a missing file trusts no key.
    pub fn load(path: &std::path::Path) -> Result<TrustedKeys, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => TrustedKeys::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TrustedKeys::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The raw public key with `key_id`.
    pub fn get(&self, key_id: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(id, _)| id == key_id)
            .map(|(_, k)| k.as_slice())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the development key ([`DEVELOPMENT_PUBLIC_KEY`]) is among these keys: then anyone
    /// with a clone of the repository can sign a release this node accepts (issue 16).
    pub fn trusts_development_key(&self) -> bool {
        let development = development_public_key();
        self.keys.iter().any(|(_, key)| *key == development)
    }
}

/// The public half of the development release key (`firmware-config/update-dev-key.pub`, one
/// base64 line), compiled in: the node compares the keys it really trusts with it, so neither
/// a build flag nor an edited `os-release` decides whether it reports development keys. The
/// private half is `firmware-config/update-dev-key.pk8`, committed for test releases.
pub const DEVELOPMENT_PUBLIC_KEY: &str =
    include_str!("../../../firmware-config/update-dev-key.pub");

/// [`DEVELOPMENT_PUBLIC_KEY`] decoded (32 bytes; a unit test pins that it decodes).
pub fn development_public_key() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(DEVELOPMENT_PUBLIC_KEY.trim())
        .unwrap_or_default()
}

/// Whether `signature` is a valid Ed25519 signature of `message` by `public_key`.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    signature.len() == SIGNATURE_BYTES
        && UnparsedPublicKey::new(&ED25519, public_key)
            .verify(message, signature)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use ring::signature::KeyPair as _;

    use super::*;

    fn firmware_config(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../firmware-config")
            .join(name)
    }

    #[test]
    fn the_compiled_in_development_key_is_the_public_half_of_the_committed_private_key() {
        // Issue 16: the node recognises the development key by this constant; it must be the
        // key whose private half anyone can read in firmware-config/.
        let pair = super::super::release::load_key(&firmware_config("update-dev-key.pk8"))
            .expect("the development private key loads");
        assert_eq!(development_public_key(), pair.public_key().as_ref());
        assert_eq!(development_public_key().len(), PUBLIC_KEY_BYTES);
    }

    #[test]
    fn trusted_keys_say_whether_they_include_the_development_key() {
        // The default keys file of a build without MXNODE_UPDATE_KEYS trusts it (issue 16).
        let default = TrustedKeys::load(&firmware_config("update-keys.txt")).expect("loads");
        assert!(default.trusts_development_key());
        let other = base64::engine::general_purpose::STANDARD.encode([7u8; PUBLIC_KEY_BYTES]);
        let production = TrustedKeys::parse(&format!("# production\n{other}\n")).expect("parses");
        assert!(!production.trusts_development_key());
        let both =
            TrustedKeys::parse(&format!("{other}\n{DEVELOPMENT_PUBLIC_KEY}")).expect("parses");
        assert!(both.trusts_development_key());
        assert!(!TrustedKeys::default().trusts_development_key());
    }
}
