//! Webhook delivery (DESIGN §4): a signed HTTPS POST per route, retried inside a time budget.
//!
//! Signing follows the Standard Webhooks specification. Requests go through the route's own
//! [`net::Client`] (rustls on ring, TLS 1.3/1.2; HTTP/2 when the receiver offers it, else
//! HTTP/1.1 keep-alive), as futures on the session's executor: a delivery waiting on its
//! receiver holds no thread. The outcome is classified here and only here: 2xx accepted, 4xx
//! other than 408/429 rejected (permanent), everything else a temporary failure.
//!
//! Never logs payloads or response bodies; log lines carry ids, statuses and timings only.
//! Never opens a connection itself (that is [`crate::net`]'s job).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::hmac;

use crate::config::Route;
use crate::net;

/// First pause between attempts; doubled after each failure.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// Longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// One attempt never takes longer than this, so a hanging receiver still leaves budget to retry.
const MAX_ATTEMPT_TIME: Duration = Duration::from_secs(20);
/// An attempt shorter than this is not worth starting.
const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(200);
/// How much of a refusal's body is read to build the short SMTP reason.
const MAX_REASON_BYTES: usize = 512;
/// Length of the sanitised reason in the SMTP reply.
const MAX_REASON_CHARS: usize = 100;
/// An accepted or retried answer's body is read (and dropped) up to this size, so its
/// HTTP/1.1 connection can serve the next message; a longer one closes the connection.
const MAX_DRAINED_BODY_BYTES: usize = 64 * 1024;
/// Keep-alive connections a route keeps open between messages. Every session delivering at the
/// same moment holds one (over HTTP/1.1; over HTTP/2 they share one); a connection returned to
/// a full pool is closed, and the next message pays a TCP and TLS handshake for it. Above the
/// session counts a node sees in practice.
const MAX_IDLE_CONNECTIONS: usize = 256;
/// Bodies up to this size are signed on the session's task; the HMAC over a larger one (a
/// payload with inlined attachments, up to tens of MiB) runs on the blocking pool, where it
/// cannot hold up the other sessions sharing the executor.
const INLINE_SIGN_MAX_BYTES: usize = 64 * 1024;

/// Why a webhook client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot read CA bundle {path}: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error("CA bundle {path} holds no PEM certificate")]
    EmptyCa { path: String },
}

/// What the receiver made of a delivery, after all attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// A 2xx answer.
    Accepted { status: u16, attempts: u32 },
    /// A 4xx other than 408/429: the receiver refused this message for good.
    Rejected {
        status: u16,
        /// Printable ASCII from the response body, short; may be empty.
        reason: String,
    },
    /// Budget exhausted on 5xx/408/429, timeouts, connection or TLS failures.
    Failed {
        last_error: String,
        /// The HTTP status of the last attempt, when the receiver answered at all.
        last_status: Option<u16>,
        attempts: u32,
    },
}

/// Classifies one HTTP status per DESIGN §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Accepted,
    Rejected,
    Retry,
}

pub fn classify(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Accepted,
        408 | 429 => StatusClass::Retry,
        400..=499 => StatusClass::Rejected,
        _ => StatusClass::Retry,
    }
}

/// The `webhook-signature` header value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// A route's key for [`WebhookClient::delivery_id`], movable to another thread.
#[derive(Clone)]
pub struct DeliveryIdKey(hmac::Key);

impl std::fmt::Debug for DeliveryIdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryIdKey").finish_non_exhaustive()
    }
}

impl DeliveryIdKey {
    /// See [`WebhookClient::delivery_id`].
    pub fn delivery_id(&self, route_name: &str, rcpt_to: &[String], data: &[u8]) -> String {
        let mut rcpts: Vec<String> = rcpt_to.iter().map(|r| r.to_lowercase()).collect();
        rcpts.sort();
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"mxnode delivery id v1\0");
        ctx.update(route_name.as_bytes());
        ctx.update(b"\0");
        ctx.update(rcpts.join("\n").as_bytes());
        ctx.update(b"\0");
        ctx.update(data);
        let tag = ctx.sign();
        let hex: String = tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("msg_{hex}")
    }
}

/// Posts payloads for one route.
pub struct WebhookClient {
    /// The route's HTTP client: its trust store (system roots plus the route CA) and its
    /// keep-alive connections.
    client: net::Client,
    url: String,
    key: hmac::Key,
    key_bytes: Vec<u8>,
    budget: Duration,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient")
            .field("url", &self.url)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// Builds the client of a route: system roots plus the route's CA bundle, offering HTTP/2
    /// and HTTP/1.1.
    pub fn new(route: &Route) -> Result<WebhookClient, WebhookError> {
        let ca = route.webhook_ca.as_deref();
        let tls = net::client_config(ca, net::Protocols::Http2AndHttp1).map_err(|e| {
            let path = ca.map(|p| p.display().to_string()).unwrap_or_default();
            match e {
                net::CaError::Read(source) => WebhookError::ReadCa { path, source },
                net::CaError::Empty => WebhookError::EmptyCa { path },
            }
        })?;
        Ok(WebhookClient {
            client: net::Client::new(tls, MAX_IDLE_CONNECTIONS),
            url: route.webhook.clone(),
            key: hmac::Key::new(hmac::HMAC_SHA256, route.webhook_key.expose()),
            key_bytes: route.webhook_key.expose().to_vec(),
            budget: route.webhook_budget,
        })
    }

