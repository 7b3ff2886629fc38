//! Object keys: where a delivery's attachments and raw message go in the bucket, and how an
//! attachment's file name is made safe to be part of a key.
//!
//! Keys are deterministic from the stable delivery id and the day the message was received
//! (`<prefix>/<yyyy>/<mm>/<dd>/<id>/<n>-<name>`, `<…>/<id>/raw.eml`), so a retransmission after a
//! lost `250` overwrites the same objects instead of leaving orphans. File names come from the
//! sender and are hostile until proven otherwise: the sanitised name can never leave its
//! directory, hide characters, or grow a key without bound. The original name stays in the
//! payload's `filename`. Pure functions, no I/O.

use std::time::SystemTime;

/// Longest sanitised file name in bytes. Keeps keys far below S3's 1024-byte limit and every
/// key segment below the 255-byte file-name limit of stores that map keys to files (MinIO).
pub const MAX_FILENAME_BYTES: usize = 100;
/// An extension up to this long is kept when a long name is shortened (`.pdf`, `.docx`).
pub const MAX_KEPT_EXTENSION_BYTES: usize = 16;
/// The sanitised name of an attachment without a usable file name.
pub const FALLBACK_FILENAME: &str = "attachment";
/// The raw message's object name inside the delivery's directory.
pub const RAW_MESSAGE_NAME: &str = "raw.eml";

/// The directory of one delivery: `<prefix>/<yyyy>/<mm>/<dd>/<id>`, the date being the UTC day
/// `received`; no leading `/` when the prefix is empty.
pub fn delivery_dir(prefix: &str, received: SystemTime, id: &str) -> String {
    // "2026-05-24T10:00:00Z": the date is the first ten characters.
    let stamp = humantime::format_rfc3339_seconds(received).to_string();
    let (year, month, day) = (
        stamp.get(0..4).unwrap_or("0000"),
        stamp.get(5..7).unwrap_or("00"),
        stamp.get(8..10).unwrap_or("00"),
    );
    if prefix.is_empty() {
        format!("{year}/{month}/{day}/{id}")
    } else {
        format!("{prefix}/{year}/{month}/{day}/{id}")
    }
}

/// The key of attachment number `n` (counting from 1, in payload order).
pub fn attachment_key(dir: &str, n: usize, filename: Option<&str>) -> String {
    format!("{dir}/{n}-{}", sanitise_filename(filename))
}

/// The key of the raw message.
pub fn raw_key(dir: &str) -> String {
    format!("{dir}/{RAW_MESSAGE_NAME}")
}

/// A file name that is safe as the last segment of a key.
///
/// Only the part after the last `/` or `\` counts (a name is never a path); letters and digits
/// of any script, `-`, `_` and `.` are kept, every other character (spaces, punctuation, control
/// and invisible formatting characters such as bidi overrides) becomes `_`, with runs collapsed;
/// leading dots and trailing dots are dropped, so no segment is `.` or `..` or hidden. The result
/// is at most [`MAX_FILENAME_BYTES`], cut at a character boundary and keeping a short extension;
/// [`FALLBACK_FILENAME`] when nothing is left.
pub fn sanitise_filename(name: Option<&str>) -> String {
    let name = name.unwrap_or("");
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut clean = String::with_capacity(base.len().min(MAX_FILENAME_BYTES * 2));
    for c in base.chars() {
        let keep = (c.is_alphanumeric() && !is_invisible(c)) || matches!(c, '-' | '_' | '.');
        let c = if keep { c } else { '_' };
        if c == '_' && clean.ends_with('_') {
            continue;
        }
        clean.push(c);
    }
    let clean = clean
        .trim_start_matches(['.', '_'])
        .trim_end_matches(['.', '_']);
    if clean.is_empty() {
        return FALLBACK_FILENAME.to_string();
    }
    shorten(clean)
}

/// Letters that render as nothing (the Hangul fillers), which `char::is_alphanumeric` accepts.
/// Invisible formatting characters (zero-width spaces, bidi overrides, the byte-order mark) are
/// not alphanumeric and are replaced anyway.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}')
}

