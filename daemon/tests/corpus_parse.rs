//! Golden test of `mxnode::message` against a real-world corpus (/work/shared/corpus, see its
//! README): for every message of stalwart-mail-parser our text body must equal the decoded text
//! body of that parser's reference result, except for the deliberate differences listed in
//! `mxnode_tests::corpus::EXCEPTIONS`; every other corpus message must parse without a panic into sane output.
//!
//! Messages are converted to CRLF first, as they arrive over SMTP. The corpus is found at
//! `$MXNODE_CORPUS`, else at `../../shared/corpus` from this crate. On a mismatch the expected
//! and actual text are written to `$CARGO_TARGET_TMPDIR/corpus_parse/`, so the diff is one
//! `diff` away.

use std::path::PathBuf;

use mxnode::message::{MAX_WARNINGS, ParseLimits, ParsedMessage, parse};
use mxnode_tests::corpus::{
    files_under, is_exception, normalise, stalwart_dir, stalwart_expected_text,
};
use mxnode_tests::{corpus_dir, crlf as to_crlf};

/// Checks what must hold for any input: no internal error, attachments well formed, warnings
/// bounded.
fn assert_sane(name: &str, parsed: &ParsedMessage) {
    assert!(
        !parsed
            .warnings
            .iter()
            .any(|w| w.contains("internal parser error")),
        "{name}: the parser panicked"
    );
    assert!(
        parsed.warnings.len() <= MAX_WARNINGS,
        "{name}: too many warnings"
    );
    for attachment in &parsed.attachments {
        let digest = ring::digest::digest(&ring::digest::SHA256, &attachment.data);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(attachment.sha256, hex, "{name}: attachment digest");
        assert!(
            attachment.content_type.contains('/')
                && attachment.content_type == attachment.content_type.to_lowercase(),
            "{name}: content type {:?}",
            attachment.content_type
        );
        assert!(
            ["attachment", "inline"].contains(&attachment.disposition.as_str()),
            "{name}: disposition {:?}",
            attachment.disposition
        );
    }
    if let Some(date) = &parsed.date {
        assert!(
            humantime::parse_rfc3339(date).is_ok(),
            "{name}: date {date}"
        );
    }
}

#[test]
fn stalwart_text_bodies_match_the_reference() {
    let root = stalwart_dir();
    let mut files = Vec::new();
    files_under(&root, &mut files);
    let emls: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    assert!(emls.len() >= 100, "corpus not found at {}", root.display());

    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("corpus_parse");
    let mut failures = Vec::new();
    let mut stale = Vec::new();
    for eml in emls {
        let name = eml
            .strip_prefix(&root)
            .expect("under root")
            .display()
            .to_string();
        let raw = to_crlf(&std::fs::read(eml).expect("readable eml"));
        let parsed = parse(&raw, &ParseLimits::default());
        assert_sane(&name, &parsed);

        let expected = stalwart_expected_text(eml);
        let actual = parsed.text.as_deref().map(normalise);
        let excepted = is_exception(&name);
        match (expected == actual, excepted) {
            (true, false) | (false, true) => {}
            (true, true) => stale.push(name),
            (false, false) => {
                let stem = name.replace(['/', '.'], "_");
                std::fs::create_dir_all(&out_dir).expect("tmp dir");
                let show = |t: &Option<String>| t.clone().unwrap_or_else(|| "<none>".to_string());
                std::fs::write(out_dir.join(format!("{stem}.expected")), show(&expected))
                    .expect("write");
                std::fs::write(out_dir.join(format!("{stem}.actual")), show(&actual))
                    .expect("write");
                failures.push(name);
            }
        }
    }
    assert!(
        failures.is_empty() && stale.is_empty(),
        "text differs from the reference: {failures:?} (expected/actual in {})\n\
         exceptions that are no longer needed: {stale:?}",
        out_dir.display()
    );
}

#[test]
fn every_other_corpus_message_parses_sanely() {
    let mut files = Vec::new();
    for dir in ["ruby-mail", "nodemailer-mailparser"] {
        files_under(&corpus_dir().join(dir), &mut files);
    }
    files.retain(|p| p.file_name().is_none_or(|n| n != "LICENSE"));
    assert!(
        files.len() >= 100,
        "corpus not found at {}",
        corpus_dir().display()
    );
    for file in files {
        let name = file.display().to_string();
        let raw = to_crlf(&std::fs::read(&file).expect("readable file"));
        let parsed = parse(&raw, &ParseLimits::default());
        assert_sane(&name, &parsed);
        assert!(
            parsed.text.is_some()
                || parsed.html.is_some()
                || !parsed.attachments.is_empty()
                || raw.len() < 64,
            "{name}: no content read"
        );
    }
}
