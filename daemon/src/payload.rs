//! The webhook payload, version 1 (DESIGN §4, a Contract: fields may be added, never renamed
//! or removed).
//!
//! Pure rendering from a parsed message and its envelope to JSON bytes. Nothing here is logged
//! or stored: the bytes go to the receiver and are dropped.

use std::io;

use base64::Engine as _;
use serde::Serialize;

use crate::message::{Attachment, Header, Mailbox, ParsedMessage};

/// The payload's `version`.
pub const PAYLOAD_VERSION: u32 = 1;

/// TLS parameters of the SMTP session, as negotiated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    /// IANA name, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// The SMTP envelope of one delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope {
    /// `""` for the null sender.
    pub mail_from: String,
    /// Only the recipients of the route this payload goes to.
    pub rcpt_to: Vec<String>,
    pub helo: String,
    pub remote_ip: String,
    /// `null` on a plaintext session.
    pub tls: Option<TlsInfo>,
}

#[derive(Serialize)]
struct Payload<'a> {
    version: u32,
    id: &'a str,
    received_at: &'a str,
    envelope: &'a Envelope,
    /// Sender authentication (DESIGN §4, §11); absent only when rendered without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<&'a crate::auth::AuthVerdict>,
    message_id: Option<&'a str>,
    subject: Option<&'a str>,
    date: Option<&'a str>,
    from: &'a [Mailbox],
    to: &'a [Mailbox],
    cc: &'a [Mailbox],
    reply_to: &'a [Mailbox],
    headers: &'a [Header],
    text: Option<&'a str>,
    html: Option<&'a str>,
    attachments: Vec<AttachmentOut<'a>>,
    size: usize,
    /// The complete message in S3, for routes with `raw_to_s3` (an extension of DESIGN §4).
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<RawOut<'a>>,
    warnings: &'a [String],
}

#[derive(Serialize)]
struct RawOut<'a> {
    s3: &'a S3Ref,
    size: usize,
}

#[derive(Serialize)]
struct AttachmentOut<'a> {
    filename: Option<&'a str>,
    content_type: &'a str,
    disposition: &'a str,
    content_id: Option<&'a str>,
    size: usize,
    sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_base64: Option<Base64<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    s3: Option<&'a S3Ref>,
}

/// Where an object was stored: the payload's `s3` object (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct S3Ref {
    pub bucket: String,
    pub key: String,
    /// The object's URL (not presigned; the receiver reads it with its own credentials).
    pub url: String,
}

/// What a route stored in S3 before its webhook, for the payload to point at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// One location per attachment, in message order, when the route's attachments went to S3;
    /// the payload then carries `s3` and no `content_base64`. `None` inlines them.
    pub attachments: Option<Vec<S3Ref>>,
    /// The complete message, when the route has `raw_to_s3`.
    pub raw: Option<S3Ref>,
}

/// An attachment's content, serialised as a base64 JSON string encoded straight into the
/// payload: it never exists a second time as a base64 `String` beside the payload.
///
/// It serialises as bytes, which [`PayloadFormatter`] writes as that string. Only [`render`]'s
/// serializer may see it: serde_json's default formatter would write an array of numbers.
struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Input bytes base64-encoded at a time by [`PayloadFormatter`]: a multiple of 3, so that no
/// chunk but the last is padded, and its output fits a small buffer on the stack.
const BASE64_CHUNK_BYTES: usize = 3 * 4096;

/// serde_json's compact output, except that byte strings (only [`Base64`] contents are
/// serialised as bytes) are written as base64 JSON strings. Base64's alphabet (`A`–`Z`, `a`–`z`,
/// `0`–`9`, `+`, `/`, `=`) holds nothing JSON escapes, so the encoded text goes into the output
/// as it is, without the escape scan serde_json makes over every string it writes: for a large
/// attachment, a pass over a third more bytes than the attachment. The output is byte for byte
/// serde_json's own for the same string (`base64_is_written_as_serde_json_writes_the_string`).
struct PayloadFormatter;

impl serde_json::ser::Formatter for PayloadFormatter {
    fn write_byte_array<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        value: &[u8],
    ) -> io::Result<()> {
        let mut encoded = [0u8; BASE64_CHUNK_BYTES / 3 * 4];
        writer.write_all(b"\"")?;
        for chunk in value.chunks(BASE64_CHUNK_BYTES) {
            let len = base64::engine::general_purpose::STANDARD
                .encode_slice(chunk, &mut encoded)
                .map_err(io::Error::other)?;
            writer.write_all(&encoded[..len])?;
        }
        writer.write_all(b"\"")
    }
}

