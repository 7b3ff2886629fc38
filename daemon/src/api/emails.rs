//! The metadata routes: `/api/v1/emails` (list, get, delete), `/api/v1/erasure`,
//! `/api/v1/export` and `/api/v1/audit`, with their query parsing and JSON shapes.
//!
//! Erasure and export audit a count, never the address they were asked about.

use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Api, ApiError, Caller, FieldError, Scope, rfc3339};
use crate::store::{
    AttachmentSummary, AuditEvent, AuditQuery, DEFAULT_PAGE_SIZE, EmailRecord, MAX_PAGE_SIZE,
    RecordQuery, Status, unix_ms,
};

/// Most records one export returns; past it the answer says `truncated` (retention keeps the
/// store far smaller than this in normal operation: default 24 hours of metadata).
pub const MAX_EXPORT_RECORDS: usize = 50_000;
/// Longest address accepted in a filter or an erasure (RFC 5321 §4.5.3.1.3: a path is at most
/// 256 octets including the angle brackets).
pub const MAX_ADDRESS_BYTES: usize = 254;
/// Longest cursor accepted (ours are far shorter).
const MAX_CURSOR_BYTES: usize = 512;
/// Longest `action` filter.
const MAX_ACTION_BYTES: usize = 64;
/// Largest unix-seconds value accepted in a time filter (year 9999).
const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

/// One delivery attempt as the API shows it: the store's record with RFC 3339 times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmailView {
    pub id: String,
    pub delivery_id: String,
    pub message_id: Option<String>,
    pub recipients: Vec<String>,
    pub route: String,
    pub subject: Option<String>,
    pub received_at: String,
    pub delivered_at: Option<String>,
    pub status: Status,
    pub smtp_code: u16,
    pub webhook_status: Option<u16>,
    pub webhook_latency_ms: Option<u64>,
    pub attachments: Vec<AttachmentSummary>,
    pub size: u64,
    /// The DMARC result of the message (DESIGN §11); `null` for records from before it.
    pub dmarc: Option<String>,
}

impl From<EmailRecord> for EmailView {
    fn from(r: EmailRecord) -> EmailView {
        EmailView {
            id: r.id,
            delivery_id: r.delivery_id,
            message_id: r.message_id,
            recipients: r.recipients,
            route: r.route,
            subject: r.subject,
            received_at: rfc3339(r.received_at),
            delivered_at: r.delivered_at.map(rfc3339),
            status: r.status,
            smtp_code: r.smtp_code,
            webhook_status: r.webhook_status,
            webhook_latency_ms: r.webhook_latency_ms,
            attachments: r.attachments,
            size: r.size,
            dmarc: r.dmarc,
        }
    }
}

/// `GET /api/v1/emails`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmailPage {
    pub items: Vec<EmailView>,
    /// Cursor of the next page; `null` on the last page.
    pub next: Option<String>,
}

/// Query values of `GET /api/v1/emails`, as given.
#[derive(Debug, Clone, Default)]
pub struct EmailFilters {
    pub status: Option<String>,
    pub recipient: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

/// Query values of `GET /api/v1/audit`, as given.
#[derive(Debug, Clone, Default)]
pub struct AuditFilters {
    pub action: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

/// `POST /api/v1/erasure` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    pub address: String,
}

/// `POST /api/v1/erasure` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub deleted: u64,
}

/// `GET /api/v1/export` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Export {
    pub exported_at: String,
    pub records: Vec<EmailView>,
    /// True when [`MAX_EXPORT_RECORDS`] cut the export short.
    pub truncated: bool,
}

/// One audit event as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditView {
    pub id: String,
    pub time: String,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: Option<String>,
}

impl From<AuditEvent> for AuditView {
    fn from(e: AuditEvent) -> AuditView {
        AuditView {
            id: e.id,
            time: rfc3339(e.time),
            actor: e.actor,
            action: e.action,
            target: e.target,
            detail: e.detail,
        }
    }
}

