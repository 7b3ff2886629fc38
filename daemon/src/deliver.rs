//! Delivery: one function from a received transaction to an outcome, and the SMTP reply derived
//! from that outcome only (DESIGN §2, §3).
//!
//! Recipients are grouped by route; the message is parsed once and delivered once per route, all
//! routes at the same time. `250` only if every route accepted. Nothing is written anywhere: the
//! message lives in memory until this function returns. A route with S3 storage first PUTs its
//! attachments (and raw message) to the customer's store, then calls its webhook; a failed
//! upload means no webhook call and a temporary failure.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::auth::{self, AuthVerdict, Authenticator, Enforcement, SpfCheck};
use crate::config::{AttachmentMode, Config, DmarcMode};
use crate::message::{self, LimitExceeded, ParseLimits, ParsedMessage};
use crate::payload::{self, Envelope, S3Ref, Stored, TlsInfo};
use crate::s3::{self, S3Client, S3Error};
use crate::smtp::session::{RecipientPolicy, Reply, Transaction};
use crate::store::{AttachmentSummary, EmailRecord, Status, new_id, unix_ms};
use crate::webhook::{WebhookClient, WebhookError, WebhookOutcome};

/// The routing table: which route takes a recipient (the first match, in config order).
#[derive(Debug)]
pub struct Router {
    routes: Vec<RouteRuntime>,
    /// MIME and header bounds of every parse (`[smtp]` limits, issue 16).
    limits: ParseLimits,
    /// Set when the node's settings could not be loaded: every recipient is deferred with
    /// `451 4.3.0` instead of being refused for want of a route (issue 16).
    deferred: Option<&'static str>,
}

/// Uploads of one route's delivery that run at the same time; the rest wait for a free slot.
/// Each holds a connection to the store.
pub const MAX_CONCURRENT_UPLOADS: usize = 4;
/// However long the S3 uploads took, the webhook gets at least this long after them for its
/// attempts, so a slow store cannot leave the webhook a zero-length budget.
const MIN_WEBHOOK_WINDOW: Duration = Duration::from_secs(5);
/// Content type of the stored raw message.
const RAW_MESSAGE_CONTENT_TYPE: &str = "message/rfc822";
/// Messages up to this size are parsed and rendered on the session's own task: the work (tens
/// of microseconds) costs less than the two thread wake-ups of a trip through the blocking pool,
/// and is too short to hold up the other sessions sharing the executor. Larger ones go to the
/// pool, where a 25 MiB parse cannot stall anyone's I/O.
const INLINE_WORK_MAX_BYTES: usize = 64 * 1024;
/// Bytes a message may hold in memory per byte it is charged in the in-flight budget. A
/// message is held as received, as parsed and as one JSON payload per route; the budget
/// counted the received bytes only, so a message of control characters (six bytes each in
/// JSON) or one delivered to many routes held many times its charge (issue 16). Once parsed,
/// a message is charged `held / HELD_PER_CHARGED_BYTE` when that is more than its size: up to
/// three bytes held per byte received are what `max_in_flight` plans for (README,
/// "Performance"); anything beyond is charged.
pub const HELD_PER_CHARGED_BYTE: usize = 3;

/// A route with its ready client.
#[derive(Debug)]
struct RouteRuntime {
    name: String,
    pattern: crate::config::Pattern,
    client: WebhookClient,
    /// Where the route stores content in S3 before its webhook, if anywhere.
    storage: Option<RouteStorage>,
    /// `webhook_budget`: S3 uploads and webhook attempts share it.
    budget: Duration,
    /// `dmarc = "report" | "enforce"` (DESIGN §11).
    dmarc: DmarcMode,
}

/// A route's S3 storage: its connection and what goes there.
#[derive(Debug)]
struct RouteStorage {
    /// Shared by every route that names the same `[s3.NAME]`.
    client: Arc<S3Client>,
    /// `attachments = "s3"`.
    attachments: bool,
    /// `raw_to_s3 = true`.
    raw: bool,
}

/// Why the routing table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error("s3.{name}: {source}")]
    S3 {
        name: String,
        source: s3::SetupError,
    },
    #[error("route {route}: no [s3.{name}] connection")]
    MissingS3 { route: String, name: String },
}