/// Cuts `name` to [`MAX_FILENAME_BYTES`] at a character boundary, keeping a short extension.
fn shorten(name: &str) -> String {
    if name.len() <= MAX_FILENAME_BYTES {
        return name.to_string();
    }
    let extension = match name.rfind('.') {
        Some(dot) if name.len() - dot <= MAX_KEPT_EXTENSION_BYTES && dot > 0 => &name[dot..],
        _ => "",
    };
    let budget = MAX_FILENAME_BYTES - extension.len();
    let stem = &name[..name.len() - extension.len()];
    let mut cut = budget.min(stem.len());
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let stem = stem[..cut].trim_end_matches(['.', '_']);
    format!("{stem}{extension}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check(name: Option<&str>, expect: &str) {
        let got = sanitise_filename(name);
        assert_eq!(got, expect, "sanitise_filename({name:?})");
        assert!(got.len() <= MAX_FILENAME_BYTES, "{got:?} is too long");
    }

    #[test]
    fn ordinary_names_are_kept() {
        check(Some("report.pdf"), "report.pdf");
        check(Some("Q3-results_final.xlsx"), "Q3-results_final.xlsx");
        check(Some("Übersicht März.pdf"), "Übersicht_März.pdf");
        check(Some("報告書.docx"), "報告書.docx");
    }

    #[test]
    fn path_traversal_keeps_only_the_last_segment() {
        check(Some("../../etc/passwd"), "passwd");
        check(Some("..\\..\\windows\\win.ini"), "win.ini");
        check(Some(".."), FALLBACK_FILENAME);
        check(Some("../"), FALLBACK_FILENAME);
        check(Some("a/.."), FALLBACK_FILENAME);
        check(Some(".bashrc"), "bashrc");
        check(Some("name..."), "name");
    }

    #[test]
    fn control_and_invisible_characters_are_replaced() {
        check(Some("a\r\nb\u{0}c.txt"), "a_b_c.txt");
        check(Some("invoice\u{202E}fdp.exe"), "invoice_fdp.exe");
        check(Some("zero\u{200B}width.txt"), "zero_width.txt");
        check(Some("blank\u{3164}name.txt"), "blank_name.txt");
        check(Some("tab\there"), "tab_here");
    }

    #[test]
    fn punctuation_becomes_single_underscores() {
        check(Some("a  (copy) #2?.txt"), "a_copy_2_.txt");
        check(Some("%2e%2e%2fx"), "2e_2e_2fx");
        check(Some("x:y*z|w\"q<r>s"), "x_y_z_w_q_r_s");
    }

    #[test]
    fn missing_or_empty_names_get_the_fallback() {
        check(None, FALLBACK_FILENAME);
        check(Some(""), FALLBACK_FILENAME);
        check(Some("   "), FALLBACK_FILENAME);
        check(Some("///"), FALLBACK_FILENAME);
        check(Some("\u{202E}"), FALLBACK_FILENAME);
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary_keeping_the_extension() {
        let long = "a".repeat(300) + ".pdf";
        check(Some(&long), &("a".repeat(96) + ".pdf"));
        // Three-byte characters: 96 bytes of stem is 32 of them.
        let wide = "報".repeat(300) + ".pdf";
        check(Some(&wide), &("報".repeat(32) + ".pdf"));
        // Two-byte characters where the budget falls inside one.
        let odd = "x".to_string() + &"é".repeat(300);
        check(Some(&odd), &("x".to_string() + &"é".repeat(49)));
        let odd_ext = "ü".repeat(300) + ".txt";
        check(Some(&odd_ext), &("ü".repeat(48) + ".txt"));
        // A long "extension" is part of the name.
        let no_ext = "x.".to_string() + &"y".repeat(300);
        assert_eq!(sanitise_filename(Some(&no_ext)).len(), MAX_FILENAME_BYTES);
    }

    #[test]
    fn delivery_dir_uses_the_utc_date_and_no_leading_slash() {
        // 2013-05-24T23:59:59Z
        let received = SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_439_999);
        assert_eq!(delivery_dir("", received, "msg_1"), "2013/05/24/msg_1");
        assert_eq!(
            delivery_dir("mail/in", received, "msg_1"),
            "mail/in/2013/05/24/msg_1"
        );
        assert_eq!(
            attachment_key("2013/05/24/msg_1", 3, Some("../a.pdf")),
            "2013/05/24/msg_1/3-a.pdf"
        );
        assert_eq!(raw_key("p/2013/05/24/msg_1"), "p/2013/05/24/msg_1/raw.eml");
    }
}

/// The key as it may appear in logs: the sanitised filename is message content (a header
/// value), so everything after the attachment number of the last segment is replaced.
/// `2026/11/22/msg_1/2-report.pdf` becomes `2026/11/22/msg_1/2-…`; `raw.eml` stays.
pub fn loggable_key(key: &str) -> String {
    let (dir, last) = key.rsplit_once('/').unwrap_or(("", key));
    let last = match last.split_once('-') {
        Some((n, _)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => format!("{n}-…"),
        _ if last == "raw.eml" => last.to_string(),
        _ => "…".to_string(),
    };
    if dir.is_empty() {
        last
    } else {
        format!("{dir}/{last}")
    }
}

#[cfg(test)]
mod loggable_key_tests {
    use super::loggable_key;

    #[test]
    fn logged_keys_never_carry_the_filename() {
        assert_eq!(
            loggable_key("p/2026/11/22/msg_1/2-report.pdf"),
            "p/2026/11/22/msg_1/2-…"
        );
        assert_eq!(
            loggable_key("2026/11/22/msg_1/raw.eml"),
            "2026/11/22/msg_1/raw.eml"
        );
        assert_eq!(loggable_key("probe-secret-name"), "…");
    }
}
