//! In-memory MIME parsing: the raw bytes of one received message in, a [`ParsedMessage`] out.
//!
//! This module owns the reading of a message as a mail client would: the top-level headers
//! (decoded), the sender and recipient lists, the text and HTML bodies decoded to UTF-8, and the
//! attachments with their transfer encoding removed. It is the `message_id` … `warnings` part of
//! the webhook payload (DESIGN §4); the caller adds envelope, ids, sizes and delivery details.
//!
//! It must never do I/O, never log, never panic, and never put message content into a warning:
//! warnings go into the payload and are fixed, generic sentences. Malformed input yields a
//! best-effort result plus warnings, never an error.
//!
//! **Why the MIME tree is walked here and not by `mailparse::parse_mail`:** `parse_mail`
//! recurses once per nested multipart without any bound, so a hostile message of 100 000 nested
//! multiparts overflows the stack, and a stack overflow aborts the whole daemon (it cannot be
//! caught). This module therefore walks the tree itself, one level at a time, under the depth and
//! part limits of [`ParseLimits`], and uses mailparse for everything within a level: header
//! lines, encoded words, Content-Type and Content-Disposition parameters (RFC 2231),
//! base64 and quoted-printable, charsets. The only framing done here is finding the boundary
//! delimiter lines of a multipart body (RFC 2046 §5.1.1), which is also where the limits apply.
//!
//! **How the bodies are chosen** (the rules of a mail client; `tests/corpus_parse.rs` compares
//! the text with a reference parser's and lists every deliberate difference):
//! - `text` is the concatenation of every text/plain leaf that is not an attachment, in order,
//!   except that inside a `multipart/alternative` only the first alternative that contributes
//!   text/plain counts (the others are renderings of the same content and are dropped). Parts are
//!   joined with a line break. `html` is built the same way from text/html leaves.
//! - A leaf is an attachment when it has `Content-Disposition: attachment` or a file name, when
//!   its type is anything but text/plain or text/html (including other text/* types such as
//!   text/calendar, and `message/rfc822`, whose data is the embedded message, not recursed into),
//!   or when it is a non-first part of a `multipart/related` (the resources of the root part).
//! - A single-part message of type text/plain (or without a Content-Type) is the text; of type
//!   text/html, the html; of any other type, one attachment.
//! - A multipart without a usable boundary is read as text/plain, as RFC 2046 readers do with
//!   unrecognised content.
//!
//! **Charsets:** text is decoded from its declared charset. Text without one (or declared
//! us-ascii, or in a charset that decodes none of its 8-bit bytes) is read as UTF-8 when valid,
//! else as windows-1252; 7-bit ISO-2022-JP is recognised by its escapes. Raw 8-bit header values
//! that are not UTF-8 are read in the charset of the body text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, SystemTime};

use mailparse::body::Body;
use mailparse::{
    DispositionType, MailAddr, MailHeader, MailHeaderMap, ParsedContentType, addrparse_header,
    dateparse, parse_content_disposition, parse_content_type, parse_header,
};
use ring::digest::{Context as DigestContext, SHA256};
use serde::Serialize;

/// Default bound on multipart nesting; real mail rarely goes beyond 5 levels.
pub const MAX_MIME_DEPTH: usize = 32;
/// Default bound on the number of MIME parts (containers and leaves) walked in one message.
pub const MAX_MIME_PARTS: usize = 1000;
/// Hard ceiling on the nesting depth, whatever [`ParseLimits::max_depth`] says: the tree walk
/// recurses once per level, and this keeps its stack use far below any thread's stack size.
pub const MIME_DEPTH_CEILING: usize = 128;
/// Headers kept per header block (the top-level ones are in the payload). A header bomb costs a
/// scan of its lines but no more memory or decoding than this many headers.
pub const MAX_HEADERS_PER_PART: usize = 1000;
/// Distinct warnings kept per message, so a pathological message cannot grow the payload
/// through its warnings.
pub const MAX_WARNINGS: usize = 32;
/// Default bound on one physical line of a header block, in octets without its line ending
/// (`smtp.max_header_line`). RFC 5322 §2.1.1 allows 998; Postfix rewraps lines past 2048.
/// 32 KiB is 32 times the RFC's limit, far beyond what broken senders write, and keeps the
/// decoding temporaries of one line small.
pub const MAX_HEADER_LINE: usize = 32 * 1024;
/// Default bound on one header field, all of its folded lines together with their line
/// endings (`smtp.max_header_field`): Postfix's `header_size_limit` (102400), where Postfix
/// truncates. A field is decoded as a whole, and mailparse's tokens of a hostile value take up
/// to about thirty times its size while it is decoded: this bound keeps that per message small.
pub const MAX_HEADER_FIELD: usize = 100 * 1024;
/// Default bound on one header block (the message's, or a MIME part's), its empty line
/// included (`smtp.max_header_section`). Postfix keeps at most 100 KiB of one header
/// (`header_size_limit`), sendmail 32 KiB of all of them (`MaxHeadersLength`); real header
/// sections are a few KiB, long Received chains and DKIM/ARC sets some tens.
pub const MAX_HEADER_SECTION: usize = 1024 * 1024;
/// Default bound on the addresses of the From, To, Cc and Reply-To headers together
/// (`smtp.max_addresses`), counted before they are parsed (see [`ParseLimits::max_addresses`]).
pub const MAX_ADDRESSES: usize = 1000;

/// Base64 is decoded this many (whitespace-free) input characters at a time, a multiple of 4:
/// small enough that a chunk's input and its decoded bytes are still in the CPU cache when the
/// bytes are hashed, large enough that the per-chunk work is negligible.
const BASE64_CHUNK: usize = 64 * 1024;
/// Plain attachment data is copied and hashed this many bytes at a time, for the same reason.
const COPY_CHUNK: usize = 64 * 1024;

/// Last second that RFC 3339 (four-digit years) can express, 9999-12-31T23:59:59Z.
const LAST_RFC3339_SECOND: i64 = 253_402_300_799;

/// Resource bounds for one parse; past a bound the walk stops descending and records a warning
/// and [`ParsedMessage::limit_exceeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Deepest multipart nesting that is descended into; the top-level part is depth 0, so
    /// `max_depth: 1` reads the children of a top-level multipart but no grandchildren.
    /// Capped at [`MIME_DEPTH_CEILING`].
    pub max_depth: usize,
    /// Most MIME parts (multipart containers and leaves, the top-level part included) walked.
    pub max_parts: usize,
    /// Longest physical line of any header block, in octets without the line ending. A block
    /// with a longer line is not decoded at all.
    pub max_header_line: usize,
    /// Largest header field (its folded lines and their line endings). A block with a larger
    /// field is not decoded at all.
    pub max_header_field: usize,
    /// Largest header block (top-level or of a MIME part), in octets up to and including the
    /// empty line that ends it. A larger block is not decoded at all.
    pub max_header_section: usize,
    /// Most addresses in the top-level From, To, Cc and Reply-To headers together. They are
    /// counted before parsing as one per header plus one per comma (an upper bound: a comma
    /// inside a quoted display name counts too), so a hostile list costs a byte scan, not a
    /// parsed address per two bytes of input.
    pub max_addresses: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_depth: MAX_MIME_DEPTH,
            max_parts: MAX_MIME_PARTS,
            max_header_line: MAX_HEADER_LINE,
            max_header_field: MAX_HEADER_FIELD,
            max_header_section: MAX_HEADER_SECTION,
            max_addresses: MAX_ADDRESSES,
        }
    }
}

/// Which bound of the parse was hit first, so the caller can decide whether to refuse the
/// message (DESIGN §1.3) rather than deliver a partial reading of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// Multipart nesting deeper than [`ParseLimits::max_depth`].
    MimeDepth,
    /// More parts than [`ParseLimits::max_parts`].
    MimeParts,
    /// A header block with more than [`MAX_HEADERS_PER_PART`] headers.
    Headers,
    /// A header line longer than [`ParseLimits::max_header_line`] (the limit).
    HeaderLine(usize),
    /// A header field larger than [`ParseLimits::max_header_field`] (the limit).
    HeaderField(usize),
    /// A header block larger than [`ParseLimits::max_header_section`] (the limit).
    HeaderSection(usize),
    /// More addresses than [`ParseLimits::max_addresses`] (the limit).
    Addresses(usize),
}

/// One address of a From/To/Cc/Reply-To header; groups are flattened into their members.
#[derive(Debug, Clone, Serialize)]
pub struct Mailbox {
    /// Display name, decoded from encoded words; `None` when the address stands alone.
    pub name: Option<String>,
    /// The addr-spec, e.g. `alice@example.org`.
    pub address: String,
}

/// One top-level header, in message order.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    /// Field name as written (without surrounding whitespace).
    pub name: String,
    /// Value unfolded onto one line, with encoded words (RFC 2047) decoded.
    pub value: String,
}

/// A part that is not body text: a file, an inline image, an embedded message.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// File name from Content-Disposition `filename` or else Content-Type `name`, decoded
    /// (RFC 2047 and RFC 2231 including continuations and charsets).
    pub filename: Option<String>,
    /// Lowercase MIME type, e.g. `application/pdf`.
    pub content_type: String,
    /// `attachment` or `inline`: the Content-Disposition when it is one of these, otherwise
    /// `inline` for a part with a Content-ID (a resource referenced from the HTML) and
    /// `attachment` for everything else.
    pub disposition: String,
    /// Content-ID as in the header, e.g. `<part1@x>`, for matching `cid:` references.
    pub content_id: Option<String>,
    /// Content with the transfer encoding (base64, quoted-printable) removed. For
    /// `message/rfc822` the embedded message; for a multipart not descended into because of
    /// the depth limit, the whole unparsed MIME entity (headers and body).
    pub data: Vec<u8>,
    /// SHA-256 of `data`, lowercase hex, for receivers that de-duplicate or verify uploads.
    pub sha256: String,
}

