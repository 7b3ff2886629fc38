//! The node's Prometheus metrics (`GET /metrics`): SMTP sessions, messages by outcome, webhook
//! and S3 latency, bytes held in memory, store size.
//!
//! One [`Metrics`] per node, shared as `Arc<Metrics>`; every method is a cheap atomic update, so
//! the SMTP and delivery paths call them inline. Metrics carry counts and timings only: never an
//! address, a subject, a route secret or anything else a label could leak (the only label is
//! the fixed `outcome` set).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The message outcomes counted by [`Metrics::message`]: the four record statuses of DESIGN §6
/// plus `refused` (refused before delivery was attempted, e.g. too large or SMTP smuggling).
pub const OUTCOMES: [&str; 5] = ["delivered", "tempfailed", "rejected", "failed", "refused"];

/// Bucket bounds (seconds) of the latency histograms: from a fast LAN answer up to the
/// largest webhook budget (`MAX_WEBHOOK_BUDGET`, 5 minutes).
const LATENCY_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// How the `/metrics` body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (`text/plain; version=0.0.4`): what scrapers accept by
    /// default.
    Prometheus,
    /// OpenMetrics 1.0 (`application/openmetrics-text`): the same lines plus the `# EOF` marker.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Sender-authentication checks and their result words (DESIGN §11), the only values of the