impl Router {
    pub fn new(config: &Config) -> Result<Router, RouterError> {
        let mut connections: Vec<Arc<S3Client>> = Vec::new();
        let mut routes = Vec::new();
        for route in &config.routes {
            let attachments = route.attachments == AttachmentMode::S3;
            let storage = match &route.s3 {
                Some(name) if attachments || route.raw_to_s3 => {
                    let client = match connections.iter().find(|c| c.name() == name) {
                        Some(client) => client.clone(),
                        None => {
                            let s3_config =
                                config.s3.get(name).ok_or_else(|| RouterError::MissingS3 {
                                    route: route.name.clone(),
                                    name: name.clone(),
                                })?;
                            let client =
                                Arc::new(S3Client::new(name, s3_config).map_err(|source| {
                                    RouterError::S3 {
                                        name: name.clone(),
                                        source,
                                    }
                                })?);
                            connections.push(client.clone());
                            client
                        }
                    };
                    Some(RouteStorage {
                        client,
                        attachments,
                        raw: route.raw_to_s3,
                    })
                }
                _ => None,
            };
            routes.push(RouteRuntime {
                name: route.name.clone(),
                pattern: route.pattern.clone(),
                client: WebhookClient::new(route)?,
                storage,
                budget: route.webhook_budget,
                dmarc: route.dmarc,
            });
        }
        let limits = ParseLimits {
            max_header_line: config.smtp.max_header_line,
            max_header_field: config.smtp.max_header_field,
            max_header_section: config.smtp.max_header_section,
            max_addresses: config.smtp.max_addresses,
            ..ParseLimits::default()
        };
        Ok(Router {
            routes,
            limits,
            deferred: None,
        })
    }

    /// A table that routes nothing and defers every recipient with `451 4.3.0 {text}`: what a
    /// node runs on when its persisted settings cannot be loaded, so mail waits at the sender
    /// instead of bouncing with "no route" (issue 16).
    pub fn deferring(text: &'static str) -> Router {
        Router {
            routes: Vec::new(),
            limits: ParseLimits::default(),
            deferred: Some(text),
        }
    }

    /// Whether this table defers all mail (see [`Router::deferring`]).
    pub fn is_deferring(&self) -> bool {
        self.deferred.is_some()
    }

    fn route_of(&self, address: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.pattern.matches(address))
    }
}

impl RecipientPolicy for Router {
    fn accepts(&self, address: &str) -> bool {
        self.route_of(address).is_some()
    }

    fn deferred(&self) -> Option<&str> {
        self.deferred
    }

    /// Routes that enforce DMARC and routes that only report never share a transaction: the
    /// reply after DATA is one code for every recipient, and it must be true for each of them
    /// (a refusal for the enforcing routes' recipients, a delivery for the others). The client
    /// sends the other group's recipients in a second transaction after `452 4.5.3`.
    fn transaction_group(&self, address: &str) -> u8 {
        match self.route_of(address).map(|r| self.routes[r].dmarc) {
            Some(DmarcMode::Enforce) => 1,
            _ => 0,
        }
    }
}

/// What the SMTP session knows about its peer, for the envelope.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_ip: String,
    pub tls: Option<TlsInfo>,
    /// The routing table this session started with.
    pub router: Arc<Router>,
}

/// The result of delivering one transaction to all its routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every route answered 2xx.
    Delivered { ids: Vec<String> },
    /// A receiver refused for good and no route failed temporarily.
    Rejected { reason: String },
    /// At least one route failed temporarily: the sender must retry.
    TempFailed,
    /// The MIME structure is past a parse limit (DESIGN invariant 3): refused before any
    /// delivery, since a retry would meet the same limit.
    TooComplex(LimitExceeded),
    /// An enforcing route refused the message: DMARC `fail` under `p=reject` (DESIGN §11).
    AuthRejected,
    /// An enforcing route could not authenticate the message for now (DMARC `temperror`).
    AuthTempFailed,
    /// Parsed and rendered, the message would hold more memory than the in-flight budget has
    /// free now (issue 16): the sender retries.
    OverBudget,
    /// Parsed and rendered, the message would hold more memory than the whole in-flight budget
    /// (`smtp.max_in_flight`) allows: a retry would meet the same bound.
    ExpandsPastBudget,
}