/// Everything the webhook payload says about the message itself.
#[derive(Debug, Clone, Default)]
pub struct ParsedMessage {
    /// First Message-ID header, trimmed, e.g. `<abc@example.org>`.
    pub message_id: Option<String>,
    /// First Subject header, decoded.
    pub subject: Option<String>,
    /// First Date header as RFC 3339 UTC; `None` (with a warning) when it cannot be read.
    pub date: Option<String>,
    /// Addresses of all From headers.
    pub from: Vec<Mailbox>,
    /// Addresses of all To headers.
    pub to: Vec<Mailbox>,
    /// Addresses of all Cc headers.
    pub cc: Vec<Mailbox>,
    /// Addresses of all Reply-To headers.
    pub reply_to: Vec<Mailbox>,
    /// Top-level headers in message order (at most [`MAX_HEADERS_PER_PART`]).
    pub headers: Vec<Header>,
    /// The text/plain body decoded to UTF-8 (see the module doc for which parts count).
    pub text: Option<String>,
    /// The text/html body decoded to UTF-8.
    pub html: Option<String>,
    /// Every part that is not body text, in message order.
    pub attachments: Vec<Attachment>,
    /// Problems that did not stop parsing: short, generic, never message content.
    pub warnings: Vec<String>,
    /// The first resource bound that was hit, if any; the reading is then incomplete.
    pub limit_exceeded: Option<LimitExceeded>,
}

impl ParsedMessage {
    /// Bytes this reading holds on the heap, about: every string and attachment, plus a fixed
    /// allowance per item for its struct and allocation. What the in-flight budget is charged
    /// for a parsed message (issue 16; `deliver`).
    pub fn held_bytes(&self) -> usize {
        const ITEM: usize = 64;
        let opt = |s: &Option<String>| s.as_ref().map_or(0, |s| s.capacity() + ITEM);
        let mailboxes = |list: &[Mailbox]| -> usize {
            list.iter()
                .map(|m| opt(&m.name) + m.address.capacity() + ITEM)
                .sum()
        };
        opt(&self.message_id)
            + opt(&self.subject)
            + opt(&self.date)
            + mailboxes(&self.from)
            + mailboxes(&self.to)
            + mailboxes(&self.cc)
            + mailboxes(&self.reply_to)
            + self
                .headers
                .iter()
                .map(|h| h.name.capacity() + h.value.capacity() + ITEM)
                .sum::<usize>()
            + opt(&self.text)
            + opt(&self.html)
            + self
                .attachments
                .iter()
                .map(|a| {
                    opt(&a.filename)
                        + a.content_type.capacity()
                        + a.disposition.capacity()
                        + opt(&a.content_id)
                        + a.data.capacity()
                        + a.sha256.capacity()
                        + 4 * ITEM
                })
                .sum::<usize>()
            + self
                .warnings
                .iter()
                .map(|w| w.capacity() + ITEM)
                .sum::<usize>()
    }
}

/// Parses one message. Never panics and never fails: problems become [`ParsedMessage::warnings`].
///
/// The input is the message as received after DATA (CRLF line endings, dot-unstuffed); LF-only
/// input is read as well. Time is linear in the input size times the nesting depth
/// actually descended (each level scans its own body for delimiter lines).
pub fn parse(raw: &[u8], limits: &ParseLimits) -> ParsedMessage {
    // The walk below is written not to panic, but it calls into third-party parsing code; a panic
    // there must cost this one message its parsed content, not the daemon its process. (The
    // process's panic hook still runs; mailparse's panic messages carry no message content.)
    catch_unwind(AssertUnwindSafe(|| parse_unguarded(raw, limits))).unwrap_or_else(|_| {
        ParsedMessage {
            warnings: vec!["internal parser error; the message could not be read".to_string()],
            ..ParsedMessage::default()
        }
    })
}

fn parse_unguarded(raw: &[u8], limits: &ParseLimits) -> ParsedMessage {
    let mut walker = Walker {
        limits: ParseLimits {
            max_depth: limits.max_depth.min(MIME_DEPTH_CEILING),
            ..*limits
        },
        parts_seen: 0,
        text_parts: 0,
        html_parts: 0,
        body_charset: None,
        message: ParsedMessage::default(),
    };
    if raw.is_empty() {
        walker.warn("message is empty");
        return walker.message;
    }
    let root = walker.read_entity(raw, DefaultType::TextPlain);
    walker.walk_entity(&root, Context::TOP_LEVEL, 0);
    walker.read_top_level_headers(&root.headers);
    walker.message
}

/// Per-message state of the tree walk: the bounds, the part budget spent, and the result being
/// built.
struct Walker {
    limits: ParseLimits,
    parts_seen: usize,
    /// Body parts appended to `text` and `html` so far; an alternative that raises one of
    /// these has given that body.
    text_parts: usize,
    html_parts: usize,
    /// Declared charset of the first body text, the best guess for raw 8-bit headers.
    body_charset: Option<String>,
    message: ParsedMessage,
}

/// What the position of a part in the tree allows it to contribute.
#[derive(Debug, Clone, Copy)]
struct Context {
    /// False for the non-root parts of a `multipart/related`: they are resources, not body.
    body_allowed: bool,
    /// An earlier alternative already gave the text/plain body; later ones are dropped.
    text_taken: bool,
    /// An earlier alternative already gave the text/html body; later ones are dropped.
    html_taken: bool,
}

impl Context {
    const TOP_LEVEL: Context = Context {
        body_allowed: true,
        text_taken: false,
        html_taken: false,
    };
}

/// Content-Type assumed when a part has none (RFC 2045 §5.2, RFC 2046 §5.1.5).
#[derive(Debug, Clone, Copy)]
enum DefaultType {
    TextPlain,
    MessageRfc822,
}

/// One MIME entity split into its header block and body, with its Content-Type read.
struct Entity<'a> {
    /// The whole entity, headers included.
    raw: &'a [u8],
    headers: Vec<MailHeader<'a>>,
    body: &'a [u8],
    /// Content-Type with a lowercase, trimmed mime type; the default one when absent or invalid.
    ctype: ParsedContentType,
}

/// How a leaf part ends up in the result.
enum Role {
    Text,
    Html,
    Attachment,
}

impl Walker {
    fn warn(&mut self, warning: &str) {
        let warnings = &mut self.message.warnings;
        if warnings.len() < MAX_WARNINGS && !warnings.iter().any(|w| w == warning) {
            warnings.push(warning.to_string());
        }
    }

    fn exceed(&mut self, limit: LimitExceeded, warning: &str) {
        self.message.limit_exceeded.get_or_insert(limit);
        self.warn(warning);
    }

