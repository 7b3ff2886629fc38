//! The release side, in the node's own binary: `mxnode release keygen`, `sign` and `bundle`,
//! and the reader of an offline bundle the node accepts through the API.
//!
//! Keys are ring's Ed25519 (PKCS#8 on disk, mode 0600); the signature covers the exact bytes
//! of `manifest.json`. Signing copies each artifact once while hashing it, so the manifest
//! describes the bytes that were copied, not a file that might change underneath.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use semver::Version;

use super::manifest::{
    Artifact, ArtifactKind, Artifacts, FORMAT, MAX_ARTIFACT_BYTES, MAX_MANIFEST_BYTES, Manifest,
    ManifestDocument, SIGNATURE_BYTES,
};
use super::policy::{Refusal, check_artifact};
use super::{MANIFEST_FILE, SIGNATURE_FILE, copy_hashing, key_id};

/// File names `keygen` writes.
pub const PRIVATE_KEY_FILE: &str = "release-key.pk8";
pub const PUBLIC_KEY_FILE: &str = "release-key.pub";
/// How long a signed release stays installable by default (the channel pointer's expiry).
pub const DEFAULT_VALID_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// A release-side failure, in words naming the file or value at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReleaseError(pub String);

fn io_error(what: &str, path: &Path, e: io::Error) -> ReleaseError {
    ReleaseError(format!("cannot {what} {}: {e}", path.display()))
}

/// A new key pair, written into `dir`; returns the key id.
pub fn keygen(dir: &Path) -> Result<String, ReleaseError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| ReleaseError("cannot generate a key: no system randomness".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| ReleaseError("generated key does not parse".into()))?;
    fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
    let private = dir.join(PRIVATE_KEY_FILE);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .map_err(|e| io_error("create", &private, e))?;
    file.write_all(pkcs8.as_ref())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write", &private, e))?;
    let public = dir.join(PUBLIC_KEY_FILE);
    let raw = pair.public_key().as_ref();
    fs::write(
        &public,
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ),
    )
    .map_err(|e| io_error("write", &public, e))?;
    Ok(key_id(raw))
}

/// Loads a PKCS#8 Ed25519 private key (ring's v2 form, or the v1 form other tools write).
pub fn load_key(path: &Path) -> Result<Ed25519KeyPair, ReleaseError> {
    let bytes = fs::read(path).map_err(|e| io_error("read", path, e))?;
    Ed25519KeyPair::from_pkcs8(&bytes)
        .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&bytes))
        .map_err(|_| {
            ReleaseError(format!(
                "{}: not a PKCS#8 Ed25519 private key",
                path.display()
            ))
        })
}

/// What `mxnode release sign` is asked to do.
#[derive(Debug, Clone)]
pub struct SignOptions {
    pub key: PathBuf,
    pub version: String,
    pub security_floor: Option<String>,
    pub valid_for: Duration,
    pub product: String,
    pub compatible: String,
    pub root: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub out: PathBuf,
    /// The creation time written into the manifest.
    pub now: SystemTime,
}

