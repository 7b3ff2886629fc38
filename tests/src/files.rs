//! Paths and byte helpers shared by the tests: where the corpus lives, LF to
//! CRLF conversion for the wire, and the "content never at rest" scanner.
//!
//! It must never write anything: it only reads.

use std::fs;
use std::path::{Path, PathBuf};

/// The cargo workspace root (`/work/main` in development, the clone in CI),
/// so tests find files relative to the repository instead of the cwd.
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The real-world email corpus: `$MXNODE_CORPUS` when set (CI may keep it
/// elsewhere), else `<workspace>/../shared/corpus` as laid out in development.
pub fn corpus_dir() -> PathBuf {
    match std::env::var_os("MXNODE_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_dir().join("../shared/corpus"),
    }
}

/// `bytes` with every bare LF turned into CRLF; existing CRLF and bare CR are
/// left alone. Corpus files are often LF-only, but a real MTA sends CRLF, and
/// the daemon rightly refuses bare LF in DATA.
pub fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
    let mut previous = 0u8;
    for &byte in bytes {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        previous = byte;
    }
    out
}

/// Every regular file under `dirs` (recursively, symlinks not followed) whose
/// bytes contain `marker`. Tests put a unique marker into a message and
/// assert this comes back empty for the node's data dir and temp dirs. Only
/// the literal bytes are searched: checking base64 or quoted-printable forms
/// of the marker is the test's business (pass each form). Unreadable entries
/// are skipped, since they cannot hold content the node wrote either.
pub fn scan_for_marker(dirs: &[&Path], marker: &[u8]) -> Vec<PathBuf> {
    assert!(!marker.is_empty(), "an empty marker matches every file");
    let mut hits = Vec::new();
    let mut pending: Vec<PathBuf> = dirs.iter().map(|dir| dir.to_path_buf()).collect();
    while let Some(path) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|entry| entry.path()));
            }
        } else if meta.is_file()
            && let Ok(bytes) = fs::read(&path)
            && contains(&bytes, marker)
        {
            hits.push(path);
        }
    }
    hits.sort();
    hits
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_crlf(input: &str, expect: &str) {
        assert_eq!(
            String::from_utf8(crlf(input.as_bytes())).expect("utf8"),
            expect,
            "crlf({input:?})"
        );
    }

    #[test]
    fn crlf_converts_bare_lf_only() {
        check_crlf("", "");
        check_crlf("a\nb\n", "a\r\nb\r\n");
        check_crlf("a\r\nb\r\n", "a\r\nb\r\n");
        check_crlf("a\r\nb\nc", "a\r\nb\r\nc");
        check_crlf("\n\n", "\r\n\r\n");
        check_crlf("bare\rcr\n", "bare\rcr\r\n");
    }

    #[test]
    fn scan_finds_marker_in_nested_files_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a/b");
        fs::create_dir_all(&nested).expect("mkdir");
        fs::write(nested.join("hit"), b"xx MARKER-123 yy").expect("write");
        fs::write(dir.path().join("miss"), b"MARKER-12").expect("write");
        let hits = scan_for_marker(&[dir.path()], b"MARKER-123");
        assert_eq!(hits, vec![nested.join("hit")]);
    }

    #[test]
    fn corpus_dir_holds_the_shared_corpus() {
        // Not fatal where the corpus is absent (e.g. a bare clone); the
        // assertion is about the default path's shape.
        if std::env::var_os("MXNODE_CORPUS").is_none() {
            assert!(corpus_dir().ends_with("shared/corpus"));
        }
    }
}