    /// Splits an entity into headers and body. Unlike `mailparse::parse_headers`, which refuses
    /// the whole block, a line that cannot start a header (a continuation line with nothing to
    /// continue, a line without a field name, a lone CR) is skipped with a warning.
    ///
    /// A block past [`ParseLimits::max_header_line`] or [`ParseLimits::max_header_section`]
    /// is not decoded at all: the entity comes back empty and the limit is recorded.
    fn read_entity<'a>(&mut self, raw: &'a [u8], default: DefaultType) -> Entity<'a> {
        if let Err(limit) = check_header_block(raw, &self.limits) {
            self.exceed(
                limit,
                match limit {
                    LimitExceeded::HeaderLine(_) => "header line too long; the part was not read",
                    LimitExceeded::HeaderField(_) => {
                        "header field too large; the part was not read"
                    }
                    _ => "header section too large; the part was not read",
                },
            );
            return Entity {
                raw: &[],
                headers: Vec::new(),
                body: &[],
                ctype: default_ctype(default),
            };
        }
        let mut headers = Vec::new();
        let mut ix = 0;
        while let Some(rest) = raw.get(ix..).filter(|rest| !rest.is_empty()) {
            match rest {
                [b'\n', ..] => {
                    ix += 1;
                    break;
                }
                [b'\r', b'\n', ..] => {
                    ix += 2;
                    break;
                }
                [b'\r', ..] => {
                    self.warn("header block: skipped a stray carriage return");
                    ix += 1;
                    continue;
                }
                _ => {}
            }
            match parse_header(rest) {
                Ok((header, used)) if used > 0 => {
                    ix += used;
                    // mailparse reads a line without a colon as a header with an empty value.
                    let key = header.get_key_raw();
                    let has_colon = rest.get(key.len()) == Some(&b':');
                    if !has_colon || !is_field_name(key) {
                        self.warn("header block: skipped a line that is not a header");
                    } else if headers.len() < MAX_HEADERS_PER_PART {
                        headers.push(header);
                    } else {
                        self.exceed(
                            LimitExceeded::Headers,
                            "header block: too many headers; the rest were ignored",
                        );
                    }
                }
                // mailparse refuses a header that starts with a space: an overhanging line of
                // nothing. Drop that line and read on.
                _ => {
                    self.warn("header block: skipped a continuation line without a header");
                    ix += line_len(rest);
                }
            }
        }
        let body = raw.get(ix..).unwrap_or_default();
        let ctype = match headers.get_first_value("Content-Type") {
            Some(value) => {
                let value = value.trim();
                let type_end = value.find(';').unwrap_or(value.len());
                let mut ctype = match value[..type_end].trim_end().find(char::is_whitespace) {
                    // `multipart/mixed boundary="x"`: a parameter without the `;` before it.
                    Some(space) => {
                        self.warn("Content-Type parameter without separator");
                        let (mimetype, params) = value.split_at(space);
                        parse_content_type(&format!("{mimetype};{params}"))
                    }
                    None => parse_content_type(value),
                };
                ctype.mimetype = ctype.mimetype.trim().to_string();
                let (main, sub) = ctype.mimetype.split_once('/').unwrap_or_default();
                if main.is_empty() || sub.is_empty() {
                    self.warn("invalid Content-Type; read as text/plain");
                    ctype.mimetype = "text/plain".to_string();
                }
                ctype
            }
            None => default_ctype(default),
        };
        Entity {
            raw,
            headers,
            body,
            ctype,
        }
    }

    /// Fills in the header fields of the result. Runs after the walk: a header value in raw
    /// 8-bit that is not UTF-8 (RFC 6532) has no charset of its own, and is decoded in the charset
    /// of the body text, as mail clients do, or else as windows-1252.
    fn read_top_level_headers(&mut self, headers: &[MailHeader<'_>]) {
        let fallback = self.body_charset.clone();
        let fallback = fallback.as_deref().unwrap_or("windows-1252");
        // Such a value is decoded to UTF-8 and put back through mailparse as a header line of
        // its own, so unfolding, encoded words and address parsing stay with mailparse.
        let repaired_lines: Vec<Option<String>> = headers
            .iter()
            .map(|h| {
                let raw = h.get_value_raw();
                let decoded = std::str::from_utf8(raw)
                    .is_err()
                    .then(|| decode_with_label(raw, fallback));
                decoded.map(|value| format!("X: {value}"))
            })
            .collect();
        if repaired_lines.iter().any(Option::is_some) {
            self.warn(
                "8-bit header without encoding; decoded in the body's charset or windows-1252",
            );
        }
        let repaired: Vec<Option<MailHeader<'_>>> = repaired_lines
            .iter()
            .map(|line| Some(parse_header(line.as_ref()?.as_bytes()).ok()?.0))
            .collect();
        let value_of = |i: usize| repaired[i].as_ref().unwrap_or(&headers[i]);
        let named = |name: &'static str| {
            (0..headers.len())
                .filter(move |&i| headers[i].get_key_ref().trim().eq_ignore_ascii_case(name))
        };

        let message = &mut self.message;
        message.headers = (0..headers.len())
            .map(|i| Header {
                name: headers[i].get_key().trim().to_string(),
                value: value_of(i).get_value(),
            })
            .collect();
        message.message_id = named("Message-ID")
            .next()
            .map(|i| value_of(i).get_value().trim().to_string());
        message.subject = named("Subject").next().map(|i| value_of(i).get_value());
        if let Some(date) = named("Date").next().map(|i| value_of(i).get_value()) {
            message.date = rfc3339_date(&date);
            if message.date.is_none() {
                self.warn("Date header could not be read");
            }
        }
        // Addresses are counted before any is parsed: mailparse allocates a parsed address (and
        // this module a `Mailbox`) per two bytes of `@,@,@,…`, a hundredfold the input.
        let addresses: usize = ["From", "To", "Cc", "Reply-To"]
            .into_iter()
            .flat_map(|name| named(name))
            .map(|i| 1 + memchr::memchr_iter(b',', headers[i].get_value_raw()).count())
            .sum();
        if addresses > self.limits.max_addresses {
            self.exceed(
                LimitExceeded::Addresses(self.limits.max_addresses),
                "too many addresses; the address lists were not read",
            );
            return;
        }
        for (name, warning) in [
            ("From", "From header: address list could not be read"),
            ("To", "To header: address list could not be read"),
            ("Cc", "Cc header: address list could not be read"),
            (
                "Reply-To",
                "Reply-To header: address list could not be read",
            ),
        ] {
            let mut mailboxes = Vec::new();
            let mut failed = false;
            for i in named(name) {
                match addrparse_header(value_of(i)) {
                    Ok(list) => mailboxes.extend(list.iter().flat_map(flatten_addr)),
                    Err(_) => failed = true,
                }
            }
            if failed {
                self.warn(warning);
            }
            let message = &mut self.message;
            match name {
                "From" => message.from = mailboxes,
                "To" => message.to = mailboxes,
                "Cc" => message.cc = mailboxes,
                _ => message.reply_to = mailboxes,
            }
        }
    }

    /// Reads one part and, for a multipart, its children. Recursion depth is bounded by
    /// `limits.max_depth`, itself capped by [`MIME_DEPTH_CEILING`].
    fn walk_entity(&mut self, entity: &Entity<'_>, context: Context, depth: usize) {
        if self.parts_seen >= self.limits.max_parts {
            self.exceed(
                LimitExceeded::MimeParts,
                "too many MIME parts; the rest were ignored",
            );
            return;
        }
        self.parts_seen += 1;

        // Nothing between two delimiter lines: no part to read, and no alternative taken.
        if entity.headers.is_empty() && entity.body.trim_ascii().is_empty() && depth > 0 {
            return;
        }
        if !entity.ctype.mimetype.starts_with("multipart/") {
            self.read_leaf(entity, context, false);
            return;
        }
        let boundary = entity.ctype.params.get("boundary").map(String::as_str);
        let Some(boundary) = boundary.filter(|b| !b.is_empty()) else {
            self.warn("multipart without boundary; read as text");
            self.read_leaf(entity, context, true);
            return;
        };
        if depth >= self.limits.max_depth {
            self.exceed(
                LimitExceeded::MimeDepth,
                "MIME nesting too deep; the deepest multipart was kept unparsed as an attachment",
            );
            let mut digest = DigestContext::new(&SHA256);
            let data = copy_hashed(entity.raw, &mut digest);
            self.push_attachment(entity, data, digest);
            return;
        }
        // Children beyond the remaining part budget would be refused one by one anyway; not
        // slicing them keeps a million-part body from costing a million-entry vector.
        let budget = self.limits.max_parts - self.parts_seen;
        let Some(split) = split_multipart(entity.body, boundary.as_bytes(), budget) else {
            self.warn("multipart boundary not found; read as text");
            self.read_leaf(entity, context, true);
            return;
        };
        if !split.terminated && !split.over_budget {
            self.warn("multipart without closing boundary");
        }
        if split.over_budget {
            self.exceed(
                LimitExceeded::MimeParts,
                "too many MIME parts; the rest were ignored",
            );
        }

        let subtype = &entity.ctype.mimetype["multipart/".len()..];
        let child_default = if subtype == "digest" {
            DefaultType::MessageRfc822
        } else {
            DefaultType::TextPlain
        };
        let mut child_context = context;
        for (index, child) in split.parts.into_iter().enumerate() {
            if subtype == "related" && index > 0 {
                child_context.body_allowed = false;
            }
            let before = (self.text_parts, self.html_parts);
            let child = self.read_entity(child, child_default);
            self.walk_entity(&child, child_context, depth + 1);
            if subtype == "alternative" {
                // Once one alternative has given a text/plain (or text/html) body, later
                // alternatives are other renderings of the same content.
                child_context.text_taken |= self.text_parts > before.0;
                child_context.html_taken |= self.html_parts > before.1;
            }
        }
    }

    /// Handles a part that is not descended into: body text or attachment.
    fn read_leaf(&mut self, entity: &Entity<'_>, context: Context, as_text: bool) {
        let disposition = entity
            .headers
            .get_first_value("Content-Disposition")
            .map(|v| parse_content_disposition(&v));
        let filename = attachment_filename(entity, disposition.as_ref());
        let explicit_attachment = disposition
            .as_ref()
            .is_some_and(|d| d.disposition == DispositionType::Attachment);
        let mimetype = entity.ctype.mimetype.as_str();
        let role = if explicit_attachment || filename.is_some() || !context.body_allowed {
            Role::Attachment
        } else if as_text || mimetype == "text/plain" {
            Role::Text
        } else if mimetype == "text/html" {
            Role::Html
        } else {
            Role::Attachment
        };
        match role {
            Role::Text if context.text_taken => {}
            Role::Html if context.html_taken => {}
            Role::Text => {
                let text = self.decode_text(entity);
                append_body(&mut self.message.text, text);
                self.text_parts += 1;
            }
            Role::Html => {
                let html = self.decode_text(entity);
                append_body(&mut self.message.html, html);
                self.html_parts += 1;
            }
            Role::Attachment => {
                let mut digest = DigestContext::new(&SHA256);
                let data = self.decode_transfer_hashed(entity, Some(&mut digest));
                self.push_attachment(entity, data, digest);
            }
        }
    }

    /// Adds an attachment; `digest` has hashed exactly `data`.
    fn push_attachment(&mut self, entity: &Entity<'_>, data: Vec<u8>, digest: DigestContext) {
        let disposition = entity
            .headers
            .get_first_value("Content-Disposition")
            .map(|v| parse_content_disposition(&v));
        let filename = attachment_filename(entity, disposition.as_ref());
        let content_id = entity
            .headers
            .get_first_value("Content-ID")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        let disposition = match disposition.map(|d| d.disposition) {
            Some(DispositionType::Inline) => "inline",
            // `Content-Disposition: ; filename=…` says nothing about the disposition.
            Some(DispositionType::Extension(empty)) if empty.is_empty() && content_id.is_some() => {
                "inline"
            }
            Some(_) => "attachment",
            None if content_id.is_some() => "inline",
            None => "attachment",
        };
        let sha256 = hex(digest.finish().as_ref());
        self.message.attachments.push(Attachment {
            filename,
            content_type: entity.ctype.mimetype.clone(),
            disposition: disposition.to_string(),
            content_id,
            data,
            sha256,
        });
    }

    /// Removes the Content-Transfer-Encoding. Undecodable base64 is decoded as far as it goes.
    fn decode_transfer(&mut self, entity: &Entity<'_>) -> Vec<u8> {
        self.decode_transfer_hashed(entity, None)
    }

    /// [`Walker::decode_transfer`], also feeding the result to `digest` when given. Base64 (what
    /// large attachments are) is hashed chunk by chunk as it is decoded, while each chunk is
    /// still in the cache, instead of in a second pass over the whole result.
    fn decode_transfer_hashed(
        &mut self,
        entity: &Entity<'_>,
        mut digest: Option<&mut DigestContext>,
    ) -> Vec<u8> {
        let encoding = entity
            .headers
            .get_first_value("Content-Transfer-Encoding")
            .map_or(TransferEncoding::Identity, |v| transfer_encoding(&v));
        let body = entity.body;
        let copy = |digest: Option<&mut DigestContext>| match digest {
            Some(digest) => copy_hashed(body, digest),
            None => body.to_vec(),
        };
        let name = match encoding {
            TransferEncoding::Identity => return copy(digest),
            TransferEncoding::Unknown => {
                self.warn("unknown Content-Transfer-Encoding; kept undecoded");
                return copy(digest);
            }
            TransferEncoding::Base64 => "base64",
            TransferEncoding::QuotedPrintable => "quoted-printable",
        };
        let decoded = match encoding {
            // mailparse's own decoder, without its byte-by-byte copy (see `decode_base64`).
            TransferEncoding::Base64 => decode_base64(body, |chunk| {
                if let Some(digest) = digest.as_deref_mut() {
                    digest.update(chunk);
                }
            })
            .map_err(|_| ()),
            _ => match Body::new(body, &entity.ctype, &Some(name.to_string())) {
                Body::Base64(encoded) | Body::QuotedPrintable(encoded) => {
                    encoded.get_decoded().map_err(|_| ())
                }
                // Body::new maps exactly these two names to the encoded variants.
                _ => Ok(body.to_vec()),
            }
            .inspect(|bytes| {
                if let Some(digest) = digest.as_deref_mut() {
                    digest.update(bytes);
                }
            }),
        };
        let fallback = match decoded {
            Ok(bytes) => return bytes,
            Err(()) if encoding == TransferEncoding::Base64 => {
                self.warn("invalid base64; decoded as far as possible");
                base64_best_effort(body, &entity.ctype)
            }
            Err(()) => {
                self.warn("invalid quoted-printable; kept undecoded");
                body.to_vec()
            }
        };
        // The failed decode may have hashed part of its output: start over on what is kept.
        if let Some(digest) = digest {
            *digest = DigestContext::new(&SHA256);
            digest.update(&fallback);
        }
        fallback
    }

    /// Decodes a text part to UTF-8 from its declared charset. Undeclared (or us-ascii
    /// declared) 8-bit text is read as UTF-8 when it is valid UTF-8 and as windows-1252
    /// otherwise (the superset of Latin-1 that such mail is in practice); 7-bit text with
    /// ISO-2022-JP escapes as ISO-2022-JP. So is text whose declared charset decoded none of
    /// its 8-bit bytes: a label the charset crate does not know, or the common Latin-1 text
    /// labelled UTF-8, which would otherwise be all U+FFFD where the letters were.
    fn decode_text(&mut self, entity: &Entity<'_>) -> String {
        let bytes = self.decode_transfer(entity);
        let declared = entity
            .ctype
            .params
            .get("charset")
            .map(|c| c.trim())
            .filter(|c| !c.is_empty() && !is_ascii_label(c));
        if let Some(label) = declared {
            let decoded = decode_with_label(&bytes, label);
            if !charset_was_unknown(&bytes, &decoded) {
                self.body_charset.get_or_insert_with(|| label.to_string());
                return decoded;
            }
            self.warn("text not in its declared charset; decoded as UTF-8 or windows-1252");
            return utf8_or_windows_1252(bytes);
        }
        if looks_like_iso_2022_jp(&bytes) {
            self.warn("ISO-2022-JP text without charset; decoded as ISO-2022-JP");
            return decode_with_label(&bytes, "iso-2022-jp");
        }
        if !bytes.is_ascii() && std::str::from_utf8(&bytes).is_err() {
            self.warn("8-bit text without charset; decoded as windows-1252");
        }
        utf8_or_windows_1252(bytes)
    }
}

