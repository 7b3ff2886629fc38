//! Fuzz target: the sender-authentication header path — mail-auth's parse of DKIM-Signature,
//! ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results fields (and the body hashes
//! each signature asks for), and our own `Authentication-Results` stamping of the stored
//! message, on arbitrary message bytes. No DNS: verification needs keys, parsing does not.
//!
//! Neither may panic; the stamped message must begin with exactly our header, keep every byte
//! after the header section, and keep no field claiming our authserv-id.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mxnode::auth::{parse_summary, stamp::stamp};

const OURS: &str = "mx.fuzz.test";

fuzz_target!(|raw: &[u8]| {
    if let Some((dkim, seals, ams, _errors)) = parse_summary(raw) {
        assert!(dkim + seals + ams <= raw.len(), "more fields than bytes");
    }
    let header = format!("{OURS}; spf=pass smtp.mailfrom=example.test");
    let stamped = stamp(raw, OURS, &header);
    let first = format!("Authentication-Results: {header}\r\n");
    assert!(stamped.starts_with(first.as_bytes()), "our header comes first");
    let rest = &stamped[first.len()..];
    // The body (everything from the empty line on) is untouched.
    if let Some(at) = find(raw, b"\r\n\r\n") {
        let body = &raw[at + 2..];
        assert!(rest.ends_with(body), "the body is kept byte for byte");
    }
    // Stamping the stamped message again removes the first stamp: only one of ours remains.
    let again = stamp(&stamped, OURS, &header);
    let ours = count(&again, first.as_bytes());
    assert!(ours >= 1);
    assert!(again.len() <= stamped.len(), "a second stamp replaces the first");
});

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}
