//! The REST API end to end (DESIGN §7, issue 4): the real binary with its RocksDB store and
//! the API over real HTTPS (test CA), keys created with the CLI before start, records made by
//! real SMTP deliveries to a real receiver.

use std::time::Duration;

use mxnode_tests::{
    ApiClient, Node, NodeConfig, Receiver, RouteConfig, SmtpClient, TestCa, new_webhook_secret,
};
use serde_json::{Value, json};

/// A node with the API over HTTPS, keys `admin`, `reader` (emails:read, audit:read),
/// `deleter` (emails:delete) and `scraper` (metrics:read), and one route to a receiver.
struct Fixture {
    ca: TestCa,
    receiver: Receiver,
    node: Node,
}

impl Fixture {
    fn start() -> Fixture {
        let ca = TestCa::new();
        let receiver = Receiver::start(&ca, &new_webhook_secret());
        let node = Node::start(
            &NodeConfig::new()
                .http(&ca)
                .api_key("admin", &["admin"])
                .api_key("reader", &["emails:read", "audit:read"])
                .api_key("deleter", &["emails:delete"])
                .api_key("scraper", &["metrics:read"])
                .route(RouteConfig::to_receiver(
                    "*@in.example.test",
                    &receiver,
                    "/ok",
                )),
        );
        Fixture { ca, receiver, node }
    }

    fn api(&self) -> ApiClient {
        ApiClient::new(&self.node, &self.ca)
    }

    fn key(&self, name: &str) -> &str {
        self.node.api_key(name)
    }

    /// Delivers one message to `rcpt` over SMTP; asserts 250.
    fn deliver(&self, rcpt: &str, subject: &str) {
        let mut client = SmtpClient::connect(self.node.smtp_addr());
        let data = format!(
            "From: Alice <alice@example.org>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\
             Message-ID: <{subject}@example.org>\r\n\r\nHello\r\n"
        );
        let reply = client.send_mail("alice@example.org", &[rcpt], data.as_bytes());
        assert_eq!(reply.code, 250, "{reply}");
    }

    /// Every audit event, newest first.
    fn audit(&self) -> Vec<Value> {
        let answer = self
            .api()
            .get("/api/v1/audit?limit=500", Some(self.key("admin")));
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn actions(&self) -> Vec<String> {
        self.audit()
            .iter()
            .filter_map(|e| e["action"].as_str().map(str::to_string))
            .collect()
    }

    /// `GET /api/v1/emails` with `query`, as the list of subjects and the `next` cursor.
    fn subjects(&self, query: &str) -> (Vec<String>, Option<String>) {
        let answer = self
            .api()
            .get(&format!("/api/v1/emails{query}"), Some(self.key("reader")));
        assert_eq!(answer.status, 200, "{}", answer.body);
        let page = answer.json();
        let subjects = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["subject"].as_str().unwrap_or_default().to_string())
            .collect();
        (subjects, page["next"].as_str().map(str::to_string))
    }
}