/// `GET /api/v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditPage {
    pub items: Vec<AuditView>,
    pub next: Option<String>,
}

/// Parses a JSON request body into `T`; 400 `invalid_body` naming the problem otherwise.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "invalid_body",
            format!("the request body is not the expected JSON: {e}"),
            Vec::new(),
        )
    })
}

/// A time filter: RFC 3339 (`2025-07-01T10:00:00Z`, any offset) or unix seconds; unix ms.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= MAX_UNIX_SECONDS)
            .map(|s| s * 1000)
            .ok_or_else(|| "unix seconds out of range".to_string());
    }
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            "expected an RFC 3339 time (e.g. 2025-07-01T10:00:00Z) or unix seconds".to_string()
        })?;
    let ms = time.unix_timestamp_nanos() / 1_000_000;
    // Times before 1970 filter like 1970: no record is older.
    Ok(u64::try_from(ms.max(0)).unwrap_or(u64::MAX))
}

/// Whether `text` can be a mailbox address: something, `@`, something; no spaces or controls.
fn looks_like_address(text: &str) -> bool {
    text.len() <= MAX_ADDRESS_BYTES
        && text
            .rsplit_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Collects every problem of a request's query values.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn time(&mut self, key: &str, value: &Option<String>) -> Option<u64> {
        let text = value.as_deref()?;
        parse_time(text)
            .map_err(|e| self.0.push(FieldError::new(key, e)))
            .ok()
    }

    fn limit(&mut self, value: &Option<String>) -> usize {
        let Some(text) = value.as_deref() else {
            return DEFAULT_PAGE_SIZE;
        };
        match text.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                self.0.push(FieldError::new(
                    "limit",
                    format!("must be an integer from 1 to {MAX_PAGE_SIZE}"),
                ));
                DEFAULT_PAGE_SIZE
            }
        }
    }

    fn cursor(&mut self, value: &Option<String>) -> Option<String> {
        let text = value.as_deref()?;
        if text.is_empty() || text.len() > MAX_CURSOR_BYTES {
            self.0
                .push(FieldError::new("cursor", "not a cursor of this listing"));
            return None;
        }
        Some(text.to_string())
    }

    fn address(&mut self, key: &str, value: &str) -> String {
        if !looks_like_address(value.trim()) {
            self.0
                .push(FieldError::new(key, "expected an address like user@domain"));
        }
        value.trim().to_string()
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(ApiError::invalid(
            "invalid_parameter",
            "invalid query parameters",
            self.0,
        ))
    }
}

impl Api {
    /// `GET /api/v1/emails` (`emails:read`): newest first, cursor pagination.
    pub fn list_emails(
        &self,
        caller: &Caller,
        filters: &EmailFilters,
    ) -> Result<EmailPage, ApiError> {
        self.authenticate(caller, Scope::EmailsRead)?;
        let mut p = Problems::default();
        let status = filters.status.as_deref().and_then(|text| {
            let status = Status::parse(text.trim());
            if status.is_none() {
                p.0.push(FieldError::new(
                    "status",
                    "one of delivered, tempfailed, rejected, failed",
                ));
            }
            status
        });
        let query = RecordQuery {
            status,
            recipient: filters
                .recipient
                .as_deref()
                .map(|a| p.address("recipient", a)),
            since: p.time("since", &filters.since),
            until: p.time("until", &filters.until),
            cursor: p.cursor(&filters.cursor),
            limit: p.limit(&filters.limit),
        };
        p.finish()?;
        let page = self.store.list_records(&query)?;
        Ok(EmailPage {
            items: page.items.into_iter().map(EmailView::from).collect(),
            next: page.next,
        })
    }

    /// `GET /api/v1/emails/{id}` (`emails:read`).
    pub fn get_email(&self, caller: &Caller, id: &str) -> Result<EmailView, ApiError> {
        self.authenticate(caller, Scope::EmailsRead)?;
        self.store
            .get_record(id)?
            .map(EmailView::from)
            .ok_or_else(|| ApiError::not_found("email record"))
    }

