//! Synthetic messages of an exact size for the benchmarks.
//!
//! Small messages are a plain-text mail (the common notification); from
//! [`ATTACHMENT_THRESHOLD`] up they carry a short text part and one base64 attachment that fills
//! the rest, which is what a large real message is. The content is deterministic pseudo-random
//! words and bytes, so every run sends the same bytes and the parser has real work to do
//! (no runs of one character that compress or branch-predict away).
//!
//! Messages are generated with LF line endings, the form `smtp-source -F` expects (it appends
//! CRLF to each line); [`to_crlf`] gives the wire form for our own clients and the parser.

/// From this size up a message is multipart with a base64 attachment.
pub const ATTACHMENT_THRESHOLD: usize = 64 * 1024;
/// Line length of the base64 attachment body (RFC 2045 allows at most 76).
const BASE64_LINE: usize = 76;
/// Bytes of text before the attachment of a large message, at least.
const MIN_TEXT_PART: usize = 2048;
/// Boundary of the multipart messages.
const BOUNDARY: &str = "mxnode-bench-boundary-7f3a";
/// Words the text bodies are made of.
const WORDS: &[&str] = &[
    "invoice",
    "meeting",
    "the",
    "quarterly",
    "report",
    "attached",
    "please",
    "review",
    "and",
    "confirm",
    "delivery",
    "schedule",
    "for",
    "next",
    "week",
    "thanks",
    "regards",
    "team",
    "update",
    "on",
    "project",
    "status",
    "with",
    "budget",
    "figures",
    "übersicht",
    "café",
];

/// A small deterministic generator (xorshift64*): reproducible content without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        // n is tiny compared with 2^64: the bias is irrelevant for test content.
        (self.next() % n as u64) as usize
    }
}

/// A human-readable size label: `10KiB`, `1MiB`, `512B`.
pub fn size_label(size: usize) -> String {
    if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{}MiB", size >> 20)
    } else if size >= 1 << 10 && size.is_multiple_of(1 << 10) {
        format!("{}KiB", size >> 10)
    } else {
        format!("{size}B")
    }
}

/// Parses `10KiB`, `1MiB`, `4096` into bytes.
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: usize = digits.parse().ok()?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// A message of exactly `size` bytes with LF line endings (see the module doc for its shape).
pub fn message_lf(size: usize) -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ size as u64);
    let headers = format!(
        "From: Bench Sender <sender@source.bench.test>\n\
         To: Bench Recipient <rcpt@bench.test>\n\
         Subject: Benchmark message of {}\n\
         Date: Mon, 06 Jan 2025 10:00:00 +0000\n\
         Message-ID: <bench-{size}@source.bench.test>\n\
         MIME-Version: 1.0\n",
        size_label(size)
    );
    let mut out = headers.into_bytes();
    if size < ATTACHMENT_THRESHOLD {
        out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\n");
        out.extend_from_slice(b"Content-Transfer-Encoding: 8bit\n\n");
        fill_text(&mut out, size, &mut rng);
        return out;
    }
    out.extend_from_slice(
        format!("Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\n\n").as_bytes(),
    );
    out.extend_from_slice(format!("--{BOUNDARY}\n").as_bytes());
    out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\n");
    out.extend_from_slice(b"Content-Transfer-Encoding: 8bit\n\n");
    // The attachment is whole base64 lines; the text part before it absorbs the remainder so
    // the total is exact.
    let mut attachment = format!("--{BOUNDARY}\n").into_bytes();
    attachment.extend_from_slice(b"Content-Type: application/octet-stream; name=\"data.bin\"\n");
    attachment.extend_from_slice(b"Content-Disposition: attachment; filename=\"data.bin\"\n");
    attachment.extend_from_slice(b"Content-Transfer-Encoding: base64\n\n");
    let closing = format!("--{BOUNDARY}--\n");
    let fixed = out.len() + attachment.len() + closing.len() + MIN_TEXT_PART;
    let lines = size.saturating_sub(fixed) / (BASE64_LINE + 1);
    fill_base64(&mut attachment, lines, &mut rng);
    attachment.extend_from_slice(closing.as_bytes());
    let text_end = size.saturating_sub(attachment.len()).max(out.len() + 1);
    fill_text(&mut out, text_end, &mut rng);
    out.extend_from_slice(&attachment);
    out
}

/// The wire form of an LF message: every LF preceded by CR, and a leading dot doubled
/// (dot-stuffing, RFC 5321 §4.5.2), ending with CRLF. What `smtp-source -F` puts on the wire.
pub fn to_crlf(lf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lf.len() + lf.len() / 32);
    for line in lf.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Appends lines of words until `out` is exactly `end` bytes long (ending with LF).
fn fill_text(out: &mut Vec<u8>, end: usize, rng: &mut Rng) {
    let mut line = String::new();
    while out.len() < end {
        let room = end - out.len();
        let word = WORDS[rng.below(WORDS.len())];
        if line.len() + 1 + word.len() + 1 > 72.min(room) {
            if line.is_empty() {
                // Less room than one word: pad with letters to land exactly on `end`.
                let pad = room - 1;
                out.extend(std::iter::repeat_n(b'x', pad));
                out.push(b'\n');
                return;
            }
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
            line.clear();
            continue;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
}

/// Appends `lines` full base64 lines of random bytes, each ending with LF.
fn fill_base64(out: &mut Vec<u8>, lines: usize, rng: &mut Rng) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for _ in 0..lines {
        for _ in 0..BASE64_LINE {
            out.push(ALPHABET[rng.below(64)]);
        }
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_exactly_the_requested_size() {
        for size in [10 * 1024, 64 * 1024, 1 << 20, 10 << 20, 1000, 65_537] {
            assert_eq!(message_lf(size).len(), size, "size {size}");
        }
    }

    #[test]
    fn messages_are_lf_only_with_short_lines() {
        for size in [10 * 1024, 1 << 20] {
            let message = message_lf(size);
            assert!(!message.contains(&b'\r'));
            assert!(message.split(|&b| b == b'\n').all(|line| line.len() <= 998));
            assert!(message.ends_with(b"\n"));
        }
    }

    #[test]
    fn crlf_form_has_no_bare_line_feed() {
        let wire = to_crlf(b"a\n.b\nc\n");
        assert_eq!(wire, b"a\r\n..b\r\nc\r\n");
    }

    #[test]
    fn sizes_round_trip_through_labels() {
        for (text, size) in [
            ("10KiB", 10240),
            ("1MiB", 1 << 20),
            ("512", 512),
            ("512B", 512),
        ] {
            assert_eq!(parse_size(text), Some(size), "{text}");
        }
        assert_eq!(size_label(10240), "10KiB");
        assert_eq!(size_label(1 << 20), "1MiB");
        assert_eq!(parse_size("ten"), None);
    }
}