/// Waits until the node has `n` records (records are written right after the reply).
fn wait_for_records(f: &Fixture, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (subjects, _) = f.subjects("?limit=500");
        if subjects.len() >= n || std::time::Instant::now() >= deadline {
            assert_eq!(subjects.len(), n, "records: {subjects:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn missing_or_wrong_keys_get_401_and_wrong_scopes_403_over_https() {
    let f = Fixture::start();
    let api = f.api();

    let health = api.get("/healthz", None);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    assert!(!health.body.contains("mxk_"), "{}", health.body);

    let bogus = format!("mxk_{}_{}", "0".repeat(16), "0".repeat(64));
    let checks: [(&str, &str, Option<&str>, u16, &str); 8] = [
        ("GET", "/api/v1/emails", None, 401, "unauthorized"),
        (
            "GET",
            "/api/v1/emails",
            Some("not-a-key"),
            401,
            "unauthorized",
        ),
        ("GET", "/api/v1/emails", Some(&bogus), 401, "unauthorized"),
        ("GET", "/metrics", None, 401, "unauthorized"),
        (
            "GET",
            "/api/v1/emails",
            Some(f.key("scraper")),
            403,
            "forbidden",
        ),
        (
            "GET",
            "/api/v1/keys",
            Some(f.key("reader")),
            403,
            "forbidden",
        ),
        (
            "DELETE",
            "/api/v1/emails/rec_x",
            Some(f.key("reader")),
            403,
            "forbidden",
        ),
        (
            "GET",
            "/api/v1/settings",
            Some(f.key("deleter")),
            403,
            "forbidden",
        ),
    ];
    for (method, path, key, status, code) in checks {
        let answer = api.request(method, path, key, None);
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        assert_eq!(answer.error_code(), code, "{method} {path}");
        assert!(answer.content_type.starts_with("application/json"));
        if status == 401 {
            assert!(
                answer.www_authenticate.starts_with("Bearer"),
                "{method} {path}"
            );
        }
    }

    let emails = api.get("/api/v1/emails", Some(f.key("reader")));
    assert_eq!(emails.status, 200, "{}", emails.body);
    assert_eq!(emails.json(), json!({"items": [], "next": null}));
    let admin_emails = api.get("/api/v1/emails", Some(f.key("admin")));
    assert_eq!(admin_emails.status, 200, "admin implies emails:read");

    let metrics = api.get("/metrics", Some(f.key("scraper")));
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        metrics.content_type
    );
    assert!(
        metrics
            .body
            .contains("mxnode_messages_total{outcome=\"delivered\"}")
    );
    assert!(metrics.body.contains("mxnode_store_size_bytes"));

    let actions = f.actions();
    assert!(actions.iter().any(|a| a == "login.failed"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "access.denied"), "{actions:?}");
}

#[test]
fn http_errors_are_json_and_bounded() {
    let f = Fixture::start();
    let api = f.api();
    let admin = Some(f.key("admin"));
    let check = |answer: mxnode_tests::ApiAnswer, status: u16, code: &str| {
        assert_eq!(answer.status, status, "{}", answer.body);
        assert_eq!(answer.error_code(), code, "{}", answer.body);
    };
    check(api.get("/api/v1/nothing-here", admin), 404, "not_found");
    check(api.get("/api/v1/emails/rec_0123", admin), 404, "not_found");
    check(
        api.request("PATCH", "/api/v1/emails", admin, None),
        405,
        "method_not_allowed",
    );
    check(
        api.request(
            "POST",
            "/api/v1/erasure",
            admin,
            Some(("text/plain", b"x@y".to_vec())),
        ),
        415,
        "unsupported_media_type",
    );
    let huge = vec![b' '; 300 * 1024];
    check(
        api.request(
            "POST",
            "/api/v1/erasure",
            admin,
            Some(("application/json", huge)),
        ),
        413,
        "payload_too_large",
    );
    check(
        api.request(
            "POST",
            "/api/v1/erasure",
            admin,
            Some(("application/json", b"{".to_vec())),
        ),
        400,
        "invalid_body",
    );
    check(
        api.get("/api/v1/emails?limit=0", admin),
        400,
        "invalid_parameter",
    );
    check(
        api.get("/api/v1/emails?since=yesterday", admin),
        400,
        "invalid_parameter",
    );
    let fields = api
        .get("/api/v1/emails?status=lost&limit=9999", admin)
        .json();
    assert_eq!(fields["error"]["fields"][0]["key"], "status");
    assert_eq!(fields["error"]["fields"][1]["key"], "limit");
}

#[test]
fn keys_are_shown_once_listed_without_secrets_and_revocable() {
    let f = Fixture::start();
    let api = f.api();
    let admin = Some(f.key("admin"));

    let created = api.post(
        "/api/v1/keys",
        admin,
        &json!({"name": "grafana", "scopes": ["metrics:read"]}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    let key = created["key"]
        .as_str()
        .expect("the key is shown")
        .to_string();
    let id = created["id"].as_str().expect("id").to_string();
    assert!(key.starts_with(&format!("mxk_{id}_")));
    assert_eq!(api.get("/metrics", Some(&key)).status, 200);
    assert_eq!(api.get("/api/v1/emails", Some(&key)).status, 403);

    let listed = api.get("/api/v1/keys", admin);
    assert_eq!(listed.status, 200);
    let secret = key.rsplit('_').next().expect("secret part");
    assert!(!listed.body.contains(secret), "{}", listed.body);
    assert!(!listed.body.contains("\"key\""), "{}", listed.body);
    let listed = listed.json();
    let grafana: Vec<&Value> = listed["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["id"] == id.as_str())
        .collect();
    assert_eq!(grafana.len(), 1, "{listed}");
    assert_eq!(grafana[0]["name"], "grafana");
    assert_eq!(grafana[0]["scopes"], json!(["metrics:read"]));

    assert_eq!(api.delete(&format!("/api/v1/keys/{id}"), admin).status, 204);
    assert_eq!(api.get("/metrics", Some(&key)).status, 401);
    assert_eq!(api.delete(&format!("/api/v1/keys/{id}"), admin).status, 404);
    let own_id = f.key("admin")[4..20].to_string();
    let own = api.delete(&format!("/api/v1/keys/{own_id}"), admin);
    assert_eq!((own.status, own.error_code().as_str()), (409, "conflict"));

    let audit = f.audit();
    let find = |action: &str| {
        audit
            .iter()
            .filter(|e| e["action"] == action)
            .cloned()
            .collect::<Vec<_>>()
    };
    let creations = find("api_key.create");
    assert!(
        creations.iter().any(|e| e["actor"] == "cli"),
        "{creations:?}"
    );
    assert!(creations.iter().any(|e| e["target"] == id.as_str()));
    assert!(
        find("api_key.revoke")
            .iter()
            .any(|e| e["target"] == id.as_str())
    );
    assert!(
        !serde_json::to_string(&audit)
            .unwrap_or_default()
            .contains(secret)
    );
    assert!(
        !f.node.log().contains(secret),
        "the key never reaches the log"
    );
}

#[test]
fn settings_are_served_with_secrets_masked() {
    let f = Fixture::start();
    let settings = f.api().get("/api/v1/settings", Some(f.key("admin")));
    assert_eq!(settings.status, 200, "{}", settings.body);
    let document = settings.json();
    assert_eq!(document["routes"][0]["match"], "*@in.example.test");
    assert_eq!(document["routes"][0]["webhook_secret"], "********");
    let secret = f.receiver.secret();
    assert!(!settings.body.contains(&secret[6..]), "{}", settings.body);
}

#[test]
fn erasure_and_export_answer_and_are_audited_without_the_address() {
    let f = Fixture::start();
    let api = f.api();
    let erased = api.post(
        "/api/v1/erasure",
        Some(f.key("deleter")),
        &json!({"address": "nobody@in.example.test"}),
    );
    assert_eq!(erased.status, 200, "{}", erased.body);
    assert_eq!(erased.json(), json!({"deleted": 0}));
    let export = api.get("/api/v1/export", Some(f.key("reader")));
    assert_eq!(export.status, 200, "{}", export.body);
    let export = export.json();
    assert_eq!(export["records"], json!([]));
    assert_eq!(export["truncated"], false);
    assert!(
        export["exported_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let audit = f.audit();
    let actions: Vec<&str> = audit.iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(
        actions.contains(&"erasure") && actions.contains(&"export"),
        "{actions:?}"
    );
    let text = serde_json::to_string(&audit).unwrap_or_default();
    assert!(!text.contains("nobody@"), "{text}");
    assert!(
        !f.node.log().contains("nobody@"),
        "the address never reaches the log"
    );
}

#[test]
fn pagination_over_real_deliveries_is_stable() {
    let f = Fixture::start();
    for n in 1..=7 {
        f.deliver("bob@in.example.test", &format!("m{n}"));
    }
    wait_for_records(&f, 7);
    let (first, next) = f.subjects("?limit=3");
    assert_eq!(first, ["m7", "m6", "m5"]);
    f.deliver("bob@in.example.test", "m8");
    let next = next.expect("a second page");
    let (second, next) = f.subjects(&format!("?limit=3&cursor={next}"));
    assert_eq!(
        second,
        ["m4", "m3", "m2"],
        "a newer record does not shift later pages"
    );
    let (third, next) = f.subjects(&format!("?limit=3&cursor={}", next.expect("a third page")));
    assert_eq!(third, ["m1"]);
    assert_eq!(next, None);
    let (newest, _) = f.subjects("?limit=1&status=delivered&recipient=BOB@in.example.test");
    assert_eq!(newest, ["m8"]);
}

#[test]
fn deleted_record_is_gone() {
    let f = Fixture::start();
    f.deliver("bob@in.example.test", "doomed");
    wait_for_records(&f, 1);
    let api = f.api();
    let list = api.get("/api/v1/emails", Some(f.key("reader"))).json();
    let id = list["items"][0]["id"]
        .as_str()
        .expect("a record id")
        .to_string();
    let one = api.get(&format!("/api/v1/emails/{id}"), Some(f.key("reader")));
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["status"], "delivered");
    assert_eq!(one.json()["smtp_code"], 250);
    assert_eq!(
        api.delete(&format!("/api/v1/emails/{id}"), Some(f.key("deleter")))
            .status,
        204
    );
    let gone = api.get(&format!("/api/v1/emails/{id}"), Some(f.key("reader")));
    assert_eq!(
        (gone.status, gone.error_code().as_str()),
        (404, "not_found")
    );
    assert!(
        f.audit()
            .iter()
            .any(|e| e["action"] == "email.delete" && e["target"] == id.as_str())
    );
}

#[test]
fn erasure_removes_every_record_of_a_recipient_and_export_shows_the_rest() {
    let f = Fixture::start();
    f.deliver("bob@in.example.test", "b1");
    f.deliver("Bob@In.Example.Test", "b2");
    f.deliver("carol@in.example.test", "c1");
    wait_for_records(&f, 3);
    let api = f.api();
    let erased = api.post(
        "/api/v1/erasure",
        Some(f.key("deleter")),
        &json!({"address": "BOB@in.example.test"}),
    );
    assert_eq!(erased.json(), json!({"deleted": 2}), "{}", erased.body);
    let (bob, _) = f.subjects("?recipient=bob@in.example.test");
    assert!(bob.is_empty(), "{bob:?}");

    let export = api.get("/api/v1/export", Some(f.key("reader"))).json();
    let records = export["records"].as_array().cloned().unwrap_or_default();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record["recipients"], json!(["carol@in.example.test"]));
    assert_eq!(record["subject"], "c1");
    assert_eq!(record["message_id"], "<c1@example.org>");
    let mut fields: Vec<&str> = record
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    fields.sort();
    assert_eq!(
        fields,
        [
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
            "webhook_status"
        ]
    );
    let text = export.to_string();
    assert!(
        !text.contains("alice@example.org"),
        "never the sender: {text}"
    );
    let one = api
        .get(
            "/api/v1/export?address=carol@in.example.test",
            Some(f.key("reader")),
        )
        .json();
    assert_eq!(one["records"].as_array().map(Vec::len), Some(1));
    let audit = serde_json::to_string(&f.audit()).unwrap_or_default();
    assert!(audit.contains("deleted 2 records"), "{audit}");
    assert!(!audit.to_lowercase().contains("bob@"), "{audit}");
}

#[test]
fn sigterm_finishes_the_request_in_progress_closes_idle_connections_and_then_the_store() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let mut node = Node::start(
        &NodeConfig::new()
            .http(&ca)
            .api_key("admin", &["admin"])
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/delay/1500/status/200",
            )),
    );
    let key = node.api_key("admin").to_string();
    // A keep-alive client that stays connected and idle through the shutdown.
    let idle = ApiClient::new(&node, &ca);
    assert_eq!(idle.get("/api/v1/status", Some(&key)).status, 200);
    // A test delivery the receiver answers only after 1.5 s: in progress at SIGTERM.
    let busy = ApiClient::new(&node, &ca);
    let testing = std::thread::spawn(move || {
        busy.post("/api/v1/settings/routes/0/test", Some(&key), &json!({}))
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while receiver.received().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the test delivery never reached the receiver"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let status = node.terminate();
    let answer = testing.join().expect("the API client thread");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["status"], 200, "{}", answer.body);
    assert!(status.success(), "{status:?}");
    let log = node.log();
    assert!(log.contains("metadata store closed"), "{log}");
    assert!(!log.contains("still in use"), "{log}");
    drop(idle);
}

/// Issue 16 (outbound address policy): a settings-driven test delivery to an unspecified
/// address (0.0.0.0 reaches the box's own services) is refused by the policy, never connected.
#[test]
fn a_route_test_to_an_address_the_outbound_policy_refuses_never_connects() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new()
            .http(&ca)
            .api_key("admin", &["admin"])
            .route(
                RouteConfig::new(
                    "*@in.example.test",
                    &format!("https://0.0.0.0:{}/ok", receiver.port()),
                    receiver.secret(),
                )
                .ca(receiver.ca_pem()),
            ),
    );
    let api = ApiClient::new(&node, &ca);
    let answer = api.post(
        "/api/v1/settings/routes/0/test",
        Some(node.api_key("admin")),
        &json!({}),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let result = answer.json();
    assert_eq!(result["outcome"], "failed", "{result}");
    assert!(
        result["detail"]
            .as_str()
            .is_some_and(|d| d.contains("outbound policy")),
        "{result}"
    );
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
}