impl Outcome {
    /// The SMTP reply after DATA, derived from the outcome only (DESIGN §3).
    pub fn reply(&self) -> Reply {
        match self {
            Outcome::Delivered { ids } => {
                Reply::new(250, format!("2.0.0 {} accepted", ids.join(",")))
            }
            Outcome::Rejected { reason } if reason.is_empty() => {
                Reply::new(550, "5.7.1 Message refused by the receiver")
            }
            Outcome::Rejected { reason } => Reply::new(
                550,
                format!("5.7.1 Message refused by the receiver: {reason}"),
            ),
            Outcome::TempFailed => {
                Reply::new(451, "4.3.0 Delivery failed temporarily, try again later")
            }
            Outcome::AuthRejected => Reply::new(
                550,
                "5.7.1 Message refused: it fails the DMARC policy (p=reject) of its From: domain",
            ),
            Outcome::AuthTempFailed => Reply::new(
                451,
                "4.7.5 Sender authentication failed temporarily (DNS), try again later",
            ),
            Outcome::TooComplex(limit) => Reply::new(
                554,
                format!(
                    "5.6.0 Message refused: {}",
                    match limit {
                        LimitExceeded::MimeDepth => "MIME nesting too deep".to_string(),
                        LimitExceeded::MimeParts => "too many MIME parts".to_string(),
                        LimitExceeded::Headers => "too many header fields".to_string(),
                        LimitExceeded::HeaderLine(limit) =>
                            format!("header line longer than {limit} octets"),
                        LimitExceeded::HeaderField(limit) =>
                            format!("header field larger than {limit} octets"),
                        LimitExceeded::HeaderSection(limit) =>
                            format!("header section larger than {limit} octets"),
                        LimitExceeded::Addresses(limit) =>
                            format!("more than {limit} addresses in From, To, Cc and Reply-To"),
                    }
                ),
            ),
            Outcome::OverBudget => {
                Reply::new(451, "4.3.1 Insufficient system resources, try again later")
            }
            Outcome::ExpandsPastBudget => Reply::new(
                552,
                "5.3.4 Message refused: decoded, it needs more memory than this node allows",
            ),
        }
    }
}