/// Room for everything in a payload but the message's own text and attachments: envelope,
/// ids, field names, the JSON punctuation of headers and attachments.
const PAYLOAD_OVERHEAD_BYTES: usize = 4096;

/// Allowance for the sender-authentication object (`auth`), whose size this module does not
/// know in advance: a few results with domains and selectors.
const AUTH_ALLOWANCE_BYTES: usize = 16 * 1024;
/// Allowance per attachment for its fields besides the content and the strings counted, and
/// for an `s3` location (bucket, key and URL).
const ATTACHMENT_OVERHEAD_BYTES: usize = 1024;
/// Allowance per header, address and warning for its JSON punctuation and field names.
const ITEM_OVERHEAD_BYTES: usize = 48;

/// Length of `s` as a JSON string, quotes included, escaped as serde_json escapes it: `"` and
/// `\` and the short escapes take two bytes, other control characters six (`\u0001`).
fn json_string_len(s: &str) -> usize {
    2 + s.len()
        + s.bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
                0..0x20 => 5,
                _ => 0,
            })
            .sum::<usize>()
}

fn json_option_len(s: Option<&str>) -> usize {
    s.map_or(4, json_string_len)
}

/// An upper bound on the size of the payload [`render_stored`] writes for `message` and
/// `envelope`, with the attachments inlined (`inline`) or as S3 locations. Every string is
/// measured as JSON escapes it (a control character takes six bytes), so the bound holds for
/// any input; it is the payload buffer's capacity, allocated once, and what the in-flight
/// budget is charged for the route's payload (issue 16).
pub fn bound(message: &ParsedMessage, envelope: &Envelope, inline: bool) -> usize {
    let mailboxes = |list: &[Mailbox]| -> usize {
        list.iter()
            .map(|m| {
                json_option_len(m.name.as_deref())
                    + json_string_len(&m.address)
                    + ITEM_OVERHEAD_BYTES
            })
            .sum()
    };
    let envelope_len = json_string_len(&envelope.mail_from)
        + envelope
            .rcpt_to
            .iter()
            .map(|r| json_string_len(r) + 1)
            .sum::<usize>()
        + json_string_len(&envelope.helo)
        + json_string_len(&envelope.remote_ip)
        + envelope.tls.as_ref().map_or(0, |tls| {
            json_string_len(&tls.version) + json_string_len(&tls.cipher)
        });
    let attachments: usize = message
        .attachments
        .iter()
        .map(|a| {
            let content = if inline {
                a.data.len().div_ceil(3) * 4
            } else {
                0
            };
            content
                + json_option_len(a.filename.as_deref())
                + json_string_len(&a.content_type)
                + json_string_len(&a.disposition)
                + json_option_len(a.content_id.as_deref())
                + json_string_len(&a.sha256)
                + ATTACHMENT_OVERHEAD_BYTES
        })
        .sum();
    PAYLOAD_OVERHEAD_BYTES
        + AUTH_ALLOWANCE_BYTES
        + envelope_len
        + json_option_len(message.message_id.as_deref())
        + json_option_len(message.subject.as_deref())
        + json_option_len(message.date.as_deref())
        + mailboxes(&message.from)
        + mailboxes(&message.to)
        + mailboxes(&message.cc)
        + mailboxes(&message.reply_to)
        + message
            .headers
            .iter()
            .map(|h| json_string_len(&h.name) + json_string_len(&h.value) + ITEM_OVERHEAD_BYTES)
            .sum::<usize>()
        + json_option_len(message.text.as_deref())
        + json_option_len(message.html.as_deref())
        + attachments
        + message
            .warnings
            .iter()
            .map(|w| json_string_len(w) + ITEM_OVERHEAD_BYTES)
            .sum::<usize>()
}

/// Renders the JSON body for one route that inlines its attachments.
///
/// `size` is the size of the message as received (after dot-unstuffing).
pub fn render(
    id: &str,
    received_at: &str,
    envelope: &Envelope,
    message: &ParsedMessage,
    size: usize,
) -> Vec<u8> {
    render_stored(
        id,
        received_at,
        envelope,
        message,
        size,
        &Stored::default(),
        None,
    )
}

