//! The metadata store (DESIGN §6): what the node remembers about each delivery attempt, the
//! audit log, API keys and persisted settings.
//!
//! [`Store`] is the small trait the rest of the node uses. `rocks` implements it on RocksDB with
//! every value encrypted (AES-256-GCM, per-time-bucket data keys wrapped by the node master key,
//! crypto-shredded when retention ends); `memory` is the in-memory twin for tests of code above
//! the store. Neither ever holds a sender address, a body, a header other than Message-ID and
//! Subject, or anything derived from content other than the delivery id.
//!
//! All methods are blocking; async callers wrap them in `smol::unblock`.

pub mod memory;
pub mod rocks;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Outcome of one delivery attempt (DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every delivery the route needed answered 2xx; the sender got 250.
    Delivered,
    /// A temporary failure; the sender got 4xx and will retry.
    Tempfailed,
    /// The receiver refused for good; the sender got 5xx.
    Rejected,
    /// The node refused for good before delivering (e.g. MIME limits); the sender got 5xx.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Tempfailed => "tempfailed",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "delivered" => Some(Status::Delivered),
            "tempfailed" => Some(Status::Tempfailed),
            "rejected" => Some(Status::Rejected),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// Name, type and size of one attachment; never its content or a hash of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentSummary {
    pub filename: Option<String>,
    pub content_type: String,
    pub size: u64,
}

/// One delivery attempt of one message to one route. Exactly the fields of DESIGN §6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailRecord {
    /// Unique per attempt (`rec_` + 32 hex digits, time-ordered): the API's `{id}`.
    pub id: String,
    /// The stable delivery id (the payload `id` and `webhook-id`); equal across retransmissions.
    pub delivery_id: String,
    pub message_id: Option<String>,
    /// The route's recipients of this message.
    pub recipients: Vec<String>,
    /// The route's `match` pattern.
    pub route: String,
    /// `None` when `retention.store_subject = false`.
    pub subject: Option<String>,
    /// Unix milliseconds.
    pub received_at: u64,
    /// Unix milliseconds; set when delivered.
    pub delivered_at: Option<u64>,
    pub status: Status,
    /// The SMTP reply code the sender got for this message.
    pub smtp_code: u16,
    /// The webhook's HTTP status of the last attempt, if one answered.
    pub webhook_status: Option<u16>,
    /// Time from the first webhook attempt to its outcome, milliseconds.
    pub webhook_latency_ms: Option<u64>,
    pub attachments: Vec<AttachmentSummary>,
    /// Message size in bytes as received.
    pub size: u64,
    /// The DMARC result (`pass|fail|none|temperror|permerror`, DESIGN §11): the only
    /// authentication result kept, without the domain. Absent in records written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc: Option<String>,
}

/// Filters of `GET /api/v1/emails` (all optional) and the page to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordQuery {
    pub status: Option<Status>,
    /// Exact recipient address (case-insensitive); looked up through the blind index.
    pub recipient: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<u64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<u64>,
    /// Opaque cursor from the previous page's `next`.
    pub cursor: Option<String>,
    /// Page size; implementations cap it at [`MAX_PAGE_SIZE`].
    pub limit: usize,
}

/// Largest page any listing returns.
pub const MAX_PAGE_SIZE: usize = 500;
/// Page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: usize = 50;

/// One page of a listing, newest first. `next` is the cursor of the following page, if any.
/// Pagination is stable: records added after the first page never shift later pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// A security-relevant event (DESIGN §6): never content, never a sender address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unique, time-ordered (`aud_` + 32 hex digits).
    pub id: String,
    /// Unix milliseconds.
    pub time: u64,
    /// Who: `key:<key id>`, `admin`, `cli`, `system`.
    pub actor: String,
    /// What, dotted: `api_key.create`, `api_key.revoke`, `settings.update`, `email.delete`,
    /// `erasure`, `export`, `login`, `login.failed`, `retention.sweep`, `update.*`.
    pub action: String,
    /// Which object, by id (a record id, a key id, a setting name); never an address.
    pub target: Option<String>,
    /// Short outcome or counts, e.g. `deleted 3 records`.
    pub detail: Option<String>,
}

/// Filters of `GET /api/v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub action: Option<String>,
    pub cursor: Option<String>,
    pub limit: usize,
}

/// An API key as stored: only a hash of its secret (DESIGN invariant 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public part of the key, e.g. `k7f3a9c2e1b04d6a8`.
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Unix milliseconds.
    pub created_at: u64,
    /// SHA-256 of the secret part, hex. Keys are 256-bit random, so a fast hash suffices.
    pub secret_sha256: String,
}

/// What a retention sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub records_deleted: u64,
    pub audit_events_deleted: u64,
    /// Time buckets whose data keys were destroyed.
    pub buckets_destroyed: u64,
}

/// Retention periods the sweeper applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub metadata: Duration,
    pub audit: Duration,
}

/// Why a store operation failed. Every variant is transient from the delivery path's point of
/// view: a store failure never changes an SMTP reply (deliver first, record after).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("a stored value cannot be decrypted or decoded: {0}")]
    Corrupt(String),
    #[error("invalid cursor")]
    BadCursor,
    #[error("master key: {0}")]
    MasterKey(String),
}

/// The node's memory of deliveries, audit events, keys and settings.
pub trait Store: Send + Sync {
    /// Writes one attempt record (and its blind-index entries) durably enough to survive a
    /// killed process once this returns.
    fn put_record(&self, record: &EmailRecord) -> Result<(), StoreError>;
    fn get_record(&self, id: &str) -> Result<Option<EmailRecord>, StoreError>;
    fn list_records(&self, query: &RecordQuery) -> Result<Page<EmailRecord>, StoreError>;
    /// Deletes one record; `false` if there was none.
    fn delete_record(&self, id: &str) -> Result<bool, StoreError>;
    /// Deletes every record with this recipient (case-insensitive); returns how many.
    fn erase_recipient(&self, address: &str) -> Result<u64, StoreError>;

    fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEvent>, StoreError>;

    fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    fn delete_api_key(&self, id: &str) -> Result<bool, StoreError>;

    /// A persisted setting document (encrypted at rest), e.g. `settings`.
    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Deletes a setting; whether it existed.
    fn delete_setting(&self, name: &str) -> Result<bool, StoreError>;

    /// Deletes what retention has ended at `now`, destroys expired bucket keys and compacts so
    /// the bytes leave the files.
    fn sweep(&self, now: SystemTime, retention: Retention) -> Result<SweepReport, StoreError>;
    /// Approximate bytes on disk (for `/metrics`).
    fn size_bytes(&self) -> u64;
    /// Stops background work (flushes, compactions) for a process about to exit with the store
    /// still referenced elsewhere; reads and writes keep working.
    fn quiesce(&self) {}
}

/// Unix milliseconds of a time (0 before 1970).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A time-ordered unique id: `<prefix>` + 12 hex digits of unix milliseconds + 20 random hex.
pub fn new_id(prefix: &str, time: SystemTime) -> String {
    use ring::rand::SecureRandom as _;
    let mut random = [0u8; 10];
    // The system RNG does not fail on Linux; zeros would still be unique enough with the time.
    let _ = ring::rand::SystemRandom::new().fill(&mut random);
    let mut id = format!("{prefix}{:012x}", unix_ms(time));
    for b in random {
        id.push_str(&format!("{b:02x}"));
    }
    id
}
