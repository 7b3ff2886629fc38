//! The real-world corpus as golden data: the stalwart-mail-parser reference text bodies, the
//! normalisation used to compare with them, and the deliberate differences. Shared by the
//! parser's golden test (`daemon/tests/corpus_parse.rs`) and the end-to-end corpus test over
//! SMTP (`tests/tests/corpus.rs`), so both hold the node to the same list.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::files::corpus_dir;

/// Stalwart messages whose text we deliberately read differently, with the reason. The test fails
/// when one of these matches after all, so the list stays honest.
pub const EXCEPTIONS: &[(&str, &str)] = &[
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

/// Whether `name` (e.g. `legacy/033.eml`) is a deliberate difference.
pub fn is_exception(name: &str) -> bool {
    EXCEPTIONS.iter().any(|(file, _)| *file == name)
}

/// The stalwart-mail-parser message directory.
pub fn stalwart_dir() -> PathBuf {
    corpus_dir().join("stalwart-mail-parser/eml")
}

/// The expected text of a stalwart message (`<dir>/NNN.eml`), normalised, from its
/// `NNN.crlf.json` reference; `None` when the reference has no text body.
pub fn stalwart_expected_text(eml: &Path) -> Option<String> {
    let reference_path = eml.with_extension("crlf.json");
    let bytes = std::fs::read(&reference_path)
        .unwrap_or_else(|e| panic!("{}: {e}", reference_path.display()));
    let reference: Value = serde_json::from_slice(&bytes).expect("reference is JSON");
    reference_text(&reference).map(|t| normalise(&t))
}

/// The reference text body: the decoded text/plain parts the reference lists as text body, joined
/// the way `message` joins them (a line break between parts). Parts the reference lists there
/// that are not plain text (HTML it would convert, inline images) are not ours to compare.
pub fn reference_text(reference: &Value) -> Option<String> {
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
pub fn normalise(text: &str) -> String {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|line| line.trim_end_matches(|c: char| c.is_whitespace()))
        .collect();
    lines.join("\n").trim_matches('\n').to_string()
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
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
