//! Golden test of `mxnode::message` against a real-world corpus (/work/shared/corpus, see its
//! README): for every message of stalwart-mail-parser our text body must equal the decoded text
//! body of that parser's reference result, except for the deliberate differences listed in
//! [`EXCEPTIONS`]; every other corpus message must parse without a panic into sane output.
//!
//! Messages are converted to CRLF first, as they arrive over SMTP. The corpus is found at
//! `$MXNODE_CORPUS`, else at `../../shared/corpus` from this crate. On a mismatch the expected
//! and actual text are written to `$CARGO_TARGET_TMPDIR/corpus_parse/`, so the diff is one
//! `diff` away.

use std::path::{Path, PathBuf};

use mxnode::message::{MAX_WARNINGS, ParseLimits, ParsedMessage, parse};
use serde_json::Value;

/// Stalwart messages whose text we deliberately read differently, with the reason. The test fails
/// when one of these matches after all, so the list stays honest.
const EXCEPTIONS: &[(&str, &str)] = &[
    // Charsets.
    (
        "legacy/033.eml",
        "Latin-1 text labelled UTF-8: the reference keeps U+FFFD for every accented letter; we fall back to windows-1252 because the label decoded none of the 8-bit bytes",
    ),
    (
        "legacy/052.eml",
        "Latin-1 text labelled UTF-8, as legacy/033",
    ),
    (
        "thirdparty/005.eml",
        "a binary UTF-16LE part ends in an odd byte (U+FFFD here, dropped by the reference), and `invalid--1--` is not a delimiter line, so it stays in the text",
    ),
    // Transfer encodings.
    (
        "thirdparty/002.eml",
        "invalid base64: we decode every padded segment and keep the undecodable text part as text; the reference stops at the first padding and makes that part an attachment",
    ),
    // Alternatives.
    (
        "thirdparty/000.eml",
        "multipart/alternative with two text/plain parts: we take the first, as a client shows one alternative; the reference lists both",
    ),
    (
        "thirdparty/001.eml",
        "multipart/alternative with three text/plain parts, as thirdparty/000",
    ),
    // Boundaries: we split by the RFC 2046 delimiter grammar, outermost first; the reference
    // matches boundary prefixes, innermost first, and turns unterminated parts into attachments.
    (
        "malformed/000.eml",
        "parts with headers but no body: empty text for us, no parts for the reference",
    ),
    (
        "malformed/001.eml",
        "inner boundary `a` inside outer `ab`: `--a` is text of the second outer part for us",
    ),
    (
        "malformed/002.eml",
        "multipart without any delimiter line: read as text by us, an attachment for the reference",
    ),
    (
        "malformed/003.eml",
        "inner and outer multipart share a boundary: the text part belongs to the outer one for us and is read as text",
    ),
    (
        "malformed/004.eml",
        "`--ab` and `--ac` are not delimiter lines for boundary `a`: the body is read as text",
    ),
    (
        "malformed/005.eml",
        "boundary `a--` makes the inner delimiter `--a----` the outer close delimiter, so the inner parts are epilogue",
    ),
    (
        "malformed/006.eml",
        "unterminated nested multiparts: the text is text for us, an attachment for the reference",
    ),
    (
        "malformed/007.eml",
        "a multipart whose body is only a close delimiter has no text for us; the reference reads it as empty text",
    ),
    (
        "malformed/009.eml",
        "an outer delimiter ends an unterminated inner multipart, so all three text parts are text",
    ),
    ("malformed/011.eml", "as malformed/009"),
    (
        "malformed/016.eml",
        "boundaries that are prefixes of each other, used out of order: the stray delimiter lines stay in the text",
    ),
    (
        "malformed/020.eml",
        "duplicate Content-Type: the first (multipart) wins, so the text before the first delimiter is preamble and only the HTML alternative is read",
    ),
    ("malformed/021.eml", "as malformed/020"),
];

fn corpus_dir() -> PathBuf {
    std::env::var_os("MXNODE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpus"))
        })
}

/// The message as an MTA sends it: every bare LF becomes CRLF.
fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// The reference text body: the decoded text/plain parts the reference lists as text body, joined
/// the way `message` joins them (a line break between parts). Parts the reference lists there
/// that are not plain text (HTML it would convert, inline images) are not ours to compare.
fn reference_text(reference: &Value) -> Option<String> {
    let parts = reference["parts"].as_array()?;
    let mut text: Option<String> = None;
    for index in reference["text_body"].as_array()? {
        let part = index
            .as_u64()
            .and_then(|i| parts.get(usize::try_from(i).ok()?));
        let Some(body) = part.and_then(|p| p["body"]["Text"].as_str()) else {
            continue;
        };
        match &mut text {
            None => text = Some(body.to_string()),
            Some(existing) => {
                if !existing.is_empty() && !existing.ends_with('\n') {
                    existing.push_str("\r\n");
                }
                existing.push_str(body);
            }
        }
    }
    text
}

/// Line endings and trailing whitespace are not content: LF endings, no whitespace at line ends,
/// no blank lines at either end.
fn normalise(text: &str) -> String {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|line| line.trim_end_matches(|c: char| c.is_whitespace()))
        .collect();
    lines.join("\n").trim_matches('\n').to_string()
}

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

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn stalwart_text_bodies_match_the_reference() {
    let root = corpus_dir().join("stalwart-mail-parser/eml");
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

        let reference_path = eml.with_extension("crlf.json");
        let reference: Value = serde_json::from_slice(
            &std::fs::read(&reference_path).unwrap_or_else(|e| panic!("{name}: reference: {e}")),
        )
        .expect("reference is JSON");
        let expected = reference_text(&reference).map(|t| normalise(&t));
        let actual = parsed.text.as_deref().map(normalise);
        let excepted = EXCEPTIONS.iter().any(|(file, _)| *file == name);
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
