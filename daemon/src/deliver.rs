//! Delivery: one function from a received transaction to an outcome, and the SMTP reply derived
//! from that outcome only (DESIGN §2, §3).
//!
//! Recipients are grouped by route; the message is parsed once and delivered once per route, all
//! routes at the same time. `250` only if every route accepted. Nothing is written anywhere: the
//! message lives in memory until this function returns.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::Config;
use crate::message::{self, LimitExceeded, ParseLimits, ParsedMessage};
use crate::payload::{self, Envelope, TlsInfo};
use crate::smtp::session::{RecipientPolicy, Reply, Transaction};
use crate::webhook::{WebhookClient, WebhookError, WebhookOutcome};

/// The routing table: which route takes a recipient (the first match, in config order).
#[derive(Debug)]
pub struct Router {
    routes: Vec<RouteRuntime>,
}

/// A route with its ready client.
#[derive(Debug)]
struct RouteRuntime {
    name: String,
    pattern: crate::config::Pattern,
    client: WebhookClient,
}

impl Router {
    pub fn new(config: &Config) -> Result<Router, WebhookError> {
        let routes = config
            .routes
            .iter()
            .map(|route| {
                Ok(RouteRuntime {
                    name: route.name.clone(),
                    pattern: route.pattern.clone(),
                    client: WebhookClient::new(route)?,
                })
            })
            .collect::<Result<_, WebhookError>>()?;
        Ok(Router { routes })
    }

    fn route_of(&self, address: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.pattern.matches(address))
    }
}

impl RecipientPolicy for Router {
    fn accepts(&self, address: &str) -> bool {
        self.route_of(address).is_some()
    }
}

/// What the SMTP session knows about its peer, for the envelope.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_ip: String,
    pub tls: Option<TlsInfo>,
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
            Outcome::TooComplex(limit) => Reply::new(
                554,
                format!(
                    "5.6.0 Message refused: {}",
                    match limit {
                        LimitExceeded::MimeDepth => "MIME nesting too deep",
                        LimitExceeded::MimeParts => "too many MIME parts",
                        LimitExceeded::Headers => "too many header fields",
                    }
                ),
            ),
        }
    }
}

/// Delivers a transaction to every route its recipients belong to.
///
/// Takes the transaction by value: its bytes move into shared ownership instead of being
/// copied, and its in-flight reservation is released when delivery is over.
pub async fn deliver(router: &Router, tx: Transaction, peer: &PeerInfo) -> Outcome {
    let Transaction {
        helo,
        mail_from,
        rcpt_to,
        data,
        reservation: _reservation,
        ..
    } = tx;
    let started = Instant::now();
    let received_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
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
        return Outcome::TempFailed;
    }

    // Parsing is CPU work on possibly large input: keep it off the I/O threads.
    let data = Arc::new(data);
    let parsed: Arc<ParsedMessage> = {
        let data = data.clone();
        Arc::new(smol::unblock(move || message::parse(&data, &ParseLimits::default())).await)
    };

    if let Some(limit) = parsed.limit_exceeded {
        log::warn!("delivery refused: message past the MIME limit {limit:?}");
        return Outcome::TooComplex(limit);
    }

    // One payload per route (each carries only its own recipients), posted concurrently.
    let posts = groups.into_iter().map(|(route_index, rcpt_to)| {
        let route = &router.routes[route_index];
        let id = route.client.delivery_id(&route.name, &rcpt_to, &data);
        let envelope = Envelope {
            mail_from: mail_from.clone(),
            rcpt_to,
            helo: helo.clone(),
            remote_ip: peer.remote_ip.clone(),
            tls: peer.tls.clone(),
        };
        let parsed = parsed.clone();
        let received_at = received_at.clone();
        let size = data.len();
        async move {
            let body = {
                let id = id.clone();
                smol::unblock(move || payload::render(&id, &received_at, &envelope, &parsed, size))
                    .await
            };
            let outcome = route.client.deliver(&id, Arc::new(body)).await;
            (id, outcome)
        }
    });
    let results = join_all(posts).await;

    let mut ids = Vec::new();
    let mut rejection = None;
    let mut temp_failed = false;
    for (id, outcome) in results {
        match outcome {
            WebhookOutcome::Accepted { .. } => ids.push(id),
            WebhookOutcome::Rejected { reason, .. } => rejection = Some(reason),
            WebhookOutcome::Failed { .. } => temp_failed = true,
        }
    }
    let outcome = if temp_failed {
        Outcome::TempFailed
    } else if let Some(reason) = rejection {
        Outcome::Rejected { reason }
    } else {
        Outcome::Delivered { ids }
    };
    log::info!(
        "delivery finished: {} bytes, {} attachment(s), {:?} in {} ms",
        data.len(),
        parsed.attachments.len(),
        outcome_label(&outcome),
        started.elapsed().as_millis()
    );
    outcome
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered { .. } => "delivered",
        Outcome::Rejected { .. } => "rejected",
        Outcome::TempFailed => "tempfailed",
        Outcome::TooComplex(_) => "rejected",
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
