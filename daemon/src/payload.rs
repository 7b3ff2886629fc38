//! The webhook payload, version 1 (DESIGN §4, a Contract: fields may be added, never renamed
//! or removed).
//!
//! Pure rendering from a parsed message and its envelope to JSON bytes. Nothing here is logged
//! or stored: the bytes go to the receiver and are dropped.

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
    warnings: &'a [String],
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
    content_base64: Option<String>,
}

/// Renders the JSON body for one route.
///
/// `size` is the size of the message as received (after dot-unstuffing).
pub fn render(
    id: &str,
    received_at: &str,
    envelope: &Envelope,
    message: &ParsedMessage,
    size: usize,
) -> Vec<u8> {
    let attachments = message.attachments.iter().map(inline_attachment).collect();
    let payload = Payload {
        version: PAYLOAD_VERSION,
        id,
        received_at,
        envelope,
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
        warnings: &message.warnings,
    };
    // Serialising plain structs of strings and numbers into a Vec cannot fail.
    serde_json::to_vec(&payload).unwrap_or_else(|_| b"{}".to_vec())
}

fn inline_attachment(a: &Attachment) -> AttachmentOut<'_> {
    AttachmentOut {
        filename: a.filename.as_deref(),
        content_type: &a.content_type,
        disposition: &a.disposition,
        content_id: a.content_id.as_deref(),
        size: a.data.len(),
        sha256: &a.sha256,
        content_base64: Some(base64::engine::general_purpose::STANDARD.encode(&a.data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