/// Copies the artifacts into `out`, writes `manifest.json` and its signature; returns the
/// manifest.
pub fn sign(options: &SignOptions) -> Result<Manifest, ReleaseError> {
    let pair = load_key(&options.key)?;
    let version = Version::parse(&options.version)
        .map_err(|e| ReleaseError(format!("--version {}: {e}", options.version)))?;
    let floor = match &options.security_floor {
        Some(text) => Version::parse(text)
            .map_err(|e| ReleaseError(format!("--security-floor {text}: {e}")))?,
        None => Version::new(0, 0, 0),
    };
    if floor > version {
        return Err(ReleaseError(format!(
            "--security-floor {floor} is above --version {version}"
        )));
    }
    fs::create_dir_all(&options.out).map_err(|e| io_error("create", &options.out, e))?;
    let mut listed = Vec::new();
    for (kind, source) in [
        (ArtifactKind::Root, &options.root),
        (ArtifactKind::Kernel, &options.kernel),
        (ArtifactKind::Initrd, &options.initrd),
    ] {
        let target = options.out.join(kind.file_name());
        let mut from = File::open(source).map_err(|e| io_error("open", source, e))?;
        let mut to = File::create(&target).map_err(|e| io_error("create", &target, e))?;
        let copied = copy_hashing(&mut from, &mut to, MAX_ARTIFACT_BYTES, &mut |_| {})
            .and_then(|c| to.sync_all().map(|()| c))
            .map_err(|e| io_error("copy", source, e))?;
        if copied.size == 0 || copied.size > MAX_ARTIFACT_BYTES {
            return Err(ReleaseError(format!(
                "{}: must hold 1 to {MAX_ARTIFACT_BYTES} bytes",
                source.display()
            )));
        }
        listed.push(Artifact {
            path: kind.file_name().to_string(),
            size: copied.size,
            sha256: copied.sha256,
        });
    }
    let [root, kernel, initrd]: [Artifact; 3] = listed
        .try_into()
        .map_err(|_| ReleaseError("internal: three artifacts expected".into()))?;
    let expires = options
        .now
        .checked_add(options.valid_for)
        .ok_or_else(|| ReleaseError("--valid-for is too long".into()))?;
    let doc = ManifestDocument {
        format: FORMAT,
        product: options.product.clone(),
        compatible: options.compatible.clone(),
        version: version.to_string(),
        security_floor: floor.to_string(),
        created: humantime::format_rfc3339_seconds(options.now).to_string(),
        expires: humantime::format_rfc3339_seconds(expires).to_string(),
        key_id: key_id(pair.public_key().as_ref()),
        artifacts: Artifacts {
            root,
            kernel,
            initrd,
        },
    };
    // The node parses what we sign: refuse here what it would refuse there.
    let manifest =
        Manifest::from_document(&doc).map_err(|e| ReleaseError(format!("manifest: {e}")))?;
    let mut bytes = serde_json::to_vec_pretty(&doc)
        .map_err(|e| ReleaseError(format!("cannot serialise the manifest: {e}")))?;
    bytes.push(b'\n');
    let signature = pair.sign(&bytes);
    let manifest_path = options.out.join(MANIFEST_FILE);
    fs::write(&manifest_path, &bytes).map_err(|e| io_error("write", &manifest_path, e))?;
    let sig_path = options.out.join(SIGNATURE_FILE);
    fs::write(&sig_path, signature.as_ref()).map_err(|e| io_error("write", &sig_path, e))?;
    Ok(manifest)
}

/// The files of a bundle, in the order they are written and must be read: manifest and
/// signature first, so a reader verifies before it stores any artifact.
fn bundle_files() -> [&'static str; 5] {
    [
        MANIFEST_FILE,
        SIGNATURE_FILE,
        ArtifactKind::Root.file_name(),
        ArtifactKind::Kernel.file_name(),
        ArtifactKind::Initrd.file_name(),
    ]
}

/// Writes the offline bundle: a plain tar of a signed release directory.
pub fn bundle(dir: &Path, out: &Path) -> Result<(), ReleaseError> {
    let file = File::create(out).map_err(|e| io_error("create", out, e))?;
    let mut builder = tar::Builder::new(io::BufWriter::new(file));
    builder.mode(tar::HeaderMode::Deterministic);
    for name in bundle_files() {
        let path = dir.join(name);
        let mut source = File::open(&path).map_err(|e| io_error("open", &path, e))?;
        builder
            .append_file(name, &mut source)
            .map_err(|e| io_error("add", &path, e))?;
    }
    let writer = builder
        .into_inner()
        .map_err(|e| io_error("write", out, e))?;
    writer
        .into_inner()
        .map_err(|e| io_error("write", out, e.into_error()))?
        .sync_all()
        .map_err(|e| io_error("write", out, e))
}

/// Largest tar extension entry (GNU long name or link, PAX header) a bundle may carry; it is
/// read and ignored. A real one is a few hundred bytes.
pub const MAX_TAR_EXTENSION_BYTES: u64 = 64 * 1024;

/// The policy a bundle reader applies to the manifest and signature before reading further.
pub type Judge<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<Manifest, Refusal>;

/// Why a bundle was not taken.
#[derive(Debug)]
pub enum BundleError {
    /// The release itself is refused (signature, policy, artifact hashes).
    Refused(Refusal),
    /// The archive is not a bundle (names, order, sizes).
    Invalid(String),
    /// Storing it failed.
    Io(io::Error),
}