/// Delivers a transaction to every route its recipients belong to.
///
/// Takes the transaction by value: its bytes move into shared ownership instead of being
/// copied, and its in-flight reservation is released when delivery is over.
/// `auth`: the node's authenticator and the transaction's SPF check started at `MAIL FROM`;
/// `None` delivers without sender authentication (tests of delivery alone).
pub async fn deliver(
    router: &Router,
    tx: Transaction,
    peer: &PeerInfo,
    auth: Option<(&Authenticator, SpfCheck)>,
) -> DeliveryReport {
    let Transaction {
        helo,
        mail_from,
        rcpt_to,
        data,
        mut reservation,
        ..
    } = tx;
    let started = Instant::now();
    let received_time = SystemTime::now();
    let received_at = humantime::format_rfc3339_seconds(received_time).to_string();
    let mut report = DeliveryReport {
        outcome: Outcome::TempFailed,
        routes: Vec::new(),
        message_id: None,
        subject: None,
        attachments: Vec::new(),
        size: data.len(),
        received_at: received_time,
        auth: None,
    };
    // Group recipients by route, keeping config order.
    let mut groups: Vec<(usize, Vec<String>)> = Vec::new();
    for rcpt in &rcpt_to {
        let Some(route) = router.route_of(rcpt) else {
            continue; // The session only accepts routed recipients; a route may since be gone.
        };
        match groups.iter_mut().find(|(r, _)| *r == route) {
            Some((_, list)) => list.push(rcpt.clone()),
            None => groups.push((route, vec![rcpt.clone()])),
        }
    }
    if groups.is_empty() {
        return report;
    }

    // Parsing and the delivery ids (keyed hashes of the whole message) are CPU work on possibly
    // large input: keep large messages off the I/O threads.
    let data = Arc::new(data);
    // DKIM, ARC and DMARC start now, on the authentication runtime, while the message is
    // parsed here; SPF has been running since MAIL FROM.
    let authserv_id: Arc<str> = auth.as_ref().map_or_else(
        || Arc::from(""),
        |(authenticator, _)| authenticator.hostname(),
    );
    let verdict = auth.map(|(authenticator, spf)| authenticator.verify(data.clone(), spf));
    let id_keys: Vec<_> = groups
        .iter()
        .map(|(route_index, recipients)| {
            let route = &router.routes[*route_index];
            let key = route.client.delivery_id_key();
            (key, route.name.clone(), recipients.clone())
        })
        .collect();
    let limits = router.limits;
    let (parsed, ids) = {
        let data = data.clone();
        cpu_work(data.len(), move || {
            let parsed = message::parse(&data, &limits);
            let ids: Vec<String> = id_keys
                .iter()
                .map(|(key, name, recipients)| key.delivery_id(name, recipients, &data))
                .collect();
            (parsed, ids)
        })
        .await
    };
    let parsed: Arc<ParsedMessage> = Arc::new(parsed);

    report.message_id = parsed.message_id.clone();
    report.subject = parsed.subject.clone();
    report.attachments = parsed
        .attachments
        .iter()
        .map(|a| AttachmentSummary {
            filename: a.filename.clone(),
            content_type: a.content_type.clone(),
            size: a.data.len() as u64,
        })
        .collect();
    // The envelope of each route's payload, and what the payloads will hold.
    let envelopes: Vec<Envelope> = groups
        .iter()
        .map(|(_, rcpt_to)| Envelope {
            mail_from: mail_from.clone(),
            rcpt_to: rcpt_to.clone(),
            helo: helo.clone(),
            remote_ip: peer.remote_ip.clone(),
            tls: peer.tls.clone(),
        })
        .collect();
    let charge_outcome = match parsed.limit_exceeded {
        Some(limit) => {
            log::warn!("delivery refused: message past the parse limit {limit:?}");
            Some(Outcome::TooComplex(limit))
        }
        None => {
            let payloads: usize = groups
                .iter()
                .zip(&envelopes)
                .map(|((route_index, _), envelope)| {
                    let inline = router.routes[*route_index]
                        .storage
                        .as_ref()
                        .is_none_or(|storage| !storage.attachments);
                    payload::bound(&parsed, envelope, inline)
                })
                .sum();
            charge(&mut reservation, data.len(), parsed.held_bytes(), payloads)
        }
    };
    if let Some(outcome) = charge_outcome {
        report.outcome = outcome;
        report.routes = groups
            .into_iter()
            .zip(ids)
            .map(|((route_index, recipients), delivery_id)| {
                let route = &router.routes[route_index];
                RouteReport {
                    route: route.name.clone(),
                    delivery_id,
                    recipients,
                    webhook: None,
                    webhook_latency: None,
                    s3_latency: None,
                    refused_by_auth: None,
                }
            })
            .collect();
        return report;
    }

    let verdict: Option<Arc<AuthVerdict>> = match verdict {
        Some(pending) => Some(Arc::new(pending.await)),
        None => None,
    };
    report.auth = verdict.as_deref().map(AuthVerdict::results);

    // One payload per route (each carries only its own recipients), posted concurrently.
    let posts: Vec<_> = groups.into_iter().zip(ids).zip(envelopes).map(|(((route_index, _), id), envelope)| {
        let route = &router.routes[route_index];
        let parsed = parsed.clone();
        let received_at = received_at.clone();
        let size = data.len();
        let route_name = route.name.clone();
        let recipients = envelope.rcpt_to.clone();
        let raw = data.clone();
        let verdict = verdict.clone();
        let authserv_id = authserv_id.clone();
        async move {
            // An enforcing route refuses what DMARC says to refuse (DESIGN §11), before any
            // upload or webhook call.
            let enforcement = match (route.dmarc, verdict.as_deref()) {
                (DmarcMode::Enforce, Some(verdict)) => verdict.enforcement(),
                _ => Enforcement::Deliver,
            };
            if enforcement != Enforcement::Deliver {
                return RouteReport {
                    route: route_name,
                    delivery_id: id,
                    recipients,
                    webhook: None,
                    webhook_latency: None,
                    s3_latency: None,
                    refused_by_auth: Some(enforcement),
                };
            }
            // The stored message carries our Authentication-Results (RFC 8601 §5).
            let raw = match (&route.storage, verdict.as_deref()) {
                (Some(storage), Some(verdict)) if storage.raw => Arc::new(auth::stamp::stamp(
                    &raw,
                    &authserv_id,
                    &verdict.header,
                )),
                _ => raw,
            };
            let deadline = Instant::now() + route.budget;
            // Content goes to S3 first: the payload points at it, and without it no webhook.
            let s3_started = Instant::now();
            let stored = match &route.storage {
                None => Stored::default(),
                Some(storage) => {
                    match store_in_s3(storage, &id, received_time, &parsed, &raw, deadline).await {
                        Ok(stored) => stored,
                        Err(e) => {
                            log::warn!(
                                "delivery {id}: S3 storage failed ({e}); the webhook is not called"
                            );
                            return RouteReport {
                                route: route_name,
                                delivery_id: id,
                                recipients,
                                webhook: None,
                                webhook_latency: None,
                                s3_latency: Some(s3_started.elapsed()),
                                refused_by_auth: None,
                            };
                        }
                    }
                }
            };
            let s3_latency = route.storage.as_ref().map(|_| s3_started.elapsed());
            // The raw bytes are stored (or not needed); the rendered body is all that waits on
            // the receiver from here on.
            drop(raw);
            let body = {
                let id = id.clone();
                cpu_work(size, move || {
                    payload::render_stored(
                        &id,
                        &received_at,
                        &envelope,
                        &parsed,
                        size,
                        &stored,
                        verdict.as_deref(),
                    )
                })
                .await
            };
            let posted = Instant::now();
            // The minimum window makes up for time the uploads took; a route without S3 keeps
            // its budget exactly (found by the fault suite, issue 8: a 2 s budget ran for 5 s).
            let webhook_deadline = match &route.storage {
                Some(_) => deadline.max(posted + MIN_WEBHOOK_WINDOW),
                None => deadline,
            };
            let outcome = route
                .client
                .deliver_until(&id, Arc::new(body), webhook_deadline)
                .await;
            RouteReport {
                route: route_name,
                delivery_id: id,
                recipients,
                webhook: Some(outcome),
                webhook_latency: Some(posted.elapsed()),
                s3_latency,
                refused_by_auth: None,
            }
        }
    })
    .collect();
    // Each route holds what it still needs; the message and its parsed form are released
    // before the wait on the receivers, which is where a delivery spends its time under load:
    // a message in flight then costs its payload, not its payload, bytes and parsed copy.
    drop(parsed);
    drop(data);
    report.routes = join_all(posts).await;

    let mut ids = Vec::new();
    let mut rejection = None;
    let mut temp_failed = false;
    let mut auth_rejected = false;
    let mut auth_temp_failed = false;
    for route in &report.routes {
        match (&route.webhook, route.refused_by_auth) {
            (_, Some(Enforcement::Reject)) => auth_rejected = true,
            (_, Some(Enforcement::TempFail)) => auth_temp_failed = true,
            (Some(WebhookOutcome::Accepted { .. }), _) => ids.push(route.delivery_id.clone()),
            (Some(WebhookOutcome::Rejected { reason, .. }), _) => rejection = Some(reason.clone()),
            (Some(WebhookOutcome::Failed { .. }) | None, _) => temp_failed = true,
        }
    }
    // A transaction's routes share their DMARC mode (see `transaction_group`), so either every
    // route was judged by DMARC or none was. Were that ever not so, a temporary failure still
    // wins (everyone retries; receivers de-duplicate by webhook-id), then a refusal.
    let outcome = if temp_failed {
        Outcome::TempFailed
    } else if auth_temp_failed {
        Outcome::AuthTempFailed
    } else if auth_rejected {
        Outcome::AuthRejected
    } else if let Some(reason) = rejection {
        Outcome::Rejected { reason }
    } else {
        Outcome::Delivered { ids }
    };
    log::info!(
        "delivery finished: {}, {} bytes, {} attachment(s), {:?} in {} ms",
        report
            .routes
            .iter()
            .map(|r| r.delivery_id.as_str())
            .collect::<Vec<_>>()
            .join(","),
        report.size,
        report.attachments.len(),
        outcome_label(&outcome),
        started.elapsed().as_millis()
    );
    report.outcome = outcome;
    report
}

