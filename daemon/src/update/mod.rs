//! The update channel (DESIGN §9, issue 7): signed releases, their verification and the
//! refusal policy, the release side (`mxnode release …`), the node-side checker and stager,
//! and the root-side installer of an A/B slot (`mxnode update …`).
//!
//! The split follows the privilege separation of the appliance: the node (unprivileged)
//! fetches, verifies and stages a release under its spool directory and asks for installation
//! with `request.json`; root re-verifies everything itself ([`install`]) and writes the slot.
//! Every decision to refuse a release is made by one pure function, [`policy::check_release`],
//! so node and installer refuse the same things for the same reasons.
//!
//! This module must never trust an artifact that no verified manifest names with its size and
//! sha256, never install from a boot that is not blessed, and never hand-roll cryptography:
//! signatures and hashes are ring's.

pub mod agent;
pub mod install;
pub mod manifest;
pub mod policy;
pub mod release;

use std::io::{self, Read, Write};
use std::path::Path;

use ring::digest;

/// Product name every release and node of this code base carries.
pub const PRODUCT: &str = "mxnode";
/// The boot layout this code installs into: x86_64, GPT, two root slots with systemd-boot.
pub const DEFAULT_COMPATIBLE: &str = "mxnode-x86_64-gpt-ab-1";
/// File names of a release directory (channel or bundle).
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.json.sig";
/// The install request the node writes into its spool directory for root.
pub const REQUEST_FILE: &str = "request.json";
/// Subdirectory of the spool directory holding the staged release.
pub const STAGED_DIR: &str = "staged";
/// Copy buffer for artifacts (large enough to keep system calls few, small enough for stacks
/// of blocking threads: it lives on the heap).
const COPY_BUFFER_BYTES: usize = 1024 * 1024;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key id of a raw Ed25519 public key: lowercase hex of the first 8 bytes of its sha256.
pub fn key_id(public_key: &[u8]) -> String {
    hex(&digest::digest(&digest::SHA256, public_key).as_ref()[..8])
}

/// Size and sha256 of what was copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub size: u64,
    pub sha256: String,
}

/// Copies at most `limit` bytes of `from` into `to` while hashing them; reads one byte more to
/// notice an input longer than `limit` (reported as `limit + 1`). `progress` sees the bytes
/// copied so far after each chunk.
pub fn copy_hashing(
    from: &mut dyn Read,
    to: &mut dyn Write,
    limit: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Copied> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut size: u64 = 0;
    let mut from = from.take(limit.saturating_add(1));
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buffer[..n];
        size += n as u64;
        if size > limit {
            // Never write past what the caller allows (a slot, a staged file).
            return Ok(Copied {
                size,
                sha256: String::new(),
            });
        }
        ctx.update(chunk);
        to.write_all(chunk)?;
        progress(size);
    }
    Ok(Copied {
        size,
        sha256: hex(ctx.finish().as_ref()),
    })
}

/// Size and sha256 of the first `limit` bytes of the file at `path` (or all of it if shorter).
pub fn hash_file(path: &Path, limit: u64) -> io::Result<Copied> {
    let mut file = std::fs::File::open(path)?;
    copy_hashing(
        &mut (&mut file).take(limit),
        &mut io::sink(),
        limit,
        &mut |_| {},
    )
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory. A crash leaves either the old or the new content, never a torn file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// fsync of a directory, so a rename or removal in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_the_first_eight_bytes_of_the_sha256_in_hex() {
        // sha256("") = e3b0c442 98fc1c14 …
        assert_eq!(key_id(b""), "e3b0c44298fc1c14");
    }

    #[test]
    fn copy_hashing_reports_an_input_over_the_limit_without_writing_past_it() {
        let mut out = Vec::new();
        let copied = copy_hashing(&mut &b"abcdef"[..], &mut out, 4, &mut |_| {}).expect("copies");
        assert_eq!(copied.size, 5);
        assert!(out.len() <= 4);
        let mut out = Vec::new();
        let copied = copy_hashing(&mut &b"abc"[..], &mut out, 4, &mut |_| {}).expect("copies");
        assert_eq!(
            copied,
            Copied {
                size: 3,
                sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()
            }
        );
        assert_eq!(out, b"abc");
    }
}