fn default_ctype(default: DefaultType) -> ParsedContentType {
    let mut ctype = ParsedContentType::default();
    if let DefaultType::MessageRfc822 = default {
        ctype.mimetype = "message/rfc822".to_string();
    }
    ctype
}

/// RFC 5322 field name: printable US-ASCII except the colon (which mailparse already split
/// off); whitespace around it is obsolete syntax and tolerated.
fn is_field_name(raw: &[u8]) -> bool {
    let name = raw.trim_ascii();
    !name.is_empty() && name.iter().all(|b| (33..=126).contains(b))
}

/// Checks a header block against the line, field and section bounds before anything in it is
/// decoded: one pass over its bytes, line by line (an empty line ends the block; a lone CR is no
/// line ending, so it counts towards the line; a line starting with a space or tab continues
/// the field before it).
fn check_header_block(raw: &[u8], limits: &ParseLimits) -> Result<(), LimitExceeded> {
    let mut start = 0;
    let mut field_start = 0;
    for end in memchr::memchr_iter(b'\n', raw).chain(std::iter::once(raw.len())) {
        let line = &raw[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > limits.max_header_line {
            return Err(LimitExceeded::HeaderLine(limits.max_header_line));
        }
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            field_start = start;
        }
        if (end + 1).min(raw.len()) - field_start > limits.max_header_field {
            return Err(LimitExceeded::HeaderField(limits.max_header_field));
        }
        let block_len = (end + 1).min(raw.len());
        if block_len > limits.max_header_section {
            return Err(LimitExceeded::HeaderSection(limits.max_header_section));
        }
        if line.is_empty() {
            break;
        }
        start = end + 1;
    }
    Ok(())
}

/// Length of the first line of `bytes`, its LF included.
fn line_len(bytes: &[u8]) -> usize {
    // memchr: delimiter search visits every line of a multipart body, megabytes of base64.
    memchr::memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1)
}

fn flatten_addr(addr: &MailAddr) -> Vec<Mailbox> {
    // mailparse keeps the comma after a group's `;` in the next address (`Team: a@x;, b@y`).
    let single = |info: &mailparse::SingleInfo| Mailbox {
        name: info.display_name.clone(),
        address: info
            .addr
            .trim_start_matches([',', ' ', '\t'])
            .trim_end()
            .to_string(),
    };
    match addr {
        MailAddr::Single(info) => vec![single(info)],
        MailAddr::Group(group) => group.addrs.iter().map(single).collect(),
    }
}

/// Reads a Date header into RFC 3339 UTC, or `None` when it is not a date this side of
/// year 10000.
fn rfc3339_date(value: &str) -> Option<String> {
    let seconds = dateparse(value).ok()?;
    // mailparse returns 0 for a value in which it found no year at all ("Whenever"), so 0 is
    // only believed when the value names 1970.
    if seconds == 0 && !value.contains("1970") {
        return None;
    }
    if !(0..=LAST_RFC3339_SECOND).contains(&seconds) {
        return None;
    }
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?);
    Some(humantime::format_rfc3339_seconds(time).to_string())
}

/// File name of a part: Content-Disposition `filename`, else Content-Type `name`. mailparse has
/// already decoded encoded words (RFC 2047) and RFC 2231 parameters; an RFC 2231 value in a
/// charset it does not know stays under the `*` key and is read here as far as it is ASCII.
fn attachment_filename(
    entity: &Entity<'_>,
    disposition: Option<&mailparse::ParsedContentDisposition>,
) -> Option<String> {
    let from = |params: &BTreeMap<String, String>, key: &str| -> Option<String> {
        if let Some(value) = params.get(key) {
            return Some(value.clone());
        }
        let encoded = params.get(&format!("{key}*"))?;
        let value = encoded.splitn(3, '\'').nth(2).unwrap_or(encoded);
        Some(value.to_string())
    };
    let name = disposition
        .and_then(|d| from(&d.params, "filename"))
        .or_else(|| from(&entity.ctype.params, "name"))?;
    // `name==?utf-8?B?…?=`: an encoded word glued to the `=` escapes mailparse's decoding of
    // the whole header value; decode it on its own.
    let name = match name.contains("=?") {
        true => parse_header(format!("X: {name}").as_bytes()).map_or(name, |(h, _)| h.get_value()),
        false => name,
    };
    Some(name.trim().to_string()).filter(|name| !name.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferEncoding {
    Identity,
    Base64,
    QuotedPrintable,
    Unknown,
}

/// Reads a Content-Transfer-Encoding value, tolerating the spellings senders use (`7-bit`,
/// `8bits`, `quoted printable`, `Base64 `, a trailing comment or parameter).
fn transfer_encoding(value: &str) -> TransferEncoding {
    let value = value.split([';', '(']).next().unwrap_or_default();
    let name: String = value
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-' && *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match name.as_str() {
        "" | "7bit" | "8bit" | "8bits" | "binary" => TransferEncoding::Identity,
        "base64" => TransferEncoding::Base64,
        "quotedprintable" => TransferEncoding::QuotedPrintable,
        _ => TransferEncoding::Unknown,
    }
}

/// Copies `bytes` and feeds them to `digest`, a cache-sized chunk at a time.
fn copy_hashed(bytes: &[u8], digest: &mut DigestContext) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.chunks(COPY_CHUNK) {
        out.extend_from_slice(chunk);
        digest.update(chunk);
    }
    out
}

/// Base64 exactly as mailparse decodes it (ASCII whitespace removed, then data-encoding's
/// `BASE64_MIME_PERMISSIVE`), but in [`BASE64_CHUNK`]-character chunks: the whitespace-free
/// runs (whole lines) go into a small buffer, each full buffer is decoded straight into the
/// result and the decoded chunk is handed to `on_decoded` (the attachment's hash) while it is
/// still in the cache. No copy of the whole cleaned input is made, and nothing is collected byte
/// by byte. `base64_decodes_exactly_as_mailparse` pins the equality.
fn decode_base64(
    body: &[u8],
    on_decoded: impl FnMut(&[u8]),
) -> Result<Vec<u8>, data_encoding::DecodeError> {
    decode_base64_chunked(body, BASE64_CHUNK, on_decoded)
}