/// What happened to one route's share of a message.
#[derive(Debug, Clone)]
pub struct RouteReport {
    /// The route's `match` pattern.
    pub route: String,
    pub delivery_id: String,
    pub recipients: Vec<String>,
    /// `None` when the message was refused before any delivery.
    pub webhook: Option<WebhookOutcome>,
    pub webhook_latency: Option<Duration>,
    /// Time the route's S3 uploads took, when it stores in S3.
    pub s3_latency: Option<Duration>,
    /// The route enforces DMARC and refused (`Reject`) or deferred (`TempFail`) the message.
    pub refused_by_auth: Option<Enforcement>,
}

/// Everything the node may remember about one transaction's delivery (DESIGN §6): the outcome
/// and metadata, never content.
#[derive(Debug, Clone)]
pub struct DeliveryReport {
    pub outcome: Outcome,
    pub routes: Vec<RouteReport>,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub attachments: Vec<AttachmentSummary>,
    pub size: usize,
    pub received_at: SystemTime,
    /// The authentication results as words (no domain): metrics, and DMARC's for the record.
    pub auth: Option<auth::verdict::Results>,
}

impl DeliveryReport {
    /// One metadata record per route, for the reply `smtp_code` the sender got.
    pub fn records(&self, smtp_code: u16, store_subject: bool) -> Vec<EmailRecord> {
        let now = SystemTime::now();
        self.routes
            .iter()
            .map(|route| {
                let (status, webhook_status) = match (&self.outcome, &route.webhook) {
                    (Outcome::TooComplex(_) | Outcome::ExpandsPastBudget, _) => {
                        (Status::Failed, None)
                    }
                    (_, None) if route.refused_by_auth == Some(Enforcement::Reject) => {
                        (Status::Rejected, None)
                    }
                    (_, Some(WebhookOutcome::Accepted { status, .. })) => {
                        (Status::Delivered, Some(*status))
                    }
                    (_, Some(WebhookOutcome::Rejected { status, .. })) => {
                        (Status::Rejected, Some(*status))
                    }
                    (_, Some(WebhookOutcome::Failed { last_status, .. })) => {
                        (Status::Tempfailed, *last_status)
                    }
                    (_, None) => (Status::Tempfailed, None),
                };
                EmailRecord {
                    id: new_id("rec_", self.received_at),
                    delivery_id: route.delivery_id.clone(),
                    message_id: self.message_id.clone(),
                    recipients: route.recipients.clone(),
                    route: route.route.clone(),
                    subject: if store_subject {
                        self.subject.clone()
                    } else {
                        None
                    },
                    received_at: unix_ms(self.received_at),
                    delivered_at: (status == Status::Delivered).then(|| unix_ms(now)),
                    status,
                    smtp_code,
                    webhook_status,
                    webhook_latency_ms: route
                        .webhook_latency
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    attachments: self.attachments.clone(),
                    size: self.size as u64,
                    dmarc: self.auth.as_ref().map(|a| a.dmarc.to_string()),
                }
            })
            .collect()
    }
}

