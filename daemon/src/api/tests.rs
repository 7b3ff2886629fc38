//! Controller tests on the in-memory store: authentication and scopes for every route,
//! pagination, deletion, erasure, export, settings masking, keys, audit events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::emails::{AuditFilters, EmailFilters};
use super::settings::{FileSettings, MASK};
use super::*;
use crate::config::ConfigError;
use crate::store::memory::MemoryStore;
use crate::store::{AttachmentSummary, EmailRecord, Status};

/// A settings backend that keeps one document in memory. It deliberately returns the real
/// secret it was given, so the tests prove the controller masks whatever a backend returns.
struct FakeSettings {
    document: Mutex<Value>,
}

impl FakeSettings {
    fn new() -> FakeSettings {
        FakeSettings {
            document: Mutex::new(json!({
                "routes": [{"match": "*@in.example.test", "webhook": "https://hooks.example.test/a",
                            "webhook_secret": "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="}],
                "s3": {"primary": {"endpoint": "https://s3.example.test", "bucket": "b",
                                   "access_key_id": "AKIA", "secret_access_key": "s3-secret-value"}},
                "retention": {"metadata": "24h", "audit": "90d", "store_subject": true}
            })),
        }
    }
}

impl SettingsBackend for FakeSettings {
    fn current(&self) -> Value {
        self.document.lock().expect("not poisoned").clone()
    }

    fn apply(&self, document: Value) -> Result<Value, Vec<ConfigError>> {
        if document["retention"]["metadata"] == "soon" {
            return Err(vec![ConfigError {
                key: "retention.metadata".into(),
                message: "expected a duration".into(),
            }]);
        }
        let mut current = self.document.lock().expect("not poisoned");
        for (section, value) in document.as_object().into_iter().flatten() {
            current[section] = value.clone();
        }
        Ok(current.clone())
    }
}

struct Fixture {
    api: Api,
    store: Arc<MemoryStore>,
    /// The clock, unix milliseconds; tests move it.
    now: Arc<AtomicU64>,
}

/// 2025-07-01T10:00:00Z.
const START_MS: u64 = 1_751_364_000_000;

fn fixture() -> Fixture {
    fixture_with(Arc::new(FakeSettings::new()))
}

fn fixture_with(settings: Arc<dyn SettingsBackend>) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let now = Arc::new(AtomicU64::new(START_MS));
    let clock_now = now.clone();
    let api = Api::with_clock(
        store.clone(),
        Arc::new(Metrics::new()),
        settings,
        Arc::new(move || UNIX_EPOCH + Duration::from_millis(clock_now.load(Ordering::SeqCst))),
    );
    Fixture { api, store, now }
}

impl Fixture {
    /// A new key with `scopes`, as its bearer caller.
    fn caller(&self, scopes: &[&str]) -> Caller {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let created = keys::create(self.store.as_ref(), "test", &scopes, "cli", self.time())
            .expect("creates a key");
        Caller::bearer(&created.key)
    }

    fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now.load(Ordering::SeqCst))
    }

    fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    fn put(&self, record: &EmailRecord) {
        self.store.put_record(record).expect("puts");
    }

    fn audit_events(&self) -> Vec<AuditEvent> {
        let mut events = Vec::new();
        let mut query = crate::store::AuditQuery {
            limit: 500,
            ..Default::default()
        };
        loop {
            let page = self.store.list_audit(&query).expect("lists");
            events.extend(page.items);
            match page.next {
                Some(next) => query.cursor = Some(next),
                None => return events,
            }
        }
    }

    fn actions(&self) -> Vec<String> {
        self.audit_events().into_iter().map(|e| e.action).collect()
    }
}

/// Record number `n`, received `n` seconds after [`START_MS`], to `recipient`.
fn record(n: u64, recipient: &str) -> EmailRecord {
    let ms = START_MS + n * 1000;
    EmailRecord {
        id: format!("rec_{ms:012x}{n:020x}"),
        delivery_id: format!("msg_{n:032x}"),
        message_id: Some(format!("<{n}@example.org>")),
        recipients: vec![recipient.to_string()],
        route: "*@in.example.test".into(),
        subject: Some(format!("subject {n}")),
        received_at: ms,
        delivered_at: Some(ms + 120),
        status: Status::Delivered,
        smtp_code: 250,
        webhook_status: Some(200),
        webhook_latency_ms: Some(120),
        attachments: vec![AttachmentSummary {
            filename: Some("report.pdf".into()),
            content_type: "application/pdf".into(),
            size: 1234,
        }],
        size: 4567,
        dmarc: None,
    }
}

/// The status a call answered: 200 for success, the error's status otherwise.
fn status<T>(result: Result<T, ApiError>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(e) => e.status,
    }
}

