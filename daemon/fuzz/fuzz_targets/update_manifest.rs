//! Fuzz target: the update manifest parser and the refusal policy — `Manifest::parse` and
//! `policy::check_release` on arbitrary bytes from a channel or an uploaded bundle, before any
//! signature is known to be good.
//!
//! Neither may panic. A manifest that parses must satisfy every invariant the installer relies
//! on (fixed artifact names, bounded sizes, lowercase hex hashes, a 16-hex key id), and must
//! parse to the same manifest when its document is written back. With no trusted key, the policy refuses
//! every input, as unknown key or malformed manifest, never anything else. Then the same bytes
//! are signed with a fixed key the policy trusts (its key id is in the seeds and the
//! dictionary), so the rules after the signature see fuzzed manifests too: a correctly signed
//! input is never refused for its signature, and one the policy accepts satisfies every rule
//! (newer than the running version, floor not above the version, `created <= now <= expires`).
//! The target does no I/O.

#![no_main]

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use mxnode::update::manifest::{
    ArtifactKind, MAX_ARTIFACT_BYTES, Manifest, ManifestDocument, TrustedKeys,
};
use mxnode::update::policy::{self, Facts, Refusal};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The fixed signing key of the trusted half (key id `FUZZ_KEY_ID` in the seeds).
const FUZZ_SEED: [u8; 32] = [7; 32];

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
    // The trusted half: the same bytes, correctly signed by a key the policy trusts.
    let pair = Ed25519KeyPair::from_seed_unchecked(&FUZZ_SEED).expect("a 32-byte seed");
    let public = pair.public_key().as_ref();
    let keys = TrustedKeys::parse(&STANDARD.encode(public)).expect("one valid key line");
    let signed = pair.sign(manifest);
    match policy::check_release(manifest, signed.as_ref(), &keys, &facts) {
        Ok(m) => {
            assert!(
                m.version > running,
                "accepted a version not newer: {}",
                m.version
            );
            assert!(m.security_floor <= m.version);
            assert!(m.created <= facts.now && facts.now <= m.expires);
            assert_eq!(m.key_id, mxnode::update::key_id(public));
        }
        Err(Refusal::BadSignature { .. }) => panic!("a correct signature was refused"),
        Err(_) => {}
    }
    // The boot entry parser sees bytes from efivarfs.
    if let Some(entry) = policy::parse_loader_entry(data) {
        let _ = policy::is_blessed(&entry);
    }
});
