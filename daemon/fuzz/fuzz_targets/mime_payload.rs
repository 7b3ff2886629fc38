//! Fuzz target: MIME to payload — `message::parse` and `payload::render` on arbitrary message
//! bytes, the path every received message takes before its webhook.
//!
//! The parse must never panic (libFuzzer's panic hook aborts even inside the parser's
//! `catch_unwind` backstop, so a caught panic is still a finding), must stay within its own
//! bounds (warnings, headers per part), must report attachment hashes that match the data, and
//! dates in RFC 3339; the rendered payload must be JSON with version 1 and one entry per
//! attachment, no larger than `payload::bound` (what the in-flight budget is charged, issue
//! 16). Each input is parsed with the default limits and with tight ones, so the limit paths
//! (MIME depth and parts, header line, field and section, addresses) are reached by small
//! inputs too. It never does I/O.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mxnode::message::{self, MAX_HEADERS_PER_PART, MAX_WARNINGS, ParseLimits, ParsedMessage};
use mxnode::payload::{self, Envelope};

fuzz_target!(|raw: &[u8]| {
    let tight = ParseLimits {
        max_depth: 2,
        max_parts: 6,
        max_header_line: 1000,
        max_header_field: 2000,
        max_header_section: 4000,
        max_addresses: 4,
    };
    for limits in [ParseLimits::default(), tight] {
        let parsed = message::parse(raw, &limits);
        check_parsed(&parsed);
        check_payload(&parsed, raw.len());
    }
});

fn check_parsed(parsed: &ParsedMessage) {
    assert!(parsed.warnings.len() <= MAX_WARNINGS, "warnings unbounded");
    assert!(
        parsed.headers.len() <= MAX_HEADERS_PER_PART,
        "headers unbounded"
    );
    for attachment in &parsed.attachments {
        let digest = ring::digest::digest(&ring::digest::SHA256, &attachment.data);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            attachment.sha256, hex,
            "attachment hash does not match its data"
        );
        assert_eq!(
            attachment.content_type,
            attachment.content_type.to_lowercase()
        );
    }
    if let Some(date) = &parsed.date {
        assert!(
            humantime::parse_rfc3339(date).is_ok(),
            "date {date:?} is not RFC 3339"
        );
    }
}

fn check_payload(parsed: &ParsedMessage, size: usize) {
    let envelope = Envelope {
        mail_from: "alice@example.org".into(),
        rcpt_to: vec!["bob@in.example.test".into()],
        helo: "client.example.org".into(),
        remote_ip: "192.0.2.7".into(),
        tls: None,
    };
    let json = payload::render("msg_fuzz", "2025-01-01T00:00:00Z", &envelope, parsed, size);
    assert!(
        json.len() <= payload::bound(parsed, &envelope, true),
        "the payload is larger than its bound"
    );
    let value: serde_json::Value =
        serde_json::from_slice(&json).expect("the payload is valid JSON");
    assert_eq!(value["version"], 1);
    assert_eq!(value["size"], size);
    let attachments = value["attachments"]
        .as_array()
        .expect("attachments is a list");
    assert_eq!(attachments.len(), parsed.attachments.len());
}