/// Stores what a route keeps in S3 — its attachments, its raw message — before its webhook,
/// at most [`MAX_CONCURRENT_UPLOADS`] at a time, each from the bytes already in memory. Every
/// upload must succeed; the first failure ends the route's delivery (the sender retries and
/// the same keys are overwritten).
async fn store_in_s3(
    storage: &RouteStorage,
    id: &str,
    received: SystemTime,
    parsed: &Arc<ParsedMessage>,
    raw: &Arc<Vec<u8>>,
    deadline: Instant,
) -> Result<Stored, S3Error> {
    let client = &storage.client;
    let dir = s3::keys::delivery_dir(client.prefix(), received, id);
    let location = |key: String| S3Ref {
        bucket: client.bucket().to_string(),
        url: client.object_url(&key),
        key,
    };
    let mut stored = Stored::default();
    if storage.attachments {
        let keys: Vec<String> = parsed
            .attachments
            .iter()
            .enumerate()
            .map(|(i, a)| s3::keys::attachment_key(&dir, i + 1, a.filename.as_deref()))
            .collect();
        let indices: Vec<usize> = (0..keys.len()).collect();
        for window in indices.chunks(MAX_CONCURRENT_UPLOADS) {
            let uploads = window.iter().map(|&index| {
                let attachment = &parsed.attachments[index];
                client.put_object(
                    &keys[index],
                    s3::object_content_type(&attachment.content_type),
                    Arc::new(AttachmentBytes {
                        message: parsed.clone(),
                        index,
                    }),
                    Some(attachment.sha256.clone()),
                    deadline,
                )
            });
            for result in join_all(uploads).await {
                result?;
            }
        }
        stored.attachments = Some(keys.into_iter().map(location).collect());
    }
    if storage.raw {
        let key = s3::keys::raw_key(&dir);
        client
            .put_object(&key, RAW_MESSAGE_CONTENT_TYPE, raw.clone(), None, deadline)
            .await?;
        stored.raw = Some(location(key));
    }
    Ok(stored)
}