    /// The stable delivery id of DESIGN §4: a keyed hash of the message bytes and its
    /// recipients for this route, so a retransmission after a lost `250` carries the same
    /// `webhook-id` and the receiver can de-duplicate.
    pub fn delivery_id(&self, route_name: &str, rcpt_to: &[String], data: &[u8]) -> String {
        self.delivery_id_key()
            .delivery_id(route_name, rcpt_to, data)
    }

    /// What computes this route's delivery ids, detached from the client so that the hashing
    /// (over the whole message) can run on the blocking pool.
    pub fn delivery_id_key(&self) -> DeliveryIdKey {
        DeliveryIdKey(self.key.clone())
    }

    /// Posts `body` with retries until accepted, rejected or the budget is spent.
    pub async fn deliver(&self, id: &str, body: Arc<Vec<u8>>) -> WebhookOutcome {
        self.deliver_until(id, body, Instant::now() + self.budget)
            .await
    }

    /// Posts `body` with retries until accepted, rejected or `deadline`: for a route that spent
    /// part of its budget before the webhook (S3 uploads share the budget).
    pub async fn deliver_until(
        &self,
        id: &str,
        body: Arc<Vec<u8>>,
        deadline: Instant,
    ) -> WebhookOutcome {
        let started = Instant::now();
        let mut backoff = INITIAL_BACKOFF;
        let mut attempts = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            attempts += 1;
            let attempt = self.attempt(id, body.clone(), remaining.min(MAX_ATTEMPT_TIME));
            let (last_error, last_status) = match attempt.await {
                Ok((status, _)) if classify(status) == StatusClass::Accepted => {
                    // Success at the first attempt is the common case, and the delivery's own
                    // line (`delivery finished`, with this id) says it: one log line per message
                    // instead of two, which at thousands of messages a second is journald's
                    // rate limit and a system call each.
                    let level = if attempts > 1 {
                        log::Level::Info
                    } else {
                        log::Level::Debug
                    };
                    log::log!(
                        level,
                        "webhook {id}: accepted with {status} after {attempts} attempt(s) in {} ms",
                        started.elapsed().as_millis()
                    );
                    return WebhookOutcome::Accepted { status, attempts };
                }
                Ok((status, reason)) if classify(status) == StatusClass::Rejected => {
                    log::warn!("webhook {id}: receiver refused with {status}");
                    return WebhookOutcome::Rejected { status, reason };
                }
                Ok((status, _)) => (format!("receiver answered {status}"), Some(status)),
                Err(e) => (e, None),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < backoff + MIN_ATTEMPT_TIME {
                log::warn!(
                    "webhook {id}: giving up after {attempts} attempt(s) in {} ms: {last_error}",
                    started.elapsed().as_millis()
                );
                return WebhookOutcome::Failed {
                    last_error,
                    last_status,
                    attempts,
                };
            }
            log::info!("webhook {id}: attempt {attempts} failed ({last_error}); retrying");
            smol::Timer::after(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One POST. Returns the status and, for refusals, a sanitised reason.
    async fn attempt(
        &self,
        id: &str,
        body: Arc<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signature = if body.len() <= INLINE_SIGN_MAX_BYTES {
            sign(&self.key_bytes, id, timestamp, &body)
        } else {
            let (key, id, body) = (self.key_bytes.clone(), id.to_string(), body.clone());
            smol::unblock(move || sign(&key, &id, timestamp, &body)).await
        };
        let deadline = Instant::now() + timeout;
        let request = http::Request::post(self.url.as_str())
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(net::shared_body(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = self
            .client
            .send(request, deadline)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let reason = if classify(status) == StatusClass::Rejected {
            let bytes = response
                .read_prefix(MAX_REASON_BYTES)
                .await
                .unwrap_or_default();
            sanitise_reason(&bytes)
        } else {
            // Read a small body to its end so the connection can be reused; ignore failures.
            let _ = response.read_body(MAX_DRAINED_BODY_BYTES).await;
            String::new()
        };
        Ok((status, reason))
    }
}

/// Keeps printable ASCII, collapses whitespace, caps the length: the receiver's text goes into
/// an SMTP reply line and must not break the protocol.
pub fn sanitise_reason(bytes: &[u8]) -> String {
    let text: String = bytes
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { ' ' })
        .collect();
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(MAX_REASON_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_reference_vector() {
        let key = crate::config::decode_webhook_secret(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("valid secret");
        let signature = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn statuses_map_to_the_design_classes() {
        for (status, class) in [
            (200, StatusClass::Accepted),
            (204, StatusClass::Accepted),
            (400, StatusClass::Rejected),
            (422, StatusClass::Rejected),
            (408, StatusClass::Retry),
            (429, StatusClass::Retry),
            (500, StatusClass::Retry),
            (503, StatusClass::Retry),
            (301, StatusClass::Retry),
        ] {
            assert_eq!(classify(status), class, "status {status}");
        }
    }

    #[test]
    fn reasons_are_sanitised_for_an_smtp_line() {
        assert_eq!(
            sanitise_reason(b"bad\r\n550 injected\x00 \xff x"),
            "bad 550 injected x"
        );
        assert_eq!(sanitise_reason(&[b'a'; 500]).len(), MAX_REASON_CHARS);
    }
}