/// Reads a bundle from `reader`: manifest and signature first, judged by `judge` (the policy)
/// before anything else is read; then each artifact into `into/<name>` (through a `.part`
/// file), hashed on the way and checked against the manifest. Returns the manifest, its bytes
/// and the signature.
pub fn read_bundle(
    reader: &mut dyn Read,
    into: &Path,
    judge: Judge<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<(Manifest, Vec<u8>, Vec<u8>), BundleError> {
    let mut archive = tar::Archive::new(reader);
    // Raw: the tar crate would read a GNU long-name or PAX extension entry whole into memory,
    // however large its header says it is. Here each is bounded and then ignored (a bundle's
    // names fit the plain header; `bundle` never writes extensions).
    let entries = archive
        .entries()
        .map_err(|e| BundleError::Invalid(format!("not a tar archive: {e}")))?
        .raw(true);
    let mut manifest_bytes: Option<Vec<u8>> = None;
    let mut signature: Option<Vec<u8>> = None;
    let mut manifest: Option<Manifest> = None;
    let mut seen: Vec<ArtifactKind> = Vec::new();
    let mut done: u64 = 0;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| BundleError::Invalid(format!("not a tar archive: {e}")))?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
        {
            let size = entry.header().entry_size().unwrap_or(u64::MAX);
            if size > MAX_TAR_EXTENSION_BYTES {
                return Err(BundleError::Invalid(format!(
                    "a tar extension entry (long name or PAX header) of {size} bytes: at most \
                     {MAX_TAR_EXTENSION_BYTES} are read"
                )));
            }
            io::copy(&mut entry, &mut io::sink()).map_err(BundleError::Io)?;
            continue;
        }
        if kind != tar::EntryType::Regular {
            return Err(BundleError::Invalid(
                "the bundle holds something other than plain files".into(),
            ));
        }
        let name = entry
            .path()
            .ok()
            .and_then(|p| p.to_str().map(str::to_string))
            .unwrap_or_default();
        match (name.as_str(), &manifest) {
            (MANIFEST_FILE, None) if manifest_bytes.is_none() => {
                manifest_bytes = Some(read_small(&mut entry, MAX_MANIFEST_BYTES, &name)?);
            }
            (SIGNATURE_FILE, None) if manifest_bytes.is_some() => {
                let sig = read_small(&mut entry, SIGNATURE_BYTES, &name)?;
                let bytes = manifest_bytes.as_deref().unwrap_or_default();
                manifest = Some(judge(bytes, &sig).map_err(BundleError::Refused)?);
                signature = Some(sig);
            }
            (other, Some(m)) => {
                let kind = ArtifactKind::ALL
                    .into_iter()
                    .find(|k| k.file_name() == other)
                    .filter(|k| !seen.contains(k))
                    .ok_or_else(|| {
                        BundleError::Invalid(format!("unexpected file {other:?} in the bundle"))
                    })?;
                let limit = m.artifacts.get(kind).size;
                let part = into.join(format!("{other}.part"));
                let mut file = File::create(&part).map_err(BundleError::Io)?;
                let copied =
                    copy_hashing(&mut entry, &mut file, limit, &mut |n| progress(done + n))
                        .and_then(|c| file.sync_all().map(|()| c))
                        .map_err(BundleError::Io)?;
                check_artifact(m, kind, copied.size, &copied.sha256)
                    .map_err(BundleError::Refused)?;
                fs::rename(&part, into.join(other)).map_err(BundleError::Io)?;
                done += copied.size;
                seen.push(kind);
            }
            (other, None) => {
                return Err(BundleError::Invalid(format!(
                    "the bundle must start with {MANIFEST_FILE} and {SIGNATURE_FILE}, found {other:?}"
                )));
            }
        }
    }
    match (manifest, manifest_bytes, signature) {
        (Some(m), Some(bytes), Some(sig)) if seen.len() == ArtifactKind::ALL.len() => {
            Ok((m, bytes, sig))
        }
        (Some(_), ..) => Err(BundleError::Invalid(
            "the bundle lacks an artifact (root.erofs, vmlinuz, initrd.img)".into(),
        )),
        _ => Err(BundleError::Invalid(format!(
            "the bundle lacks {MANIFEST_FILE} or {SIGNATURE_FILE}"
        ))),
    }
}

/// Reads a tar entry of at most `limit` bytes.
fn read_small(entry: &mut dyn Read, limit: usize, name: &str) -> Result<Vec<u8>, BundleError> {
    let mut bytes = Vec::new();
    entry
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(BundleError::Io)?;
    if bytes.len() > limit {
        return Err(BundleError::Invalid(format!(
            "{name} exceeds {limit} bytes"
        )));
    }
    Ok(bytes)
}