/// Renders the JSON body for one route, pointing at what it `stored` in S3: attachments with a
/// location carry `s3` instead of `content_base64`, and `raw` appears when the message was
/// stored. `auth` is the message's sender-authentication verdict.
pub fn render_stored(
    id: &str,
    received_at: &str,
    envelope: &Envelope,
    message: &ParsedMessage,
    size: usize,
    stored: &Stored,
    auth: Option<&crate::auth::AuthVerdict>,
) -> Vec<u8> {
    let locations = stored.attachments.as_deref().unwrap_or(&[]);
    let attachments = message
        .attachments
        .iter()
        .enumerate()
        .map(|(i, a)| match locations.get(i) {
            Some(location) => stored_attachment(a, location),
            // Inline routes, and (defensively) any attachment without a location.
            None => inline_attachment(a),
        })
        .collect();
    let payload = Payload {
        version: PAYLOAD_VERSION,
        id,
        received_at,
        envelope,
        auth,
        message_id: message.message_id.as_deref(),
        subject: message.subject.as_deref(),
        date: message.date.as_deref(),
        from: &message.from,
        to: &message.to,
        cc: &message.cc,
        reply_to: &message.reply_to,
        headers: &message.headers,
        text: message.text.as_deref(),
        html: message.html.as_deref(),
        attachments,
        size,
        raw: stored.raw.as_ref().map(|s3| RawOut { s3, size }),
        warnings: &message.warnings,
    };
    // A route stores all of its attachments or none (and inlines any without a location, which
    // the inline bound covers).
    let inline = locations.len() < message.attachments.len();
    let mut out = Vec::with_capacity(bound(message, envelope, inline));
    // Serialising plain structs of strings and numbers into a Vec cannot fail.
    let written = payload.serialize(&mut serde_json::Serializer::with_formatter(
        &mut out,
        PayloadFormatter,
    ));
    match written {
        Ok(()) => out,
        Err(_) => b"{}".to_vec(),
    }
}

fn inline_attachment(a: &Attachment) -> AttachmentOut<'_> {
    AttachmentOut {
        filename: a.filename.as_deref(),
        content_type: &a.content_type,
        disposition: &a.disposition,
        content_id: a.content_id.as_deref(),
        size: a.data.len(),
        sha256: &a.sha256,
        content_base64: Some(Base64(&a.data)),
        s3: None,
    }
}