/// [`decode_base64`] with a chunk of `chunk` characters (a multiple of 4). Decoding in chunks
/// gives exactly what decoding the whole does: data-encoding decodes a padded encoding one
/// 4-character block at a time (padding may end any block, as in concatenated encodings), and
/// only the last chunk can have a length that is not a multiple of 4.
fn decode_base64_chunked(
    body: &[u8],
    chunk: usize,
    mut on_decoded: impl FnMut(&[u8]),
) -> Result<Vec<u8>, data_encoding::DecodeError> {
    debug_assert!(chunk > 0 && chunk.is_multiple_of(4));
    let engine = &data_encoding::BASE64_MIME_PERMISSIVE;
    // Whitespace makes the decoded size a little smaller than this, never larger.
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 3);
    let mut pending = Vec::with_capacity(chunk.min(body.len()));
    let mut decode = |pending: &mut Vec<u8>| -> Result<(), data_encoding::DecodeError> {
        let start = out.len();
        out.resize(start + engine.decode_len(pending.len())?, 0);
        let written = engine
            .decode_mut(pending, &mut out[start..])
            .map_err(|partial| partial.error)?;
        out.truncate(start + written);
        on_decoded(&out[start..]);
        pending.clear();
        Ok(())
    };
    let mut push = |mut run: &[u8]| -> Result<(), data_encoding::DecodeError> {
        while !run.is_empty() {
            let (now, rest) = run.split_at(run.len().min(chunk - pending.len()));
            pending.extend_from_slice(now);
            run = rest;
            if pending.len() == chunk {
                decode(&mut pending)?;
            }
        }
        Ok(())
    };
    // ASCII whitespace is space, tab, LF, form feed and CR; memchr looks for three at a time.
    if memchr::memchr2(b'\t', b'\x0c', body).is_none() {
        let mut rest = body;
        while let Some(at) = memchr::memchr3(b'\r', b'\n', b' ', rest) {
            push(&rest[..at])?;
            rest = &rest[at + 1..];
        }
        push(rest)?;
    } else {
        for run in body.split(u8::is_ascii_whitespace) {
            push(run)?;
        }
    }
    // The rest, shorter than a chunk (and the length error, when it is not a multiple of 4).
    decode(&mut pending)?;
    Ok(out)
}

/// Decodes base64 that mailparse refused: characters outside the alphabet are dropped, each
/// padded segment is decoded on its own (some senders concatenate padded chunks), and a
/// trailing group too short to hold a byte is dropped. Decoding stays with mailparse.
fn base64_best_effort(body: &[u8], ctype: &ParsedContentType) -> Vec<u8> {
    let mut decoded = Vec::new();
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/' || *b == b'=';
    let cleaned: Vec<u8> = body.iter().copied().filter(alphabet).collect();
    for segment in cleaned.split(|&b| b == b'=').filter(|s| !s.is_empty()) {
        let usable = segment.len() - usize::from(segment.len() % 4 == 1);
        let mut padded = segment[..usable].to_vec();
        while padded.len() % 4 != 0 {
            padded.push(b'=');
        }
        if let Body::Base64(encoded) = Body::new(&padded, ctype, &Some("base64".to_string())) {
            decoded.extend(encoded.get_decoded().unwrap_or_default());
        }
    }
    decoded
}