    /// `DELETE /api/v1/emails/{id}` (`emails:delete`).
    pub fn delete_email(&self, caller: &Caller, id: &str) -> Result<(), ApiError> {
        let principal = self.authenticate(caller, Scope::EmailsDelete)?;
        if !self.store.delete_record(id)? {
            return Err(ApiError::not_found("email record"));
        }
        self.audit_best_effort(
            &principal.actor(),
            "email.delete",
            Some(id.to_string()),
            None,
        );
        Ok(())
    }

    /// `POST /api/v1/erasure` (`emails:delete`): every record of one recipient.
    pub fn erase(&self, caller: &Caller, body: &[u8]) -> Result<Erased, ApiError> {
        let principal = self.authenticate(caller, Scope::EmailsDelete)?;
        let request: ErasureRequest = parse_body(body)?;
        let mut p = Problems::default();
        let address = p.address("address", &request.address);
        p.finish().map_err(|e| ApiError {
            code: "invalid_body",
            ..e
        })?;
        let deleted = self.store.erase_recipient(&address)?;
        self.audit_best_effort(
            &principal.actor(),
            "erasure",
            None,
            Some(format!("deleted {deleted} records")),
        );
        Ok(Erased { deleted })
    }

    /// `GET /api/v1/export` (`emails:read`): every record, or every record of one address.
    /// Audited before anything is handed out; if the audit cannot be written, nothing is.
    pub fn export(&self, caller: &Caller, address: Option<&str>) -> Result<Export, ApiError> {
        let principal = self.authenticate(caller, Scope::EmailsRead)?;
        let mut p = Problems::default();
        let recipient = address.map(|a| p.address("address", a));
        p.finish()?;
        let now: SystemTime = self.now();
        let mut query = RecordQuery {
            recipient: recipient.clone(),
            limit: MAX_PAGE_SIZE,
            ..RecordQuery::default()
        };
        let mut records = Vec::new();
        let truncated = loop {
            let page = self.store.list_records(&query)?;
            records.extend(page.items);
            match page.next {
                _ if records.len() > MAX_EXPORT_RECORDS => {
                    records.truncate(MAX_EXPORT_RECORDS);
                    break true;
                }
                Some(next) => query.cursor = Some(next),
                None => break false,
            }
        };
        let scope = if recipient.is_some() {
            "one address"
        } else {
            "all addresses"
        };
        self.audit(
            &principal.actor(),
            "export",
            None,
            Some(format!("{} records of {scope}", records.len())),
        )?;
        Ok(Export {
            exported_at: rfc3339(unix_ms(now)),
            records: records.into_iter().map(EmailView::from).collect(),
            truncated,
        })
    }

    /// `GET /api/v1/audit` (`audit:read`): newest first, cursor pagination.
    pub fn list_audit(
        &self,
        caller: &Caller,
        filters: &AuditFilters,
    ) -> Result<AuditPage, ApiError> {
        self.authenticate(caller, Scope::AuditRead)?;
        let mut p = Problems::default();
        let action = filters.action.as_deref().map(str::trim).map(|a| {
            if a.is_empty() || a.len() > MAX_ACTION_BYTES {
                p.0.push(FieldError::new(
                    "action",
                    "expected an action such as `erasure`",
                ));
            }
            a.to_string()
        });
        let query = AuditQuery {
            action,
            since: p.time("since", &filters.since),
            until: p.time("until", &filters.until),
            cursor: p.cursor(&filters.cursor),
            limit: p.limit(&filters.limit),
        };
        p.finish()?;
        let page = self.store.list_audit(&query)?;
        Ok(AuditPage {
            items: page.items.into_iter().map(AuditView::from).collect(),
            next: page.next,
        })
    }
}
