//! Fuzz target: the update manifest parser and the refusal policy — `Manifest::parse` and
//! `policy::check_release` on arbitrary bytes from a channel or an uploaded bundle, before any
//! signature is known to be good.
//!
//! Neither may panic. A manifest that parses must satisfy every invariant the installer relies
//! on (fixed artifact names, bounded sizes, lowercase hex hashes, a 16-hex key id), and must
//! parse to the same manifest when its document is written back. With no trusted key, the policy refuses
//! every input, as unknown key or malformed manifest, never anything else. The target does no
//! I/O.

#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use mxnode::update::manifest::{
    ArtifactKind, MAX_ARTIFACT_BYTES, Manifest, ManifestDocument, TrustedKeys,
};
use mxnode::update::policy::{self, Facts, Refusal};

fuzz_target!(|data: &[u8]| {
    // With no trusted key the signature's bytes never matter; the first 64 bytes stand in.
    let manifest = data;
    let signature = &data[..data.len().min(64)];
    if let Ok(m) = Manifest::parse(manifest) {
        for kind in ArtifactKind::ALL {
            let a = m.artifacts.get(kind);
            assert_eq!(a.path, kind.file_name());
            assert!(a.size > 0 && a.size <= MAX_ARTIFACT_BYTES);
            assert!(a.sha256.len() == 64 && a.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_eq!(m.key_id.len(), 16);
        assert!(m.artifacts.total_size() <= 3 * MAX_ARTIFACT_BYTES);
        // What parsed once parses again, the same, from its document written back.
        let doc: ManifestDocument = serde_json::from_slice(manifest).expect("parsed before");
        let again = serde_json::to_vec(&doc).expect("serialises");
        assert_eq!(Manifest::parse(&again).as_ref(), Ok(&m));
    }
    let running = semver::Version::new(1, 0, 0);
    let facts = Facts {
        product: "mxnode",
        compatible: "mxnode-x86_64-gpt-ab-1",
        floor: None,
        running: &running,
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
    };
    match policy::check_release(manifest, signature, &TrustedKeys::default(), &facts) {
        Err(Refusal::UnknownKey { .. } | Refusal::Malformed(_)) => {}
        other => panic!("no key is trusted, yet: {other:?}"),
    }
    // The boot entry parser sees bytes from efivarfs.
    if let Some(entry) = policy::parse_loader_entry(data) {
        let _ = policy::is_blessed(&entry);
    }
});