/// Labels meaning US-ASCII, which real senders also put on 8-bit text.
fn is_ascii_label(label: &str) -> bool {
    ["us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "us"]
        .iter()
        .any(|l| label.eq_ignore_ascii_case(l))
}

/// Decodes bytes as text in the charset `label` through mailparse (the charset crate: the
/// WHATWG encodings plus UTF-7). An unknown label decodes every 8-bit byte to U+FFFD.
fn decode_with_label(bytes: &[u8], label: &str) -> String {
    let ctype = ParsedContentType {
        mimetype: "text/plain".to_string(),
        charset: label.to_string(),
        params: BTreeMap::new(),
    };
    match Body::new(bytes, &ctype, &None) {
        Body::SevenBit(text) | Body::EightBit(text) => text.get_as_string(),
        Body::Binary(binary) => binary.get_as_string(),
        Body::Base64(encoded) | Body::QuotedPrintable(encoded) => encoded.get_decoded_as_string(),
    }
    .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

/// True when decoding with a declared charset gave nothing a charset would give: 8-bit input
/// where every 8-bit byte became U+FFFD (mailparse's answer to a label it does not know), or
/// the single U+FFFD of the WHATWG "replacement" encoding (ISO-2022-KR, HZ-GB-2312, …).
fn charset_was_unknown(bytes: &[u8], decoded: &str) -> bool {
    // The replacement encoding's labels include 7-bit ones (ISO-2022-KR).
    if decoded == "\u{FFFD}" {
        return bytes != "\u{FFFD}".as_bytes();
    }
    if bytes.is_ascii() {
        return false;
    }
    decoded.chars().count() == bytes.len()
        && decoded.chars().zip(bytes).all(|(c, &b)| {
            if b < 0x80 {
                c == char::from(b)
            } else {
                c == '\u{FFFD}'
            }
        })
}

/// Text in UTF-8 when it is valid UTF-8 (which 8-bit text in other charsets almost never is),
/// else in windows-1252 (which decodes every byte, and is what "Latin-1" mail really is).
fn utf8_or_windows_1252(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|error| decode_with_label(error.as_bytes(), "windows-1252"))
}

/// ISO-2022-JP is 7-bit; its escape sequences into JIS X 0208 give it away even without a label.
fn looks_like_iso_2022_jp(bytes: &[u8]) -> bool {
    bytes
        .windows(3)
        .any(|w| w == b"\x1b$B" || w == b"\x1b$@" || w == b"\x1b(J")
}

/// Appends a body part, starting it on a new line.
fn append_body(body: &mut Option<String>, part: String) {
    match body {
        None => *body = Some(part),
        Some(existing) => {
            if !existing.is_empty() && !existing.ends_with('\n') {
                existing.push_str("\r\n");
            }
            existing.push_str(&part);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The parts of a multipart body, split at its delimiter lines.
struct Split<'a> {
    parts: Vec<&'a [u8]>,
    /// The close delimiter (`--boundary--`) was found.
    terminated: bool,
    /// More parts than the budget; the rest were not sliced.
    over_budget: bool,
}

/// Splits a multipart body at its delimiter lines (see [`delimiter_line`]). The line break
/// before a delimiter belongs to the delimiter. The preamble and epilogue are dropped. Without a
/// close delimiter the last part runs to the end. `None` when no delimiter line exists.
fn split_multipart<'a>(body: &'a [u8], boundary: &[u8], budget: usize) -> Option<Split<'a>> {
    let mut split = Split {
        parts: Vec::new(),
        terminated: false,
        over_budget: false,
    };
    let mut found = false;
    let mut part_start: Option<usize> = None;
    let mut line_start = 0;
    while line_start < body.len() {
        let line_end = line_start + line_len(&body[line_start..]);
        let line = &body[line_start..line_end];
        if let Some(close) = delimiter_line(line, boundary) {
            found = true;
            if let Some(start) = part_start {
                if split.parts.len() >= budget {
                    split.over_budget = true;
                    return Some(split);
                }
                split
                    .parts
                    .push(&body[start..strip_line_break(body, start, line_start)]);
            }
            if close {
                split.terminated = true;
                return Some(split);
            }
            part_start = Some(line_end);
        }
        line_start = line_end;
    }
    if !found {
        return None;
    }
    if let Some(start) = part_start {
        if split.parts.len() >= budget {
            split.over_budget = true;
        } else {
            split.parts.push(&body[start..]);
        }
    }
    Some(split)
}

/// `Some(is_close)` when the line is a delimiter line for `boundary`: `--` boundary, then `--`
/// for the close delimiter, then only whitespace (RFC 2046 §5.1.1 grammar). The RFC's note that
/// comparing the beginning of a line suffices is deliberately not followed: real senders (Eudora,
/// in the corpus) nest a boundary that extends the outer one (`x` and `x.REL`), and prefix
/// matching splits the outer body at the inner delimiters.
fn delimiter_line(line: &[u8], boundary: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let (close, padding) = match rest.strip_prefix(b"--") {
        Some(after) => (true, after),
        None => (false, rest),
    };
    padding.iter().all(u8::is_ascii_whitespace).then_some(close)
}

/// End of a part's content: `end` moved before one line break, but not before `start`.
fn strip_line_break(body: &[u8], start: usize, mut end: usize) -> usize {
    if end > start && body[end - 1] == b'\n' {
        end -= 1;
        if end > start && body[end - 1] == b'\r' {
            end -= 1;
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message as it arrives over SMTP: every bare LF becomes CRLF.
    fn crlf(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len() * 2);
        for (i, &b) in raw.iter().enumerate() {
            if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
                out.push(b'\r');
            }
            out.push(b);
        }
        out
    }

    /// One line per present field, CRLF shown as `\n`, so expectations read like the message.
    fn summary(m: &ParsedMessage) -> String {
        let mut out = String::new();
        let show = |s: &str| format!("{:?}", s.replace("\r\n", "\n"));
        let mailboxes = |list: &[Mailbox]| {
            let list: Vec<String> = list
                .iter()
                .map(|m| match &m.name {
                    Some(name) => format!("{name} <{}>", m.address),
                    None => m.address.clone(),
                })
                .collect();
            list.join(", ")
        };
        let mut line = |key: &str, value: String| {
            let _ = writeln!(out, "{key}: {value}");
        };
        if let Some(v) = &m.message_id {
            line("message_id", v.clone());
        }
        if let Some(v) = &m.subject {
            line("subject", v.clone());
        }
        if let Some(v) = &m.date {
            line("date", v.clone());
        }
        for (key, list) in [
            ("from", &m.from),
            ("to", &m.to),
            ("cc", &m.cc),
            ("reply_to", &m.reply_to),
        ] {
            if !list.is_empty() {
                line(key, mailboxes(list));
            }
        }
        if let Some(v) = &m.text {
            line("text", show(v));
        }
        if let Some(v) = &m.html {
            line("html", show(v));
        }
        for a in &m.attachments {
            let mut v = format!("{} {}", a.content_type, a.disposition);
            if let Some(name) = &a.filename {
                let _ = write!(v, " name={name:?}");
            }
            if let Some(cid) = &a.content_id {
                let _ = write!(v, " cid={cid}");
            }
            let data = String::from_utf8_lossy(&a.data[..a.data.len().min(40)]).into_owned();
            let _ = write!(v, " {} bytes {}", a.data.len(), show(&data));
            line("attachment", v);
        }
        for w in &m.warnings {
            line("warning", w.clone());
        }
        if let Some(limit) = m.limit_exceeded {
            line("limit", format!("{limit:?}"));
        }
        out
    }

    fn check_with(limits: ParseLimits, raw: &[u8], expect: &str) {
        let parsed = parse(&crlf(raw), &limits);
        let expect: String = expect
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            summary(&parsed),
            expect,
            "\n--- actual ---\n{}",
            summary(&parsed)
        );
    }

    fn check(raw: &[u8], expect: &str) {
        check_with(ParseLimits::default(), raw, expect);
    }

    #[test]
    fn top_level_fields_are_decoded() {
        check(
            b"Message-ID:  <abc@example.org> \n\
              Subject: =?utf-8?q?caf=C3=A9?= =?iso-8859-1?b?5A==?= ok\n\
              Date: Sun, 02 Oct 2016 07:06:22 -0700 (PDT)\n\
              From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\n\
              To: Team: a@example.org, B <b@example.org>;, c@example.org\n\
              Cc: d@example.org\n\
              Reply-To: \"Help, Desk\" <help@example.org>\n\
              \n\
              hi\n",
            r#"
            message_id: <abc@example.org>
            subject: caféä ok
            date: 2016-10-02T14:06:22Z
            from: Jürgen <j@example.org>
            to: a@example.org, B <b@example.org>, c@example.org
            cc: d@example.org
            reply_to: Help, Desk <help@example.org>
            text: "hi\n"
            "#,
        );
    }

    #[test]
    fn headers_are_kept_in_order_with_decoded_values() {
        let parsed = parse(
            &crlf(b"X-B: 2\nSubject : =?utf-8?b?w6k=?=\n folded\nX-A: 1\n\nbody"),
            &ParseLimits::default(),
        );
        let headers: Vec<(&str, &str)> = parsed
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            headers,
            [("X-B", "2"), ("Subject", "é folded"), ("X-A", "1")]
        );
    }

    #[test]
    fn unreadable_dates_are_none_with_a_warning() {
        for (date, expect) in [
            ("Whenever", "warning: Date header could not be read"),
            (
                "Thu, 1 Jan 1970 00:00:00 +0000",
                "date: 1970-01-01T00:00:00Z",
            ),
            (
                "Thu, 1 Jan 1970 00:00:00 +0100",
                "warning: Date header could not be read",
            ),
            (
                "1 Jan 99999 00:00:00 +0000",
                "warning: Date header could not be read",
            ),
            ("2 Feb 2024 10:11:12 GMT", "date: 2024-02-02T10:11:12Z"),
        ] {
            let raw = format!("Date: {date}\nContent-Type: application/x-empty\n\n");
            let parsed = parse(&crlf(raw.as_bytes()), &ParseLimits::default());
            let summary = summary(&parsed);
            assert!(summary.lines().any(|l| l == expect), "{date}: {summary}");
        }
    }

    #[test]
    fn transfer_encodings_are_removed() {
        check(
            b"Content-Type: multipart/mixed; boundary=b\n\n\
              --b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n\
              Gr=C3=BC=C3=9Fe, soft=\nbreak\n\
              --b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: Base64 \n\n\
              R3LDvMOfZSBhdXMg\nS8O2bG4=\n\
              --b\nContent-Type: text/plain\nContent-Transfer-Encoding: quoted printable\n\n\
              a=3Db\n\
              --b\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n\
              JVBERi0xLjQgZmFrZQ==\n\
              --b--\n",
            r#"
            text: "Grüße, softbreak\nGrüße aus Köln\na=b"
            attachment: application/pdf attachment 13 bytes "%PDF-1.4 fake"
            "#,
        );
    }

    #[test]
    fn attachment_digest_is_lowercase_hex_sha256() {
        let parsed = parse(
            &crlf(b"Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQgZmFrZQ==\n"),
            &ParseLimits::default(),
        );
        assert_eq!(
            parsed.attachments[0].sha256,
            "932d2676c1e461ba50d559bba416fbc6af8da1f74309ae81370c615223d0e349"
        );
    }

    #[test]
    fn base64_decodes_exactly_as_mailparse() {
        let ctype = ParsedContentType::default();
        for input in [
            &b""[..],
            b"aGVsbG8=",
            b"aGVs\r\nbG8=\r\n",
            b"aGVs bG8=\r\n\r\n ",
            b" aG Vs\tbG8\x0c= \n",
            b"aGVsbG8",
            b"aGVsbG8==",
            b"aGV*bG8=",
            b"aGVsbG8=aGVsbG8=",
            b"====",
            b"YQ",
            b"\r\n\r\n",
        ] {
            let reference = match Body::new(input, &ctype, &Some("base64".to_string())) {
                Body::Base64(encoded) => encoded.get_decoded().ok(),
                _ => unreachable!("base64 is an encoded body"),
            };
            assert_eq!(
                decode_base64(input, |_| {}).ok(),
                reference,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// A small deterministic generator (xorshift64*) for the generated inputs below.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Base64 bodies as senders write them, and broken: line breaks of every kind, padded
    /// segments in the middle, characters outside the alphabet, truncated groups.
    fn base64_bodies() -> Vec<Vec<u8>> {
        use base64::Engine as _;
        let mut rng = Rng(0x6d78_6e6f_6465_3134);
        let mut bodies = Vec::new();
        for case in 0..400 {
            let len = match case % 4 {
                0 => rng.below(16),
                1 => rng.below(200),
                _ => rng.below(5000),
            };
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mut encoded = base64::engine::general_purpose::STANDARD
                .encode(&data)
                .into_bytes();
            if case % 5 == 1 {
                // Concatenated padded encodings.
                let more = base64::engine::general_purpose::STANDARD.encode(&data[..len / 2]);
                encoded.extend_from_slice(more.as_bytes());
            }
            if case % 7 == 2 && !encoded.is_empty() {
                let at = rng.below(encoded.len());
                encoded[at] = b"*-_.!"[rng.below(5)];
            }
            if case % 11 == 3 {
                encoded.truncate(encoded.len().saturating_sub(1 + rng.below(3)));
            }
            let mut body = Vec::with_capacity(encoded.len() * 2);
            let width = [76, 64, 4, 3, 1000][rng.below(5)];
            for (i, line) in encoded.chunks(width).enumerate() {
                if i > 0 {
                    body.extend_from_slice(
                        [&b"\r\n"[..], b"\n", b" \r\n", b"\t\n", b"\x0c"][rng.below(5)],
                    );
                }
                body.extend_from_slice(line);
            }
            if case % 3 == 0 {
                body.extend_from_slice(b"\r\n\r\n");
            }
            bodies.push(body);
        }
        bodies
    }

    #[test]
    fn base64_decodes_the_same_in_any_chunk_size() {
        for body in base64_bodies() {
            let whole = {
                let cleaned: Vec<u8> = body
                    .iter()
                    .copied()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                data_encoding::BASE64_MIME_PERMISSIVE.decode(&cleaned).ok()
            };
            for chunk in [4, 8, 12, 76, 1024, BASE64_CHUNK] {
                let mut fed = Vec::new();
                let decoded =
                    decode_base64_chunked(&body, chunk, |part| fed.extend_from_slice(part)).ok();
                assert_eq!(
                    decoded,
                    whole,
                    "chunk {chunk}: {:?}",
                    String::from_utf8_lossy(&body)
                );
                if let Some(decoded) = decoded {
                    assert_eq!(fed, decoded, "every decoded byte is hashed, once, in order");
                }
            }
        }
    }

    #[test]
    fn attachment_digest_covers_exactly_its_data() {
        // Base64 longer than a chunk, invalid base64 (hashed after the fallback decode),
        // quoted-printable, identity, and a multipart left unparsed at the depth limit.
        let line = |i: usize| ["QUJD", "MTIz", "eHl6"][i % 3].repeat(19);
        let big: String = (0..BASE64_CHUNK / 40).map(|i| line(i) + "\n").collect();
        let body = |cte: &str, content: &str| {
            format!(
                "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: application/octet-stream\n\
                 Content-Transfer-Encoding: {cte}\n\n{content}\n--b\nContent-Type: multipart/mixed; boundary=c\n\n\
                 --c\nContent-Type: multipart/mixed; boundary=d\n\n--d\n\nx\n--d--\n--c--\n--b--\n"
            )
        };
        for (cte, content) in [
            ("base64", big.as_str()),
            ("base64", "aGVs*bG8=\nYQ"),
            ("quoted-printable", "caf=C3=A9 =\nsoft"),
            ("quoted-printable", "bad =ZZ"),
            ("7bit", "plain text"),
            ("x-unknown", "kept"),
        ] {
            let limits = ParseLimits {
                max_depth: 2,
                ..ParseLimits::default()
            };
            let parsed = parse(&crlf(body(cte, content).as_bytes()), &limits);
            assert_eq!(parsed.attachments.len(), 2, "{cte}: {:?}", parsed.warnings);
            for attachment in &parsed.attachments {
                assert_eq!(
                    attachment.sha256,
                    hex(ring::digest::digest(&SHA256, &attachment.data).as_ref()),
                    "{cte} {}",
                    attachment.content_type
                );
            }
        }
    }

    #[test]
    fn invalid_base64_is_decoded_as_far_as_possible() {
        check(
            b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n\
              R3LDvMOfZQ==R3LDvMOfZQ==\n!!!\n",
            r#"
            text: "GrüßeGrüße"
            warning: invalid base64; decoded as far as possible
            "#,
        );
    }

    #[test]
    fn filenames_are_decoded() {
        check(
            b"Content-Type: multipart/mixed; boundary=b\n\n\
              --b\nContent-Type: application/octet-stream\n\
              Content-Disposition: attachment;\n filename*0*=utf-8''%E2%82%AC%20rate;\n filename*1*=%20%C3%BC;\n filename*2=.txt\n\n\
              x\n\
              --b\nContent-Type: application/octet-stream; name=\"=?iso-8859-1?q?gr=FC=DFe.txt?=\"\n\n\
              y\n\
              --b\nContent-Type: application/pdf; name==?utf-8?B?VGhpcyBpcyBhIHRlc3QucGRm?=\n\n\
              z\n\
              --b--\n",
            r#"
            attachment: application/octet-stream attachment name="€ rate ü.txt" 1 bytes "x"
            attachment: application/octet-stream attachment name="grüße.txt" 1 bytes "y"
            attachment: application/pdf attachment name="This is a test.pdf" 1 bytes "z"
            "#,
        );
    }

    #[test]
    fn declared_charsets_are_decoded() {
        for (charset, body, expect) in [
            ("iso-8859-1", &b"Gr\xfc\xdfe"[..], "Grüße"),
            ("ISO-2022-JP", b"\x1b$BF|K\\8l\x1b(B", "日本語"),
            ("big5", b"\xa4\xa4\xa4\xe5", "中文"),
            ("windows-1252", b"na\xefve \x80", "naïve €"),
        ] {
            let mut raw =
                format!("Content-Type: text/plain; charset=\"{charset}\"\n\n").into_bytes();
            raw.extend_from_slice(body);
            check(&raw, &format!("text: {expect:?}"));
        }
    }

    #[test]
    fn undeclared_8bit_text_is_utf8_else_windows_1252() {
        check(
            "\nno charset: Grüße\n".as_bytes(),
            r#"text: "no charset: Grüße\n""#,
        );
        check(
            b"Content-Type: text/plain; charset=us-ascii\n\nGr\xfc\xdfe \x80\n",
            r#"
            text: "Grüße €\n"
            warning: 8-bit text without charset; decoded as windows-1252
            "#,
        );
        check(
            b"Content-Type: text/plain; charset=x-no-such-charset\n\nGr\xfc\xdfe\n",
            r#"
            text: "Grüße\n"
            warning: text not in its declared charset; decoded as UTF-8 or windows-1252
            "#,
        );
        // ISO-2022-KR is one of the labels the WHATWG standard maps to a single U+FFFD.
        check(
            b"Content-Type: text/plain; charset=iso-2022-kr\n\nhello\n",
            r#"
            text: "hello\n"
            warning: text not in its declared charset; decoded as UTF-8 or windows-1252
            "#,
        );
        check(
            b"\n\x1b$BF|K\\8l\x1b(B\n",
            r#"
            text: "日本語\n"
            warning: ISO-2022-JP text without charset; decoded as ISO-2022-JP
            "#,
        );
    }

    #[test]
    fn latin1_labelled_utf8_is_not_left_as_replacement_characters() {
        check(
            b"Content-Type: text/plain; charset=utf-8\n\nGr\xfc\xdfe\n",
            r#"
            text: "Grüße\n"
            warning: text not in its declared charset; decoded as UTF-8 or windows-1252
            "#,
        );
    }

    #[test]
    fn raw_8bit_headers_use_the_body_charset() {
        check(
            b"Subject: \xa4\xa4\xa4\xe5\nContent-Type: text/plain; charset=big5\n\n\xa4\xa4\n",
            r#"
            subject: 中文
            text: "中\n"
            warning: 8-bit header without encoding; decoded in the body's charset or windows-1252
            "#,
        );
    }

    #[test]
    fn bodies_are_chosen_like_a_mail_client() {
        // mixed[alternative[text, related[html, image]], text footer, pdf, inline text with name]
        check(
            b"Content-Type: multipart/mixed; boundary=m\n\n\
              preamble\n\
              --m\nContent-Type: multipart/alternative; boundary=a\n\n\
              --a\nContent-Type: text/plain\n\nplain\n\
              --a\nContent-Type: text/plain\n\nsecond plain alternative\n\
              --a\nContent-Type: multipart/related; boundary=r\n\n\
              --r\nContent-Type: text/html\n\n<p>html</p>\n\
              --r\nContent-Type: image/png\nContent-ID: <img1@x>\nContent-Transfer-Encoding: base64\n\niVBORw==\n\
              --r\nContent-Type: text/plain\n\nrelated resource\n\
              --r--\n\
              --a--\n\
              --m\nContent-Type: text/plain\nContent-Disposition: inline\n\nfooter\n\
              --m\nContent-Type: text/calendar\n\nBEGIN:VCALENDAR\n\
              --m\nContent-Type: text/plain\nContent-Disposition: inline; filename=notes.txt\n\nnotes\n\
              --m--\nepilogue\n",
            r#"
            text: "plain\nfooter"
            html: "<p>html</p>"
            attachment: image/png inline cid=<img1@x> 4 bytes "�PNG"
            attachment: text/plain attachment 16 bytes "related resource"
            attachment: text/calendar attachment 15 bytes "BEGIN:VCALENDAR"
            attachment: text/plain inline name="notes.txt" 5 bytes "notes"
            "#,
        );
    }

    #[test]
    fn single_part_messages_by_type() {
        check(b"Subject: s\n\nplain", "subject: s\ntext: \"plain\"");
        check(
            b"Content-Type: text/html\n\n<b>x</b>",
            r#"html: "<b>x</b>""#,
        );
        check(
            b"Content-Type: image/gif\nContent-Disposition: inline\n\nGIF89a",
            r#"attachment: image/gif inline 6 bytes "GIF89a""#,
        );
        check(
            b"Content-Type: text/plain\nContent-Disposition: attachment\n\nfile",
            r#"attachment: text/plain attachment 4 bytes "file""#,
        );
    }

    #[test]
    fn embedded_messages_are_attachments_not_body() {
        check(
            b"Content-Type: multipart/mixed; boundary=m\n\n\
              --m\n\nsee attached\n\
              --m\nContent-Type: message/rfc822\n\nSubject: inner\n\ninner text\n\
              --m--\n",
            r#"
            text: "see attached"
            attachment: message/rfc822 attachment 28 bytes "Subject: inner\n\ninner text"
            "#,
        );
        // In a digest, a part without Content-Type is a message.
        check(
            b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: one\n\nbody one\n--d--\n",
            r#"attachment: message/rfc822 attachment 24 bytes "Subject: one\n\nbody one""#,
        );
    }

    #[test]
    fn depth_limit_keeps_the_deepest_multipart_unparsed() {
        check_with(
            ParseLimits {
                max_depth: 1,
                ..ParseLimits::default()
            },
            b"Content-Type: multipart/mixed; boundary=1\n\n\
              --1\n\nouter text\n\
              --1\nContent-Type: multipart/mixed; boundary=2\n\n--2\n\ninner text\n--2--\n\
              --1--\n",
            r#"
            text: "outer text"
            attachment: multipart/mixed attachment 69 bytes "Content-Type: multipart/mixed; boundary="
            warning: MIME nesting too deep; the deepest multipart was kept unparsed as an attachment
            limit: MimeDepth
            "#,
        );
    }

    #[test]
    fn part_limit_stops_the_walk() {
        check_with(
            ParseLimits {
                max_parts: 3,
                ..ParseLimits::default()
            },
            b"Content-Type: multipart/mixed; boundary=b\n\n\
              --b\n\none\n--b\n\ntwo\n--b\n\nthree\n--b\n\nfour\n--b--\n",
            r#"
            text: "one\ntwo"
            warning: too many MIME parts; the rest were ignored
            limit: MimeParts
            "#,
        );
    }

    #[test]
    fn header_count_is_bounded() {
        let mut raw = "X-H: v\n".repeat(MAX_HEADERS_PER_PART + 5);
        raw.push_str("Subject: late\n\nbody");
        let parsed = parse(&crlf(raw.as_bytes()), &ParseLimits::default());
        assert_eq!(parsed.headers.len(), MAX_HEADERS_PER_PART);
        assert_eq!(parsed.subject, None);
        assert_eq!(parsed.text.as_deref(), Some("body"));
        assert_eq!(parsed.limit_exceeded, Some(LimitExceeded::Headers));
    }

    /// Issue 16: a header line past the bound is refused, and its block is never decoded.
    #[test]
    fn header_line_past_the_bound_is_a_limit_issue_16() {
        let limits = ParseLimits {
            max_header_line: 1000,
            ..ParseLimits::default()
        };
        let at_limit = format!("X-A: {}\r\nSubject: s\r\n\r\nbody", "x".repeat(995));
        let parsed = parse(at_limit.as_bytes(), &limits);
        assert_eq!(parsed.limit_exceeded, None);
        assert_eq!(parsed.subject.as_deref(), Some("s"));

        let over = format!("X-A: {}\r\nSubject: s\r\n\r\nbody", "x=?".repeat(400));
        let parsed = parse(over.as_bytes(), &limits);
        assert_eq!(parsed.limit_exceeded, Some(LimitExceeded::HeaderLine(1000)));
        assert!(parsed.headers.is_empty() && parsed.subject.is_none());

        // The same in a MIME part's header block, and a long body line is no header line.
        let part = format!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n{}\r\n\
             --b\r\nContent-Type: text/plain; name=\"{}\"\r\n\r\nx\r\n--b--\r\n",
            "y".repeat(5000),
            "=?".repeat(1000)
        );
        let parsed = parse(part.as_bytes(), &limits);
        assert_eq!(parsed.limit_exceeded, Some(LimitExceeded::HeaderLine(1000)));
    }

    /// Issue 16: a header block past the bound (many short lines) is refused undecoded.
    #[test]
    fn header_section_past_the_bound_is_a_limit_issue_16() {
        let limits = ParseLimits {
            max_header_section: 64 * 1024,
            ..ParseLimits::default()
        };
        let folded = format!("Subject: {}\r\n\r\nbody", "=?a?q?b?=\r\n ".repeat(6000));
        let parsed = parse(folded.as_bytes(), &limits);
        assert_eq!(
            parsed.limit_exceeded,
            Some(LimitExceeded::HeaderSection(64 * 1024))
        );
        assert!(parsed.subject.is_none());
        let small = format!("Subject: {}\r\n\r\nbody", "=?a?q?b?=\r\n ".repeat(100));
        assert_eq!(parse(small.as_bytes(), &limits).limit_exceeded, None);
    }

    /// Issue 16: one field past the bound (folded, every line short) is refused undecoded;
    /// as many bytes spread over several fields are not.
    #[test]
    fn header_field_past_the_bound_is_a_limit_issue_16() {
        let limits = ParseLimits {
            max_header_field: 8192,
            ..ParseLimits::default()
        };
        let value = "x=?x=?x=?\r\n ".repeat(700);
        let one = format!("X-A: {value}\r\nSubject: s\r\n\r\nbody");
        let parsed = parse(one.as_bytes(), &limits);
        assert_eq!(
            parsed.limit_exceeded,
            Some(LimitExceeded::HeaderField(8192))
        );
        assert!(parsed.subject.is_none());
        let half = "x=?x=?x=?\r\n ".repeat(350);
        let two = format!("X-A: {half}\r\nX-B: {half}\r\nSubject: s\r\n\r\nbody");
        let parsed = parse(two.as_bytes(), &limits);
        assert_eq!(parsed.limit_exceeded, None);
        assert_eq!(parsed.subject.as_deref(), Some("s"));
    }

    /// Issue 16: `To: @,@,@,…` is counted, not parsed into a hundredfold of its size.
    #[test]
    fn addresses_past_the_bound_are_a_limit_issue_16() {
        let limits = ParseLimits {
            max_addresses: 10,
            ..ParseLimits::default()
        };
        let ten = format!("From: a@x\r\nTo: {}\r\n\r\nbody", ["b@x"; 9].join(", "));
        let parsed = parse(ten.as_bytes(), &limits);
        assert_eq!(parsed.limit_exceeded, None);
        assert_eq!(parsed.from.len() + parsed.to.len(), 10);

        let folded = "@,".repeat(500) + "\r\n ";
        let flood = format!("To: {}@\r\n\r\nbody", folded.repeat(80));
        let parsed = parse(flood.as_bytes(), &limits);
        assert_eq!(parsed.limit_exceeded, Some(LimitExceeded::Addresses(10)));
        assert!(parsed.to.is_empty());
        // Split over several headers, the addresses still add up.
        let split = format!("Cc: {}\r\n", ["c@x"; 6].join(",")).repeat(2) + "\r\nbody";
        let parsed = parse(split.as_bytes(), &limits);
        assert_eq!(parsed.limit_exceeded, Some(LimitExceeded::Addresses(10)));
    }

    /// Issue 16 (deterministic, not timed): a maximal header section of each quadratic shape
    /// is decoded, and every one of its values comes out whole. Upstream mailparse needed
    /// hours of CPU for one such header at the message size limit.
    #[test]
    fn header_sections_of_the_worst_shapes_at_the_bound_are_decoded_issue_16() {
        let limits = ParseLimits::default();
        for unit in ["x=?", "=?", " =?", "=?a?q?b?= ", "\u{e9}=?"] {
            let line = unit.repeat((MAX_HEADER_LINE - 8) / unit.len());
            let mut raw = String::new();
            while raw.len() + line.len() + 16 < MAX_HEADER_SECTION {
                raw.push_str(&format!("X-A: {line}\r\n"));
            }
            raw.push_str("\r\nbody");
            let parsed = parse(raw.as_bytes(), &limits);
            assert_eq!(parsed.limit_exceeded, None, "{unit:?}");
            assert!(parsed.headers.len() > 30, "{unit:?}");
            assert_eq!(parsed.text.as_deref(), Some("body"), "{unit:?}");
        }
        let params: String = (0..2500).map(|i| format!(";\r\n a{i}*0*=x")).collect();
        let raw = format!("Content-Type: text/plain{params}\r\n\r\nbody");
        assert_eq!(parse(raw.as_bytes(), &limits).text.as_deref(), Some("body"));
    }

    #[test]
    fn malformed_header_lines_are_skipped() {
        check(
            b" overhanging line\n  and more\nFrom mbox line\nSubject: kept\nno colon here\n\nbody",
            r#"
            subject: kept
            text: "body"
            warning: header block: skipped a continuation line without a header
            warning: header block: skipped a line that is not a header
            "#,
        );
        check(
            b"Subject: a\n\rX: b\n\nbody",
            "subject: a\ntext: \"body\"\nwarning: header block: skipped a stray carriage return",
        );
    }

    #[test]
    fn content_type_without_parameter_separator_is_repaired() {
        check(
            b"Content-Type: multipart/mixed\n\tboundary=\"B\"\n\n--B\nContent-Type: text/plain\n\nhi\n--B--\n",
            r#"
            text: "hi"
            warning: Content-Type parameter without separator
            "#,
        );
    }

    #[test]
    fn broken_multiparts_are_read_as_far_as_possible() {
        for (name, raw, expect) in [
            ("unterminated", &b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nstill here\n"[..],
             "text: \"still here\\n\"\nwarning: multipart without closing boundary"),
            ("no boundary parameter", b"Content-Type: multipart/mixed\n\nplain",
             "text: \"plain\"\nwarning: multipart without boundary; read as text"),
            ("boundary never used", b"Content-Type: multipart/mixed; boundary=zz\n\nplain",
             "text: \"plain\"\nwarning: multipart boundary not found; read as text"),
            ("empty parts", b"Content-Type: multipart/alternative; boundary=b\n\n--b\n--b\n\nreal\n--b--",
             "text: \"real\""),
            ("nested boundary extends outer", b"Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: multipart/alternative; boundary=x.1\n\n--x.1\n\ninner\n--x.1--\n--x--\n",
             "text: \"inner\""),
            ("boundary with padding", b"Content-Type: multipart/mixed; boundary=b\n\n--b  \n\npadded\n--b-- \n",
             "text: \"padded\""),
        ] {
            let parsed = parse(&crlf(raw), &ParseLimits::default());
            assert_eq!(summary(&parsed).trim_end(), expect, "{name}");
        }
    }

    #[test]
    fn adversarial_inputs_never_panic() {
        let cases: [&[u8]; 12] = [
            b"",
            b"\n",
            b"\r",
            b"Subject: only headers",
            b"Subject: only headers\n\n",
            b":\n:\n\n",
            b"Content-Type: multipart/mixed; boundary=\"\"\n\n--\n--\n",
            b"Content-Type: multipart/mixed; boundary=b\n\n--b",
            b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: multipart/mixed; boundary=b\n\n--b\n",
            b"Content-Type: text/plain; charset*0*=x; charset*=y; name*0*=utf-8'';name*1*=%ZZ%\n\n\xff",
            b"Content-Disposition: attachment; filename*=''%;\nContent-Transfer-Encoding: base64\n\n====",
            b"Date: 99 Dec 4294967295 99:99:99 +9999\nFrom: <<<@>>>, \"unterminated\n\n",
        ];
        for raw in cases {
            let parsed = parse(raw, &ParseLimits::default());
            assert!(
                !parsed.warnings.iter().any(|w| w.contains("internal")),
                "{:?}: {:?}",
                String::from_utf8_lossy(raw),
                parsed.warnings
            );
        }
        let parsed = parse(b"", &ParseLimits::default());
        assert_eq!(parsed.warnings, ["message is empty"]);
    }

    /// 100 000 nested multiparts: mailparse's own recursion would overflow the stack here.
    fn deeply_nested(levels: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        for level in 0..levels {
            raw.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n")
                    .as_bytes(),
            );
        }
        raw.extend_from_slice(b"\r\ninnermost\r\n");
        raw
    }

    #[test]
    fn hundred_thousand_nested_multiparts_stop_at_the_depth_limit() {
        let raw = deeply_nested(100_000);
        let parsed = parse(&raw, &ParseLimits::default());
        assert_eq!(parsed.limit_exceeded, Some(LimitExceeded::MimeDepth));
        assert_eq!(parsed.attachments.len(), 1);
        assert_eq!(parsed.text, None);

        // Even a configured depth beyond the ceiling cannot exhaust the stack.
        let unbounded = ParseLimits {
            max_depth: usize::MAX,
            max_parts: usize::MAX,
            ..ParseLimits::default()
        };
        let parsed = parse(&deeply_nested(MIME_DEPTH_CEILING * 10), &unbounded);
        assert_eq!(parsed.limit_exceeded, Some(LimitExceeded::MimeDepth));
    }

    #[test]
    fn many_sibling_parts_stop_at_the_part_limit() {
        let mut raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for _ in 0..100_000 {
            raw.extend_from_slice(b"--b\r\n\r\nx\r\n");
        }
        let parsed = parse(&raw, &ParseLimits::default());
        assert_eq!(parsed.limit_exceeded, Some(LimitExceeded::MimeParts));
        assert_eq!(
            parsed.text.as_deref().map(|t| t.lines().count()),
            Some(MAX_MIME_PARTS - 1)
        );
    }

    #[test]
    fn warnings_are_bounded_and_distinct() {
        let mut raw = Vec::new();
        for i in 0..200 {
            raw.extend_from_slice(format!(" junk {i}\r\nX{i} y\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\nbody");
        let parsed = parse(&raw, &ParseLimits::default());
        assert_eq!(parsed.warnings.len(), 2);
    }
}