type Route = (&'static str, Scope, fn(&Api, &Caller) -> u16);

/// Every authenticated route, the scope it needs, and a call with valid input.
const ROUTES: &[Route] = &[
    ("GET /metrics", Scope::MetricsRead, |a, c| {
        status(a.metrics(c, crate::metrics::Format::Prometheus))
    }),
    ("GET /api/v1/emails", Scope::EmailsRead, |a, c| {
        status(a.list_emails(c, &EmailFilters::default()))
    }),
    ("GET /api/v1/emails/{id}", Scope::EmailsRead, |a, c| {
        status(a.get_email(c, "rec_missing"))
    }),
    ("DELETE /api/v1/emails/{id}", Scope::EmailsDelete, |a, c| {
        status(a.delete_email(c, "rec_missing"))
    }),
    ("POST /api/v1/erasure", Scope::EmailsDelete, |a, c| {
        status(a.erase(c, br#"{"address":"nobody@in.example.test"}"#))
    }),
    ("GET /api/v1/export", Scope::EmailsRead, |a, c| {
        status(a.export(c, None))
    }),
    ("GET /api/v1/audit", Scope::AuditRead, |a, c| {
        status(a.list_audit(c, &AuditFilters::default()))
    }),
    ("GET /api/v1/settings", Scope::SettingsRead, |a, c| {
        status(a.get_settings(c))
    }),
    ("PUT /api/v1/settings", Scope::SettingsWrite, |a, c| {
        status(a.put_settings(c, br#"{"retention":{"metadata":"2h"}}"#))
    }),
    ("POST /api/v1/keys", Scope::Admin, |a, c| {
        status(a.create_key(c, br#"{"name":"x","scopes":["metrics:read"]}"#))
    }),
    ("GET /api/v1/keys", Scope::Admin, |a, c| {
        status(a.list_keys(c))
    }),
    ("DELETE /api/v1/keys/{id}", Scope::Admin, |a, c| {
        status(a.revoke_key(c, "0000000000000000"))
    }),
    ("GET /api/v1/tls", Scope::SettingsRead, |a, c| {
        status(a.get_tls(c))
    }),
    ("PUT /api/v1/tls", Scope::SettingsWrite, |a, c| {
        status(a.put_tls(c, br#"{"certificate":"","key":""}"#))
    }),
    (
        "POST /api/v1/settings/s3/{name}/probe",
        Scope::SettingsWrite,
        |a, c| status(a.probe_s3(c, "primary")),
    ),
    ("GET /api/v1/recovery-key", Scope::Admin, |a, c| {
        status(a.get_recovery_key(c))
    }),
    ("DELETE /api/v1/recovery-key", Scope::Admin, |a, c| {
        status(a.delete_recovery_key(c))
    }),
];

#[test]
fn certificate_upload_without_tls_listeners_or_with_a_bad_body_is_refused() {
    let f = fixture();
    let admin = f.caller(&["admin"]);
    let state = f.api.get_tls(&admin).expect("readable");
    assert_eq!((state.source, state.used_by.len()), ("none", 0));
    let Err(e) = f.api.put_tls(&admin, br#"{"certificate":"x","key":"y"}"#) else {
        panic!("no TLS listener: nothing to replace");
    };
    assert_eq!((e.status, e.code), (409, "no_tls"));
    let Err(e) = f.api.put_tls(&admin, br#"{"certificate":"x"}"#) else {
        panic!("a body without the key is refused");
    };
    assert_eq!((e.status, e.code), (400, "invalid_body"));
    let Err(e) = f.api.get_recovery_key(&admin) else {
        panic!("no data_dir, no recovery key");
    };
    assert_eq!(e.status, 404);
}

#[test]
fn health_needs_no_key_and_names_no_secret() {
    let f = fixture();
    let health = serde_json::to_value(f.api.health()).expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health.as_object().map(|o| o.len()), Some(2));
}

#[test]
fn every_route_answers_401_without_a_valid_key() {
    let f = fixture();
    let real = f.caller(&["admin"]);
    let real_key = real
        .authorization
        .as_deref()
        .and_then(|h| h.strip_prefix("Bearer "))
        .expect("bearer")
        .to_string();
    let (id, _) = keys::parse(&real_key).expect("well-formed");
    let wrong_secret = format!("mxk_{id}_{}", "0".repeat(64));
    let unknown_id = format!("mxk_{}_{}", "f".repeat(16), "0".repeat(64));
    let callers = [
        ("no header", Caller::default()),
        (
            "basic auth",
            Caller {
                authorization: Some("Basic YWRtaW46YWRtaW4=".into()),
                ..Caller::default()
            },
        ),
        ("malformed key", Caller::bearer("not-a-key")),
        ("unknown key", Caller::bearer(&unknown_id)),
        ("wrong secret", Caller::bearer(&wrong_secret)),
    ];
    for (route, _, call) in ROUTES {
        for (what, caller) in &callers {
            assert_eq!(call(&f.api, caller), 401, "{route} with {what}");
        }
    }
}

#[test]
fn every_route_answers_403_without_its_scope_and_admin_implies_all() {
    let f = fixture();
    for (route, scope, call) in ROUTES {
        let others: Vec<&str> = Scope::ALL
            .iter()
            .filter(|s| *s != scope && **s != Scope::Admin)
            .map(|s| s.as_str())
            .collect();
        assert_eq!(
            call(&f.api, &f.caller(&others)),
            403,
            "{route} without {scope}"
        );
        let only = f.caller(&[scope.as_str()]);
        assert!(
            ![401, 403].contains(&call(&f.api, &only)),
            "{route} with exactly {scope}"
        );
        let admin = f.caller(&["admin"]);
        assert!(
            ![401, 403].contains(&call(&f.api, &admin)),
            "{route} with admin"
        );
    }
}

#[test]
fn pagination_is_stable_while_records_arrive() {
    let f = fixture();
    for n in 1..=7 {
        f.put(&record(n, "bob@in.example.test"));
    }
    let caller = f.caller(&["emails:read"]);
    let page = |cursor: Option<String>| {
        f.api
            .list_emails(
                &caller,
                &EmailFilters {
                    limit: Some("3".into()),
                    cursor,
                    ..Default::default()
                },
            )
            .expect("lists")
    };
    let subjects = |p: &super::emails::EmailPage| -> Vec<String> {
        p.items
            .iter()
            .map(|r| r.subject.clone().unwrap_or_default())
            .collect()
    };
    let first = page(None);
    assert_eq!(subjects(&first), ["subject 7", "subject 6", "subject 5"]);
    f.put(&record(8, "bob@in.example.test"));
    let second = page(first.next.clone());
    assert_eq!(subjects(&second), ["subject 4", "subject 3", "subject 2"]);
    let third = page(second.next.clone());
    assert_eq!(subjects(&third), ["subject 1"]);
    assert_eq!(third.next, None);
    // The same cursor gives the same page again.
    assert_eq!(page(first.next), second);
}

#[test]
fn listing_filters_and_renders_rfc3339_times() {
    let f = fixture();
    f.put(&record(1, "bob@in.example.test"));
    f.put(&EmailRecord {
        status: Status::Tempfailed,
        smtp_code: 451,
        delivered_at: None,
        ..record(2, "Bob@IN.example.test")
    });
    f.put(&record(3, "carol@in.example.test"));
    let caller = f.caller(&["emails:read"]);
    let list = |filters: EmailFilters| -> Vec<String> {
        f.api
            .list_emails(&caller, &filters)
            .expect("lists")
            .items
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    let bob = list(EmailFilters {
        recipient: Some("BOB@in.example.test".into()),
        ..Default::default()
    });
    assert_eq!(bob, [record(2, "").id, record(1, "").id]);
    let tempfailed = list(EmailFilters {
        status: Some("tempfailed".into()),
        ..Default::default()
    });
    assert_eq!(tempfailed, [record(2, "").id]);
    let window = list(EmailFilters {
        since: Some("2025-07-01T10:00:02Z".into()),
        until: Some((START_MS / 1000 + 3).to_string()),
        ..Default::default()
    });
    assert_eq!(window, [record(2, "").id]);
    let offset = list(EmailFilters {
        since: Some("2025-07-01T12:00:03+02:00".into()),
        ..Default::default()
    });
    assert_eq!(offset, [record(3, "").id]);

    let one = f.api.get_email(&caller, &record(1, "").id).expect("found");
    let json = serde_json::to_value(one).expect("json");
    assert_eq!(json["received_at"], "2025-07-01T10:00:01.000Z");
    assert_eq!(json["delivered_at"], "2025-07-01T10:00:01.120Z");
    assert_eq!(json["status"], "delivered");
    assert_eq!(json["attachments"][0]["filename"], "report.pdf");
}

#[test]
fn invalid_query_values_are_400_naming_each_field() {
    let f = fixture();
    let caller = f.caller(&["emails:read", "audit:read"]);
    let check = |filters: EmailFilters, expect: &[&str]| {
        let error = f.api.list_emails(&caller, &filters).expect_err("invalid");
        assert_eq!((error.status, error.code), (400, "invalid_parameter"));
        let keys: Vec<&str> = error.fields.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, expect, "{filters:?}");
    };
    let text = |s: &str| Some(s.to_string());
    check(
        EmailFilters {
            status: text("lost"),
            ..Default::default()
        },
        &["status"],
    );
    check(
        EmailFilters {
            limit: text("0"),
            ..Default::default()
        },
        &["limit"],
    );
    check(
        EmailFilters {
            limit: text("501"),
            ..Default::default()
        },
        &["limit"],
    );
    check(
        EmailFilters {
            limit: text("ten"),
            ..Default::default()
        },
        &["limit"],
    );
    check(
        EmailFilters {
            since: text("yesterday"),
            ..Default::default()
        },
        &["since"],
    );
    check(
        EmailFilters {
            until: text("99999999999999"),
            ..Default::default()
        },
        &["until"],
    );
    check(
        EmailFilters {
            recipient: text("not an address"),
            ..Default::default()
        },
        &["recipient"],
    );
    check(
        EmailFilters {
            cursor: text("not a cursor!"),
            ..Default::default()
        },
        &["cursor"],
    );
    check(
        EmailFilters {
            status: text("x"),
            limit: text("x"),
            since: text("x"),
            ..Default::default()
        },
        &["status", "since", "limit"],
    );
    let error = f
        .api
        .list_audit(
            &caller,
            &AuditFilters {
                cursor: text("garbage"),
                ..Default::default()
            },
        )
        .expect_err("invalid");
    assert_eq!(error.status, 400);
}

#[test]
fn delete_then_get_is_404_and_the_deletion_is_audited() {
    let f = fixture();
    let id = record(1, "bob@in.example.test").id;
    f.put(&record(1, "bob@in.example.test"));
    let caller = f.caller(&["emails:read", "emails:delete"]);
    assert!(f.api.get_email(&caller, &id).is_ok());
    f.api.delete_email(&caller, &id).expect("deleted");
    assert_eq!(status(f.api.get_email(&caller, &id)), 404);
    assert_eq!(status(f.api.delete_email(&caller, &id)), 404);
    let event = f
        .audit_events()
        .into_iter()
        .find(|e| e.action == "email.delete")
        .expect("audited");
    assert_eq!(event.target.as_deref(), Some(id.as_str()));
    assert!(event.actor.starts_with("key:"));
}

#[test]
fn erasure_returns_the_count_removes_the_records_and_audits_no_address() {
    let f = fixture();
    f.put(&record(1, "bob@in.example.test"));
    f.put(&record(2, "BOB@in.example.test"));
    f.put(&record(3, "carol@in.example.test"));
    let caller = f.caller(&["emails:read", "emails:delete"]);
    let erased = f
        .api
        .erase(&caller, br#"{"address":"Bob@In.Example.Test"}"#)
        .expect("erased");
    assert_eq!(erased.deleted, 2);
    let left = f
        .api
        .list_emails(&caller, &EmailFilters::default())
        .expect("lists");
    assert_eq!(left.items.len(), 1);
    assert_eq!(left.items[0].recipients, ["carol@in.example.test"]);
    assert_eq!(
        f.api
            .erase(&caller, br#"{"address":"bob@in.example.test"}"#)
            .expect("erased")
            .deleted,
        0
    );
    let events = f.audit_events();
    let erasures: Vec<_> = events.iter().filter(|e| e.action == "erasure").collect();
    assert_eq!(erasures.len(), 2);
    assert!(
        erasures
            .iter()
            .any(|e| e.detail.as_deref() == Some("deleted 2 records"))
    );
    let all = format!("{events:?}").to_lowercase();
    assert!(!all.contains("bob@"), "no address in the audit log: {all}");
}

#[test]
fn erasure_bodies_are_validated() {
    let f = fixture();
    let caller = f.caller(&["emails:delete"]);
    for body in [
        &b""[..],
        b"{}",
        b"[]",
        br#"{"address": 5}"#,
        br#"{"address": "nobody"}"#,
        br#"{"address": "a@b", "extra": 1}"#,
    ] {
        let error = f.api.erase(&caller, body).expect_err("invalid");
        assert_eq!(
            (error.status, error.code),
            (400, "invalid_body"),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn export_has_every_record_in_api_shape_and_is_audited() {
    let f = fixture();
    for n in 1..=3 {
        f.put(&record(n, "bob@in.example.test"));
    }
    f.put(&record(4, "carol@in.example.test"));
    let caller = f.caller(&["emails:read"]);
    let all = serde_json::to_value(f.api.export(&caller, None).expect("exports")).expect("json");
    assert_eq!(all["exported_at"], "2025-07-01T10:00:00.000Z");
    assert_eq!(all["truncated"], false);
    assert_eq!(all["records"].as_array().map(Vec::len), Some(4));
    assert_eq!(all["records"][0]["id"], record(4, "").id);
    assert_eq!(all["records"][0]["received_at"], "2025-07-01T10:00:04.000Z");
    let keys: Vec<&String> = all["records"][0]
        .as_object()
        .expect("object")
        .keys()
        .collect();
    let mut expect = vec![
        "attachments",
        "delivered_at",
        "delivery_id",
        "dmarc",
        "id",
        "message_id",
        "received_at",
        "recipients",
        "route",
        "size",
        "smtp_code",
        "status",
        "subject",
        "webhook_latency_ms",
        "webhook_status",
    ];
    expect.sort();
    assert_eq!(keys, expect);

    let bob = f
        .api
        .export(&caller, Some("bob@in.example.test"))
        .expect("exports");
    assert_eq!(bob.records.len(), 3);
    let mut details: Vec<String> = f
        .audit_events()
        .into_iter()
        .filter(|e| e.action == "export")
        .filter_map(|e| e.detail)
        .collect();
    details.sort();
    assert_eq!(
        details,
        ["3 records of one address", "4 records of all addresses"]
    );
    assert_eq!(status(f.api.export(&caller, Some("nobody"))), 400);
}

#[test]
fn settings_secrets_are_never_returned() {
    let f = fixture();
    let caller = f.caller(&["settings:read", "settings:write"]);
    let current = f.api.get_settings(&caller).expect("reads");
    assert_eq!(current["routes"][0]["webhook_secret"], MASK);
    assert_eq!(current["s3"]["primary"]["secret_access_key"], MASK);
    assert_eq!(current["s3"]["primary"]["access_key_id"], "AKIA");
    let text = current.to_string();
    assert!(
        !text.contains("whsec_c2Vj") && !text.contains("s3-secret-value"),
        "{text}"
    );

    let applied = f
        .api
        .put_settings(
            &caller,
            br#"{"routes":[{"match":"*@x.test","webhook":"https://h.test/","webhook_secret":"whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0"}]}"#,
        )
        .expect("applies");
    assert_eq!(applied["routes"][0]["webhook_secret"], MASK);
    assert!(!applied.to_string().contains("bmV3LXNl"));
    let event = f
        .audit_events()
        .into_iter()
        .find(|e| e.action == "settings.update")
        .expect("audited");
    assert_eq!(event.target.as_deref(), Some("routes"));
    assert!(!format!("{event:?}").contains("bmV3LXNl"));
}

#[test]
fn invalid_settings_are_400_naming_each_key() {
    let f = fixture();
    let caller = f.caller(&["settings:write"]);
    let error = f
        .api
        .put_settings(&caller, br#"{"retention":{"metadata":"soon"}}"#)
        .expect_err("invalid");
    assert_eq!((error.status, error.code), (400, "invalid_settings"));
    assert_eq!(
        error.fields,
        [FieldError::new("retention.metadata", "expected a duration")]
    );
    let body = error.body();
    assert_eq!(body["error"]["fields"][0]["key"], "retention.metadata");
    for bad in [&b"[1]"[..], b"nope"] {
        assert_eq!(status(f.api.put_settings(&caller, bad)), 400);
    }
    assert!(!f.actions().contains(&"settings.update".to_string()));
}

#[test]
fn file_settings_are_read_only_and_masked() {
    let text = r#"
[smtp]
listen = ["127.0.0.1:2525"]
[retention]
metadata = "12h"
[[route]]
match = "*@in.example.test"
webhook = "https://hooks.example.test/email"
webhook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;
    let config =
        crate::config::Config::from_raw(crate::config::RawConfig::parse(text).expect("parses"))
            .expect("valid");
    let f = fixture_with(Arc::new(FileSettings::new(&config)));
    let caller = f.caller(&["settings:read", "settings:write"]);
    let current = f.api.get_settings(&caller).expect("reads");
    assert_eq!(current["routes"][0]["match"], "*@in.example.test");
    assert_eq!(current["routes"][0]["webhook_secret"], MASK);
    assert_eq!(current["routes"][0]["webhook_budget"], "30s");
    assert_eq!(current["retention"]["metadata"], "12h");
    assert_eq!(current["retention"]["audit"], "90d");
    assert!(!current.to_string().contains("MfKQ9r8G"));
    let error = f
        .api
        .put_settings(&caller, br#"{"retention":{}}"#)
        .expect_err("read-only");
    assert_eq!((error.status, error.code), (501, "not_implemented"));
}

#[test]
fn keys_are_shown_once_stored_only_as_a_hash_and_revocable() {
    let f = fixture();
    let admin = f.caller(&["admin"]);
    let created = f
        .api
        .create_key(
            &admin,
            br#"{"name":"grafana","scopes":["metrics:read","metrics:read"]}"#,
        )
        .expect("creates");
    assert_eq!(created.view.scopes, ["metrics:read"]);
    let (id, secret) = keys::parse(&created.key).expect("well-formed key");
    assert_eq!(id, created.view.id);
    assert_eq!(id.len(), 16);
    assert_eq!(secret.len(), 64);

    let stored = f.store.get_api_key(id).expect("reads").expect("stored");
    assert_eq!(stored.secret_sha256, keys::secret_digest(secret));
    assert!(
        !format!("{stored:?}").contains(secret),
        "the secret itself is not stored"
    );

    let listed = serde_json::to_value(f.api.list_keys(&admin).expect("lists")).expect("json");
    let text = listed.to_string();
    assert!(
        !text.contains(secret) && !text.contains(&stored.secret_sha256),
        "{text}"
    );
    assert!(
        listed["keys"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k["id"] == id))
    );
    assert!(listed["keys"][0].get("key").is_none());

    let grafana = Caller::bearer(&created.key);
    assert!(
        f.api
            .metrics(&grafana, crate::metrics::Format::Prometheus)
            .is_ok()
    );
    f.api.revoke_key(&admin, id).expect("revokes");
    assert_eq!(
        status(f.api.metrics(&grafana, crate::metrics::Format::Prometheus)),
        401
    );
    assert_eq!(status(f.api.revoke_key(&admin, id)), 404);
    let admin_id = keys::parse(
        admin
            .authorization
            .as_deref()
            .and_then(|h| h.strip_prefix("Bearer "))
            .expect("bearer"),
    )
    .expect("well-formed")
    .0
    .to_string();
    assert_eq!(
        status(f.api.revoke_key(&admin, &admin_id)),
        409,
        "no self-revocation"
    );
    let actions = f.actions();
    assert!(actions.contains(&"api_key.create".to_string()));
    assert!(actions.contains(&"api_key.revoke".to_string()));
    assert!(!format!("{:?}", f.audit_events()).contains(secret));
}

#[test]
fn key_requests_are_validated() {
    let f = fixture();
    let admin = f.caller(&["admin"]);
    let check = |body: &str, expect: &[&str]| {
        let error = f
            .api
            .create_key(&admin, body.as_bytes())
            .expect_err("invalid");
        assert_eq!(error.status, 400, "{body}");
        let keys: Vec<&str> = error.fields.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, expect, "{body}");
    };
    check(r#"{"name":"","scopes":["admin"]}"#, &["name"]);
    check(r#"{"name":"x","scopes":[]}"#, &["scopes"]);
    check(
        r#"{"name":"x","scopes":["root","admin","emails:write"]}"#,
        &["scopes[0]", "scopes[2]"],
    );
    check(
        &format!(r#"{{"name":"{}","scopes":["admin"]}}"#, "n".repeat(101)),
        &["name"],
    );
    check(r#"{"name":"x"}"#, &[]);
}

#[test]
fn failed_authentication_is_audited_but_rate_limited() {
    let f = fixture();
    let bad = Caller::bearer(&format!("mxk_{}_{}", "a".repeat(16), "0".repeat(64)));
    for _ in 0..50 {
        assert_eq!(status(f.api.list_keys(&bad)), 401);
    }
    let failed = |f: &Fixture| f.actions().iter().filter(|a| *a == "login.failed").count();
    assert_eq!(failed(&f), 20);
    f.advance(Duration::from_secs(61));
    assert_eq!(status(f.api.list_keys(&bad)), 401);
    assert_eq!(
        failed(&f),
        22,
        "one summary of the 30 suppressed, and the new failure"
    );
    assert!(
        f.audit_events().iter().any(|e| e.detail.as_deref()
            == Some("30 further refused requests not recorded individually"))
    );
    let denied = f.caller(&["metrics:read"]);
    assert_eq!(status(f.api.list_keys(&denied)), 403);
    assert!(f.actions().contains(&"access.denied".to_string()));
}

#[test]
fn audit_listing_filters_by_action_and_pages() {
    let f = fixture();
    let caller = f.caller(&["audit:read", "emails:delete"]);
    for _ in 0..3 {
        f.advance(Duration::from_millis(5));
        f.api
            .erase(&caller, br#"{"address":"x@in.example.test"}"#)
            .expect("erases");
    }
    let page = f
        .api
        .list_audit(
            &caller,
            &AuditFilters {
                action: Some("erasure".into()),
                limit: Some("2".into()),
                ..Default::default()
            },
        )
        .expect("lists");
    assert_eq!(page.items.len(), 2);
    assert!(page.items.iter().all(|e| e.action == "erasure"));
    assert!(page.items[0].time.ends_with('Z'));
    let rest = f
        .api
        .list_audit(
            &caller,
            &AuditFilters {
                action: Some("erasure".into()),
                cursor: page.next,
                ..Default::default()
            },
        )
        .expect("lists");
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next, None);
}

#[test]
fn time_filters_accept_rfc3339_and_unix_seconds() {
    let check = |text: &str, expect: Option<u64>| {
        assert_eq!(emails::parse_time(text).ok(), expect, "{text:?}");
    };
    check("0", Some(0));
    check("1751364000", Some(START_MS));
    check("2025-07-01T10:00:00Z", Some(START_MS));
    check("2025-07-01T10:00:00.250Z", Some(START_MS + 250));
    check("2025-07-01T12:00:00+02:00", Some(START_MS));
    check("2025-07-01t10:00:00z", Some(START_MS));
    check("1900-01-01T00:00:00Z", Some(0));
    check("2025-07-01", None);
    check("", None);
    check("-5", None);
    check("99999999999999999999", None);
}

#[test]
fn error_bodies_have_the_contract_shape() {
    let error = ApiError::not_found("email record");
    assert_eq!(
        error.body(),
        json!({"error": {"code": "not_found", "message": "no such email record"}})
    );
    let caller = format!("{:?}", Caller::bearer("mxk_secret"));
    assert!(!caller.contains("mxk_secret"), "{caller}");
}

/// Console sessions (`admin.rs`): setup, login, lockout, CSRF, expiry.
mod console {
    use super::*;
    use crate::api::admin::{
        CLIENT_FAILURES_BEFORE_LOCKOUT, CLIENT_SETUP_FAILURES_BEFORE_LOCKOUT,
        GLOBAL_FAILURES_BEFORE_LOCKOUT, LOCKOUT, MAX_CONCURRENT_HASHES, SESSION_IDLE_TIMEOUT,
        SESSION_MAX_AGE,
    };

    const PASSWORD: &str = "correct horse battery staple";

    fn from(ip: &str) -> Caller {
        Caller {
            remote: Some(ip.parse().expect("an IP")),
            host: Some("node.test:443".into()),
            ..Caller::default()
        }
    }

    fn setup_body(token: &str, password: &str) -> Vec<u8> {
        json!({"token": token, "username": "admin", "password": password})
            .to_string()
            .into_bytes()
    }

    fn login_body(password: &str) -> Vec<u8> {
        json!({"username": "admin", "password": password})
            .to_string()
            .into_bytes()
    }

    /// A fixture whose admin exists; returns it.
    fn with_admin() -> Fixture {
        let f = fixture();
        f.api.set_password_iterations(1000);
        let token = f
            .api
            .begin_setup(None, None)
            .expect("setup")
            .expect("token");
        f.api
            .complete_setup(&from("192.0.2.1"), &setup_body(&token, PASSWORD))
            .expect("setup completes");
        f
    }

    /// Logs in from `ip`; the caller carries the session (no CSRF token yet).
    fn session(f: &Fixture, ip: &str) -> (Caller, String) {
        let new = f
            .api
            .login(&from(ip), &login_body(PASSWORD))
            .expect("login");
        let caller = Caller {
            session: Some(new.session_id),
            ..from(ip)
        };
        (caller, new.view.csrf_token)
    }

    #[test]
    fn setup_needs_the_token_and_happens_only_once() {
        let f = fixture();
        f.api.set_password_iterations(1000);
        assert!(f.api.setup_status().expect("status").setup_required);
        let token = f
            .api
            .begin_setup(None, None)
            .expect("setup")
            .expect("token");
        let who = from("192.0.2.1");
        let wrong = f.api.complete_setup(&who, &setup_body("0000", PASSWORD));
        assert_eq!(wrong.map_err(|e| e.code), Err("wrong_setup_token"));
        let short = f.api.complete_setup(&who, &setup_body(&token, "short"));
        let error = short.expect_err("too short");
        assert_eq!(error.code, "invalid_admin");
        assert_eq!(error.fields[0].key, "password");
        // No login before setup.
        let early = f.api.login(&who, &login_body(PASSWORD));
        assert_eq!(early.map(|_| ()).map_err(|e| e.code), Err("setup_required"));
        let admin = f.api.complete_setup(&who, &setup_body(&token, PASSWORD));
        assert_eq!(admin.expect("created").username, "admin");
        assert!(!f.api.setup_status().expect("status").setup_required);
        let again = f.api.complete_setup(&who, &setup_body(&token, PASSWORD));
        assert_eq!(again.map_err(|e| e.code), Err("setup_complete"));
        // A restart finds the admin and starts no setup mode.
        assert_eq!(f.api.begin_setup(None, None).expect("no setup"), None);
        let actions = f.actions();
        assert!(
            actions.contains(&"setup.complete".to_string()),
            "{actions:?}"
        );
        assert!(actions.contains(&"login.failed".to_string()), "{actions:?}");
        // The password is stored only as a hash.
        let stored = f.store.get_setting("admin").expect("read").expect("admin");
        assert!(!String::from_utf8_lossy(&stored).contains(PASSWORD));
    }

    #[test]
    fn session_acts_with_every_scope_and_state_changes_need_the_csrf_token() {
        let f = with_admin();
        let (caller, csrf) = session(&f, "192.0.2.2");
        assert!(f.api.list_emails(&caller, &EmailFilters::default()).is_ok());
        let create = json!({"name": "ci", "scopes": ["emails:read"]}).to_string();
        let writing = Caller {
            state_changing: true,
            ..caller.clone()
        };
        let refused = f.api.create_key(&writing, create.as_bytes());
        assert_eq!(refused.map(|_| ()).map_err(|e| e.code), Err("csrf"));
        let wrong = Caller {
            csrf: Some("0".repeat(64)),
            ..writing.clone()
        };
        let refused = f.api.create_key(&wrong, create.as_bytes());
        assert_eq!(refused.map(|_| ()).map_err(|e| e.code), Err("csrf"));
        let foreign = Caller {
            csrf: Some(csrf.clone()),
            origin: Some("https://evil.example".into()),
            ..writing.clone()
        };
        let refused = f.api.create_key(&foreign, create.as_bytes());
        assert_eq!(refused.map(|_| ()).map_err(|e| e.code), Err("cross_origin"));
        let good = Caller {
            csrf: Some(csrf.clone()),
            origin: Some("https://node.test:443".into()),
            ..writing.clone()
        };
        assert!(f.api.create_key(&good, create.as_bytes()).is_ok());
        f.api.logout(&good).expect("logout");
        let after = f.api.list_emails(&caller, &EmailFilters::default());
        assert_eq!(
            after.map(|_| ()).map_err(|e| e.code),
            Err("session_expired")
        );
        let actions = f.actions();
        for action in ["login", "api_key.create", "logout"] {
            assert!(
                actions.contains(&action.to_string()),
                "{action}: {actions:?}"
            );
        }
    }

    #[test]
    fn session_expires_when_idle_and_at_its_maximum_age() {
        let f = with_admin();
        let (caller, _) = session(&f, "192.0.2.3");
        f.advance(SESSION_IDLE_TIMEOUT - Duration::from_secs(1));
        assert!(f.api.session_info(&caller).is_ok());
        f.advance(SESSION_IDLE_TIMEOUT);
        let idle = f.api.session_info(&caller);
        assert_eq!(idle.map(|_| ()).map_err(|e| e.code), Err("session_expired"));

        let (caller, _) = session(&f, "192.0.2.3");
        let step = SESSION_IDLE_TIMEOUT / 2;
        let mut waited = Duration::ZERO;
        while waited + step < SESSION_MAX_AGE {
            f.advance(step);
            waited += step;
            assert!(f.api.session_info(&caller).is_ok(), "active at {waited:?}");
        }
        f.advance(step);
        let old = f.api.session_info(&caller);
        assert_eq!(old.map(|_| ()).map_err(|e| e.code), Err("session_expired"));
    }

    #[test]
    fn status_needs_settings_read_and_names_the_version() {
        let f = with_admin();
        let reader = f.caller(&["settings:read"]);
        let status = f.api.node_status(&reader).expect("status");
        assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(status.tls, None);
        let other = f.caller(&["emails:read"]);
        assert_eq!(f.api.node_status(&other).map_err(|e| e.status), Err(403));
        let (session, _) = session(&f, "192.0.2.4");
        assert!(f.api.node_status(&session).is_ok());
    }

    #[test]
    fn wrong_passwords_lock_out_the_client_then_everyone() {
        let f = with_admin();
        let guesser = from("198.51.100.1");
        for _ in 0..CLIENT_FAILURES_BEFORE_LOCKOUT {
            let wrong = f.api.login(&guesser, &login_body("not the password"));
            assert_eq!(wrong.map(|_| ()).map_err(|e| e.code), Err("unauthorized"));
        }
        // Locked out even with the right password; another client is not.
        let locked = f.api.login(&guesser, &login_body(PASSWORD));
        let error = locked.map(|_| ()).expect_err("locked out");
        assert_eq!((error.status, error.code), (429, "locked_out"));
        assert!(error.message.contains("15 minute"), "{}", error.message);
        assert!(
            f.api
                .login(&from("192.0.2.9"), &login_body(PASSWORD))
                .is_ok()
        );
        f.advance(LOCKOUT);
        assert!(f.api.login(&guesser, &login_body(PASSWORD)).is_ok());

        // Many addresses, each below its own limit, trip the global lockout.
        for i in 0..GLOBAL_FAILURES_BEFORE_LOCKOUT {
            let ip = format!("203.0.113.{}", i % 250);
            let _ = f.api.login(&from(&ip), &login_body("guess"));
        }
        let global = f.api.login(&from("192.0.2.10"), &login_body(PASSWORD));
        assert_eq!(global.map(|_| ()).map_err(|e| e.code), Err("locked_out"));
    }

    /// Issue 16: wrong setup tokens are counted apart from logins, so guessing at the setup
    /// token (which happens before the admin exists) never locks the admin out of logging in.
    #[test]
    fn issue16_setup_token_failures_do_not_lock_out_admin_logins() {
        let f = fixture();
        f.api.set_password_iterations(1000);
        let token = f
            .api
            .begin_setup(None, None)
            .expect("setup")
            .expect("token");
        let who = from("198.51.100.7");
        for _ in 1..CLIENT_FAILURES_BEFORE_LOCKOUT {
            let wrong = f.api.complete_setup(&who, &setup_body("0000", PASSWORD));
            assert_eq!(wrong.map_err(|e| e.code), Err("wrong_setup_token"));
        }
        f.api
            .complete_setup(&who, &setup_body(&token, PASSWORD))
            .expect("setup completes");
        // One typo at the first login: with the setup failures counted as login failures this
        // was the fifth, and the admin was locked out for 15 minutes.
        let typo = f
            .api
            .login(&who, &login_body("correct horse battery stapel"));
        assert_eq!(typo.map(|_| ()).map_err(|e| e.code), Err("unauthorized"));
        assert!(f.api.login(&who, &login_body(PASSWORD)).is_ok());

        // The setup limiter still locks out a setup-token guesser on its own.
        let f = fixture();
        f.api.begin_setup(None, None).expect("setup");
        for _ in 0..CLIENT_SETUP_FAILURES_BEFORE_LOCKOUT {
            let _ = f.api.complete_setup(&who, &setup_body("0000", PASSWORD));
        }
        let locked = f.api.complete_setup(&who, &setup_body("0000", PASSWORD));
        let error = locked.expect_err("locked out of setup");
        assert_eq!((error.status, error.code), (429, "locked_out"));
        assert!(error.retry_after.is_some(), "{error:?}");
    }

    /// Issue 16: when every hash slot is taken a login is answered 503 `busy` with
    /// `Retry-After` at once, and is not counted as a failure (no password was judged).
    #[test]
    fn issue16_logins_beyond_the_concurrent_hash_cap_get_503_busy_uncounted() {
        let f = with_admin();
        let slots: Vec<_> = (0..MAX_CONCURRENT_HASHES)
            .map(|_| f.api.hash_slot().expect("a free slot"))
            .collect();
        let guesser = from("198.51.100.8");
        for _ in 0..2 * CLIENT_FAILURES_BEFORE_LOCKOUT {
            let busy = f
                .api
                .login(&guesser, &login_body("not the password"))
                .map(|_| ())
                .expect_err("busy");
            assert_eq!((busy.status, busy.code), (503, "busy"), "{busy:?}");
            assert!(busy.message.contains("passwords"), "{}", busy.message);
            assert_eq!(busy.retry_after, Some(2));
        }
        drop(slots);
        assert!(f.api.login(&guesser, &login_body(PASSWORD)).is_ok());
    }
}