fn stored_attachment<'a>(a: &'a Attachment, location: &'a S3Ref) -> AttachmentOut<'a> {
    AttachmentOut {
        filename: a.filename.as_deref(),
        content_type: &a.content_type,
        disposition: &a.disposition,
        content_id: a.content_id.as_deref(),
        size: a.data.len(),
        sha256: &a.sha256,
        content_base64: None,
        s3: Some(location),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16: the bound the budget is charged for holds for the costliest strings (control
    /// characters are six bytes in JSON) and is not far above what is written.
    #[test]
    fn bound_covers_the_rendered_payload_of_escaping_heavy_messages_issue_16() {
        let controls: String = (0u8..0x20).map(char::from).collect::<String>() + "\"\\\u{7f}é";
        let nasty = controls.repeat(2000);
        let mailbox = Mailbox {
            name: Some(nasty.clone()),
            address: nasty.clone(),
        };
        let message = ParsedMessage {
            message_id: Some(nasty.clone()),
            subject: Some(nasty.clone()),
            date: Some(nasty.clone()),
            from: vec![mailbox.clone(); 3],
            to: vec![mailbox.clone(); 3],
            cc: vec![mailbox.clone(); 3],
            reply_to: vec![mailbox; 3],
            headers: vec![
                Header {
                    name: nasty.clone(),
                    value: nasty.clone(),
                };
                5
            ],
            text: Some(nasty.clone()),
            html: Some(nasty.clone()),
            attachments: vec![
                Attachment {
                    filename: Some(nasty.clone()),
                    content_type: nasty.clone(),
                    disposition: nasty.clone(),
                    content_id: Some(nasty.clone()),
                    data: nasty.as_bytes().to_vec(),
                    sha256: "00".repeat(32),
                };
                2
            ],
            warnings: vec![nasty.clone(); 3],
            limit_exceeded: None,
        };
        let envelope = Envelope {
            mail_from: nasty.clone(),
            rcpt_to: vec![nasty.clone(); 4],
            helo: nasty.clone(),
            remote_ip: nasty.clone(),
            tls: Some(TlsInfo {
                version: nasty.clone(),
                cipher: nasty.clone(),
            }),
        };
        let rendered = render("msg_1", "2026-01-01T00:00:00Z", &envelope, &message, 42);
        let bound = bound(&message, &envelope, true);
        assert!(rendered.len() <= bound, "{} > {bound}", rendered.len());
        assert!(
            bound - rendered.len() < 64 * 1024,
            "{bound} for {}",
            rendered.len()
        );
        // Five bytes of six in the text are escape overhead: the bound knows.
        assert!(rendered.len() > 30 * nasty.len());
    }

    #[test]
    fn payload_has_every_contract_field() {
        let message = ParsedMessage {
            message_id: Some("<abc@example.org>".into()),
            subject: Some("Hi".into()),
            text: Some("body".into()),
            attachments: vec![Attachment {
                filename: Some("a.txt".into()),
                content_type: "text/plain".into(),
                disposition: "attachment".into(),
                content_id: None,
                data: b"hello".to_vec(),
                sha256: "00".into(),
            }],
            ..ParsedMessage::default()
        };
        let envelope = Envelope {
            mail_from: "alice@example.org".into(),
            rcpt_to: vec!["bob@in.example.test".into()],
            helo: "client.example.org".into(),
            remote_ip: "127.0.0.1".into(),
            tls: None,
        };
        let body = render("msg_1", "2026-01-01T00:00:00Z", &envelope, &message, 42);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        for key in [
            "version",
            "id",
            "received_at",
            "envelope",
            "message_id",
            "subject",
            "date",
            "from",
            "to",
            "cc",
            "reply_to",
            "headers",
            "text",
            "html",
            "attachments",
            "size",
            "warnings",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in ["mail_from", "rcpt_to", "helo", "remote_ip", "tls"] {
            assert!(v["envelope"].get(key).is_some(), "missing envelope.{key}");
        }
        assert_eq!(v["version"], 1);
        assert_eq!(v["envelope"]["tls"], serde_json::Value::Null);
        assert_eq!(v["attachments"][0]["content_base64"], "aGVsbG8=");
        assert_eq!(v["attachments"][0]["size"], 5);
        assert_eq!(v["size"], 42);
        assert!(v.get("raw").is_none(), "raw only for raw_to_s3 routes");
        assert!(v["attachments"][0].get("s3").is_none());
    }

    /// The fast path against serde_json writing the same base64 as an ordinary string, in a
    /// struct whose other strings need escaping, for every padding and chunk-boundary case.
    #[test]
    fn base64_is_written_as_serde_json_writes_the_string() {
        #[derive(Serialize)]
        struct Fast<'a> {
            before: &'a str,
            content_base64: Base64<'a>,
            after: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Reference<'a> {
            before: &'a str,
            content_base64: String,
            after: Option<&'a str>,
        }
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let data: Vec<u8> = (0..3 * BASE64_CHUNK_BYTES + 7)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 56) as u8
            })
            .collect();
        let chunk = BASE64_CHUNK_BYTES;
        for len in (0..8).chain([chunk - 1, chunk, chunk + 1, 2 * chunk + 2, data.len()]) {
            let data = &data[..len];
            let text = "line\r\n\"quoted\" \\ tab\t \u{1}";
            let mut fast = Vec::new();
            Fast {
                before: text,
                content_base64: Base64(data),
                after: Some(text),
            }
            .serialize(&mut serde_json::Serializer::with_formatter(
                &mut fast,
                PayloadFormatter,
            ))
            .expect("serialise");
            let reference = serde_json::to_vec(&Reference {
                before: text,
                content_base64: base64::engine::general_purpose::STANDARD.encode(data),
                after: Some(text),
            })
            .expect("serialise");
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&reference),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn stored_attachments_carry_s3_and_no_base64() {
        let message = ParsedMessage {
            attachments: vec![Attachment {
                filename: Some("../a.txt".into()),
                content_type: "text/plain".into(),
                disposition: "attachment".into(),
                content_id: None,
                data: b"hello".to_vec(),
                sha256: "00".into(),
            }],
            ..ParsedMessage::default()
        };
        let envelope = Envelope {
            mail_from: String::new(),
            rcpt_to: vec!["bob@in.example.test".into()],
            helo: "h".into(),
            remote_ip: "127.0.0.1".into(),
            tls: None,
        };
        let location = |key: &str| S3Ref {
            bucket: "mail".into(),
            key: key.into(),
            url: format!("https://s3.example.test/mail/{key}"),
        };
        let stored = Stored {
            attachments: Some(vec![location("d/msg_1/1-a.txt")]),
            raw: Some(location("d/msg_1/raw.eml")),
        };
        let body = render_stored("msg_1", "t", &envelope, &message, 99, &stored, None);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let attachment = &v["attachments"][0];
        assert!(attachment.get("content_base64").is_none(), "{attachment}");
        assert_eq!(
            attachment["filename"], "../a.txt",
            "the original name stays"
        );
        assert_eq!(attachment["s3"]["bucket"], "mail");
        assert_eq!(attachment["s3"]["key"], "d/msg_1/1-a.txt");
        assert_eq!(
            attachment["s3"]["url"],
            "https://s3.example.test/mail/d/msg_1/1-a.txt"
        );
        assert_eq!(v["raw"]["s3"]["key"], "d/msg_1/raw.eml");
        assert_eq!(v["raw"]["size"], 99);
        assert!(!String::from_utf8_lossy(&body).contains("aGVsbG8="));
    }
}