/// One attachment's bytes, borrowed from the parsed message it belongs to: an upload body that
/// costs a reference count, not a copy.
struct AttachmentBytes {
    message: Arc<ParsedMessage>,
    index: usize,
}

impl AsRef<[u8]> for AttachmentBytes {
    fn as_ref(&self) -> &[u8] {
        self.message
            .attachments
            .get(self.index)
            .map_or(&[], |a| a.data.as_slice())
    }
}

/// Charges `reservation` (which holds the message's `size` received bytes) for what the message
/// holds once parsed (`parsed` bytes) and rendered (`payloads` bytes, every route's), at
/// [`HELD_PER_CHARGED_BYTE`]. `None` when the charge is held; else the outcome: the budget is
/// full for now, or the message could never fit it.
fn charge(
    reservation: &mut crate::smtp::budget::Reservation,
    size: usize,
    parsed: usize,
    payloads: usize,
) -> Option<Outcome> {
    let held = size.saturating_add(parsed).saturating_add(payloads);
    let needed = held.div_ceil(HELD_PER_CHARGED_BYTE);
    let more = needed.saturating_sub(reservation.bytes());
    if more == 0 || reservation.try_grow(more) {
        return None;
    }
    if needed > reservation.budget_limit() {
        log::warn!(
            "delivery refused: the message would hold {held} bytes in memory, more than the in-flight budget allows"
        );
        Some(Outcome::ExpandsPastBudget)
    } else {
        log::warn!(
            "delivery tempfailed: the message would hold {held} bytes in memory, more than the in-flight budget has free"
        );
        Some(Outcome::OverBudget)
    }
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered { .. } => "delivered",
        Outcome::Rejected { .. } => "rejected",
        Outcome::TempFailed => "tempfailed",
        Outcome::TooComplex(_) => "rejected",
        Outcome::AuthRejected => "rejected by DMARC",
        Outcome::AuthTempFailed => "tempfailed by DMARC",
        Outcome::OverBudget => "tempfailed",
        Outcome::ExpandsPastBudget => "rejected",
    }
}

/// Runs `work` for a message of `size` bytes: inline when small, else on smol's blocking pool
/// (see [`INLINE_WORK_MAX_BYTES`]).
async fn cpu_work<T: Send + 'static>(size: usize, work: impl FnOnce() -> T + Send + 'static) -> T {
    if size <= INLINE_WORK_MAX_BYTES {
        work()
    } else {
        smol::unblock(work).await
    }
}

/// Awaits all futures concurrently, results in input order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, result) in futures.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => *result = Some(out),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}
