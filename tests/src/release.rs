//! Signed test releases made with the node's own release tool (`mxnode release
//! keygen|sign|bundle`): a key, small artifacts, release directories, the channel layout the
//! static HTTPS server serves, and offline bundles.
//!
//! It never signs anything itself (the release tool under test does) and keeps everything in
//! its temp dir, removed on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mxnode_bin;

/// Size of the test root image: several read buffers, so progress moves.
const ROOT_BYTES: u32 = 3_000_000;

/// The files of a signed release directory, as the channel serves them.
pub const RELEASE_FILES: [&str; 5] = [
    "manifest.json",
    "manifest.json.sig",
    "root.erofs",
    "vmlinuz",
    "initrd.img",
];

/// Runs `mxnode release …` and returns its stdout; panics with its stderr on failure.
pub fn release_cli(args: &[&str]) -> String {
    let output = Command::new(mxnode_bin())
        .arg("release")
        .args(args)
        .output()
        .expect("run mxnode release");
    assert!(
        output.status.success(),
        "mxnode release {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A release key and the artifacts every release signs, in a temp dir.
pub struct Releases {
    dir: tempfile::TempDir,
}

impl Releases {
    pub fn new() -> Releases {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_id = release_cli(&["keygen", "--out", &text(&dir.path().join("key"))]);
        assert_eq!(
            key_id.trim().len(),
            16,
            "keygen prints the key id, 16 hex digits: {key_id}"
        );
        let root: Vec<u8> = (0..ROOT_BYTES).map(|i| (i % 251) as u8).collect();
        fs::write(dir.path().join("root.in"), root).expect("root");
        fs::write(dir.path().join("vmlinuz.in"), b"a kernel").expect("kernel");
        fs::write(dir.path().join("initrd.in"), b"an initrd").expect("initrd");
        Releases { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The public key line, as `update.keys` reads it.
    pub fn keys_file(&self) -> PathBuf {
        self.path("key/release-key.pub")
    }

    /// Signs `version` into `name/` and returns that directory.
    pub fn sign(&self, name: &str, version: &str) -> PathBuf {
        self.sign_valid_for(name, version, "30d")
    }

    /// Signs `version` into `name/`, installable for `valid_for` (e.g. "1s": expired a moment
    /// later), and returns that directory.
    pub fn sign_valid_for(&self, name: &str, version: &str, valid_for: &str) -> PathBuf {
        let out = self.path(name);
        release_cli(&[
            "sign",
            "--valid-for",
            valid_for,
            "--key",
            &text(&self.path("key/release-key.pk8")),
            "--version",
            version,
            "--root",
            &text(&self.path("root.in")),
            "--kernel",
            &text(&self.path("vmlinuz.in")),
            "--initrd",
            &text(&self.path("initrd.in")),
            "--out",
            &text(&out),
        ]);
        out
    }

    /// The offline bundle of a release directory: `<dir>.tar`.
    pub fn bundle(&self, dir: &Path) -> PathBuf {
        let out = dir.with_extension("tar");
        release_cli(&["bundle", "--dir", &text(dir), "--out", &text(&out)]);
        out
    }

    /// Copies a release directory's files into a directory a channel serves.
    pub fn publish(&self, release: &Path, channel: &Path) {
        fs::create_dir_all(channel).expect("channel dir");
        for name in RELEASE_FILES {
            fs::copy(release.join(name), channel.join(name)).expect("publish");
        }
    }
}

impl Default for Releases {
    fn default() -> Releases {
        Releases::new()
    }
}