/// `check` and `result` labels of `mxnode_auth_results_total`.
pub const AUTH_RESULTS: [(&str, &[&str]); 4] = [
    (
        "spf",
        &[
            "pass",
            "fail",
            "softfail",
            "neutral",
            "none",
            "temperror",
            "permerror",
        ],
    ),
    (
        "dkim",
        &[
            "pass",
            "fail",
            "neutral",
            "none",
            "temperror",
            "permerror",
            "policy",
        ],
    ),
    ("dmarc", &["pass", "fail", "none", "temperror", "permerror"]),
    ("arc", &["pass", "fail", "none"]),
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabel {
    check: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Every metric of the node, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// SMTP sessions open now.
    sessions_active: Gauge,
    /// SMTP sessions ever opened.
    sessions_total: Counter,
    /// Messages by outcome (one count per message and route, like the records).
    messages: Family<OutcomeLabel, Counter>,
    /// Sender-authentication results by check (one per message; DKIM one per signature).
    auth_results: Family<AuthLabel, Counter>,
    /// Time from the first webhook attempt to its final answer.
    webhook_latency: Histogram,
    /// Time of one S3 PUT.
    s3_latency: Histogram,
    /// Message bytes held in memory across all sessions.
    in_flight_bytes: Gauge,
    /// Approximate bytes the metadata store takes on disk.
    store_size_bytes: Gauge,
    /// 1 when the trusted release keys include the development key (issue 16).
    development_keys: Gauge,
    /// 1 when the last update check found the channel's verified manifest expired (issue 16).
    channel_stale: Gauge,
    /// 1 while the settings persisted through the API could not be loaded and all mail is
    /// deferred with `451 4.3.0` (issue 16); 0 otherwise.
    settings_load_failed: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mxnode");
        let sessions_active = Gauge::default();
        registry.register(
            "smtp_sessions_active",
            "SMTP sessions open now",
            sessions_active.clone(),
        );
        let sessions_total = Counter::default();
        registry.register(
            "smtp_sessions",
            "SMTP sessions opened since start",
            sessions_total.clone(),
        );
        let messages = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "messages",
            "Messages by outcome (per route): delivered, tempfailed, rejected, failed, refused",
            messages.clone(),
        );
        // Every outcome appears from the first scrape on, so rates work without a first event.
        for outcome in OUTCOMES {
            drop(messages.get_or_create(&OutcomeLabel { outcome }));
        }
        let auth_results = Family::<AuthLabel, Counter>::default();
        registry.register(
            "auth_results",
            "Sender-authentication results by check (spf, dkim per signature, dmarc, arc)",
            auth_results.clone(),
        );
        for (check, results) in AUTH_RESULTS {
            for result in results {
                drop(auth_results.get_or_create(&AuthLabel { check, result }));
            }
        }
        let webhook_latency = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "webhook_latency",
            "Time from the first webhook attempt to the final answer",
            Unit::Seconds,
            webhook_latency.clone(),
        );
        let s3_latency = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "s3_latency",
            "Time of one S3 PUT",
            Unit::Seconds,
            s3_latency.clone(),
        );
        let in_flight_bytes = Gauge::default();
        registry.register_with_unit(
            "in_flight",
            "Message bytes held in memory across all sessions",
            Unit::Bytes,
            in_flight_bytes.clone(),
        );
        let store_size_bytes = Gauge::default();
        registry.register_with_unit(
            "store_size",
            "Approximate bytes of the metadata store on disk",
            Unit::Bytes,
            store_size_bytes.clone(),
        );
        let development_keys = Gauge::default();
        registry.register(
            "update_development_keys",
            "1 when the release keys this node trusts include the development key (anyone can sign a release), else 0",
            development_keys.clone(),
        );
        let channel_stale = Gauge::default();
        registry.register(
            "update_channel_stale",
            "1 when the last update check found the channel's signed manifest expired (the channel may be withholding updates), else 0",
            channel_stale.clone(),
        );
        let settings_load_failed = Gauge::default();
        registry.register(
            "settings_load_failed",
            "1 while the persisted settings cannot be loaded and every recipient is deferred with 451",
            settings_load_failed.clone(),
        );
        Metrics {
            registry,
            sessions_active,
            sessions_total,
            messages,
            auth_results,
            webhook_latency,
            s3_latency,
            in_flight_bytes,
            store_size_bytes,
            development_keys,
            channel_stale,
            settings_load_failed,
        }
    }

    /// An SMTP session started.
    pub fn session_opened(&self) {
        self.sessions_active.inc();
        self.sessions_total.inc();
    }

    /// An SMTP session ended (call exactly once per [`Metrics::session_opened`]).
    pub fn session_closed(&self) {
        self.sessions_active.dec();
    }

    /// A message reached `outcome`, one of [`OUTCOMES`]. Anything else is counted as `failed`
    /// and logged, so a typo in a caller shows up without inventing a label value.
    pub fn message(&self, outcome: &str) {
        let outcome = match OUTCOMES.iter().find(|known| **known == outcome) {
            Some(known) => *known,
            None => {
                log::warn!("metrics: unknown message outcome {outcome:?} counted as failed");
                "failed"
            }
        };
        self.messages.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// One message's authentication results. Only the fixed words of [`AUTH_RESULTS`] become
    /// label values.
    pub fn auth_results(&self, results: &crate::auth::verdict::Results) {
        let count = |check: &'static str, result: &str| {
            let known = AUTH_RESULTS
                .iter()
                .find(|(c, _)| *c == check)
                .and_then(|(_, words)| words.iter().find(|w| **w == result));
            if let Some(result) = known {
                self.auth_results
                    .get_or_create(&AuthLabel { check, result })
                    .inc();
            }
        };
        count("spf", results.spf);
        for dkim in &results.dkim {
            count("dkim", dkim);
        }
        count("dmarc", results.dmarc);
        count("arc", results.arc);
    }

    /// A webhook delivery finished (accepted, refused or given up) after `elapsed`.
    pub fn webhook_latency(&self, elapsed: Duration) {
        self.webhook_latency.observe(elapsed.as_secs_f64());
    }

    /// An S3 PUT finished after `elapsed`.
    pub fn s3_latency(&self, elapsed: Duration) {
        self.s3_latency.observe(elapsed.as_secs_f64());
    }

    /// Message bytes held in memory right now.
    pub fn set_in_flight(&self, bytes: u64) {
        self.in_flight_bytes.set(gauge_value(bytes));
    }

    /// Whether the persisted settings failed to load (all mail deferred).
    pub fn set_settings_load_failed(&self, failed: bool) {
        self.settings_load_failed.set(i64::from(failed));
    }

    /// The store's size on disk (sampled at each scrape by the API).
    pub fn set_store_size(&self, bytes: u64) {
        self.store_size_bytes.set(gauge_value(bytes));
    }

    /// Whether the trusted release keys include the development key.
    pub fn set_development_keys(&self, development: bool) {
        self.development_keys.set(i64::from(development));
    }

    /// Whether the update channel's verified manifest was found expired.
    pub fn set_channel_stale(&self, stale: bool) {
        self.channel_stale.set(i64::from(stale));
    }

    /// Every metric in Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        self.render_as(Format::Prometheus)
    }

    /// Every metric in `format`.
    pub fn render_as(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the encoder's error type is fmt::Error.
        let _ = encode_registry(&mut out, &self.registry);
        if format == Format::OpenMetrics {
            let _ = encode_eof(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line `name` (with labels, exactly as rendered).
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
    }

    #[test]
    fn sessions_and_outcomes_are_counted() {
        let metrics = Metrics::new();
        metrics.session_opened();
        metrics.session_opened();
        metrics.session_closed();
        metrics.message("delivered");
        metrics.message("delivered");
        metrics.message("refused");
        let text = metrics.render();
        let check = |name: &str, expect: f64| {
            assert_eq!(sample(&text, name), Some(expect), "{name} in\n{text}");
        };
        check("mxnode_smtp_sessions_active", 1.0);
        check("mxnode_smtp_sessions_total", 2.0);
        check("mxnode_messages_total{outcome=\"delivered\"}", 2.0);
        check("mxnode_messages_total{outcome=\"refused\"}", 1.0);
        check("mxnode_messages_total{outcome=\"tempfailed\"}", 0.0);
    }

    #[test]
    fn auth_results_are_counted_per_check_and_result() {
        let metrics = Metrics::new();
        metrics.auth_results(&crate::auth::verdict::Results {
            spf: "pass",
            dkim: vec!["pass", "fail"],
            dmarc: "fail",
            arc: "none",
        });
        let text = metrics.render();
        let check = |name: &str, expect: f64| {
            assert_eq!(sample(&text, name), Some(expect), "{name} in\n{text}");
        };
        check(
            "mxnode_auth_results_total{check=\"spf\",result=\"pass\"}",
            1.0,
        );
        check(
            "mxnode_auth_results_total{check=\"dkim\",result=\"pass\"}",
            1.0,
        );
        check(
            "mxnode_auth_results_total{check=\"dkim\",result=\"fail\"}",
            1.0,
        );
        check(
            "mxnode_auth_results_total{check=\"dmarc\",result=\"fail\"}",
            1.0,
        );
        check(
            "mxnode_auth_results_total{check=\"arc\",result=\"none\"}",
            1.0,
        );
        check(
            "mxnode_auth_results_total{check=\"dmarc\",result=\"pass\"}",
            0.0,
        );
    }

    #[test]
    fn unknown_outcomes_never_become_label_values() {
        let metrics = Metrics::new();
        metrics.message("bob@in.example.test");
        let text = metrics.render();
        assert!(!text.contains("bob@"), "{text}");
        assert_eq!(
            sample(&text, "mxnode_messages_total{outcome=\"failed\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn latencies_gauges_and_formats_render() {
        let metrics = Metrics::new();
        metrics.webhook_latency(Duration::from_millis(300));
        metrics.s3_latency(Duration::from_millis(20));
        metrics.set_in_flight(4096);
        metrics.set_store_size(u64::MAX);
        let text = metrics.render();
        assert_eq!(
            sample(&text, "mxnode_webhook_latency_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "mxnode_webhook_latency_seconds_bucket{le=\"0.5\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "mxnode_webhook_latency_seconds_bucket{le=\"0.25\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "mxnode_s3_latency_seconds_count"), Some(1.0));
        assert_eq!(sample(&text, "mxnode_in_flight_bytes"), Some(4096.0));
        assert_eq!(
            sample(&text, "mxnode_store_size_bytes"),
            Some(i64::MAX as f64)
        );
        assert!(!text.contains("# EOF"));
        assert!(metrics.render_as(Format::OpenMetrics).ends_with("# EOF\n"));
    }
}
