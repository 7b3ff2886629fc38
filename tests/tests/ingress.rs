//! MX ingress end to end (issue 2): the real `mxnode` binary between real SMTP clients and a
//! real HTTPS receiver. Every assertion about delivery is made on the receiver's side.

use std::time::Duration;

use mxnode_tests::{
    Node, NodeConfig, Receiver, RouteConfig, SmtpClient, TestCa, new_webhook_secret,
    send_with_lettre, swaks,
};

const WAIT: Duration = Duration::from_secs(30);

/// A node with one route `*@in.example.test` to `path` on a fresh receiver.
fn node_with_route(path: &str, budget: Option<&str>) -> (TestCa, Receiver, Node) {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let mut route = RouteConfig::to_receiver("*@in.example.test", &receiver, path);
    if let Some(budget) = budget {
        route = route.budget(budget);
    }
    let node = Node::start(&NodeConfig::new().route(route));
    (ca, receiver, node)
}

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\nTo: bob@in.example.test\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.org>\r\nDate: Tue, 1 Jul 2025 10:00:00 +0000\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

#[test]
fn accepted_delivery_gets_250_only_after_the_receiver_answered_2xx() {
    // The receiver answers only after a pause; if the node replied before the answer, the
    // receiver's record would still show no status when the client sees 250.
    let (_ca, receiver, node) = node_with_route("/delay/1500/status/200", None);
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "alice@example.org",
        &["bob@in.example.test"],
        &message("first", "Hello Bob"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(reply.enhanced_code(), Some("2.0.0"));
    let received = receiver.received();
    assert_eq!(received.len(), 1, "exactly one delivery");
    let got = &received[0];
    assert_eq!(
        got.status,
        Some(200),
        "the receiver had answered before the 250"
    );
    assert!(got.signature_valid, "signature verified by the receiver");
    assert!(got.timestamp_fresh);
    let id = got.header("webhook-id").expect("webhook-id header");
    assert!(
        reply.text().contains(id),
        "250 names the delivery id: {reply}"
    );
    assert_eq!(got.body["id"], id);
    assert_eq!(got.header("content-type"), Some("application/json"));

    let body = &got.body;
    assert_eq!(body["version"], 1);
    assert_eq!(body["envelope"]["mail_from"], "alice@example.org");
    assert_eq!(
        body["envelope"]["rcpt_to"],
        serde_json::json!(["bob@in.example.test"])
    );
    assert_eq!(body["envelope"]["helo"], "client.test");
    assert_eq!(body["envelope"]["remote_ip"], "127.0.0.1");
    assert_eq!(body["envelope"]["tls"], serde_json::Value::Null);
    assert_eq!(body["message_id"], "<first@example.org>");
    assert_eq!(body["subject"], "first");
    assert_eq!(body["date"], "2025-07-01T10:00:00Z");
    assert_eq!(body["from"][0]["name"], "Alice");
    assert_eq!(body["from"][0]["address"], "alice@example.org");
    assert_eq!(body["text"].as_str().map(str::trim_end), Some("Hello Bob"));
    assert!(
        body["received_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(body["size"], message("first", "Hello Bob").len());
}

#[test]
fn receiver_refusal_422_gives_550_without_retries() {
    let (_ca, receiver, node) = node_with_route("/status/422", None);
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("r", "x"),
    );
    assert_eq!(reply.code, 550, "{reply}");
    assert_eq!(reply.enhanced_code(), Some("5.7.1"));
    let received = receiver.received();
    assert_eq!(received.len(), 1, "a permanent refusal is not retried");
    assert!(!received[0].acknowledged);
}

#[test]
fn receiver_500_gives_451_after_retries_and_nothing_acknowledged() {
    let (_ca, receiver, node) = node_with_route("/status/500", Some("2s"));
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("s", "x"),
    );
    assert_eq!(reply.code, 451, "{reply}");
    assert_eq!(reply.enhanced_code(), Some("4.3.0"));
    let received = receiver.received();
    assert!(
        received.len() >= 2,
        "retried inside the budget: {}",
        received.len()
    );
    assert!(received.iter().all(|r| !r.acknowledged));
    let ids: std::collections::BTreeSet<_> = received
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same webhook-id");
}

#[test]
fn receiver_recovering_within_the_budget_gives_250() {
    let (_ca, receiver, node) = node_with_route("/fail-first/2/status/200", None);
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("f", "x"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let statuses: Vec<_> = receiver.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Some(500), Some(500), Some(200)]);
}

#[test]
fn receiver_slower_than_the_budget_gives_451_before_it_answers() {
    let (_ca, receiver, node) = node_with_route("/delay/8000/status/200", Some("2s"));
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("d", "x"),
    );
    assert_eq!(reply.code, 451, "{reply}");
    let received = receiver.received();
    assert!(!received.is_empty());
    assert!(
        received.iter().all(|r| r.status.is_none()),
        "the node gave up before the receiver answered: {received:?}"
    );
}

#[test]
fn receiver_down_gives_451() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let ca = TestCa::new();
    let route = RouteConfig::new(
        "*@in.example.test",
        &format!("https://localhost:{port}/ok"),
        &new_webhook_secret(),
    )
    .ca(&ca.ca_pem)
    .budget("2s");
    let node = Node::start(&NodeConfig::new().route(route));
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("x", "x"),
    );
    assert_eq!(reply.code, 451, "{reply}");
}

#[test]
fn receiver_with_an_untrusted_certificate_gives_451() {
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let route = RouteConfig::new("*@in.example.test", &receiver.url("/ok"), receiver.secret())
        .ca(&other_ca.ca_pem)
        .budget("2s");
    let node = Node::start(&NodeConfig::new().route(route));
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("x", "x"),
    );
    assert_eq!(reply.code, 451, "{reply}");
    assert!(
        receiver.received().is_empty(),
        "no request passed TLS verification"
    );
}

#[test]
fn connection_reset_by_the_receiver_gives_451() {
    let (_ca, receiver, node) = node_with_route("/reset", Some("2s"));
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("x", "x"),
    );
    assert_eq!(reply.code, 451, "{reply}");
    assert!(receiver.received().iter().all(|r| !r.acknowledged));
}

#[test]
fn unknown_recipient_gets_550_5_1_1_and_nothing_is_delivered() {
    let (_ca, receiver, node) = node_with_route("/ok", None);
    let mut client = SmtpClient::connect(node.smtp_addr());
    client.ehlo("client.test");
    assert_eq!(client.command("MAIL FROM:<a@example.org>").code, 250);
    for rcpt in [
        "bob@elsewhere.test",
        "bob@in.example.test.evil.test",
        "bob%x@other.test",
    ] {
        let reply = client.command(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(reply.code, 550, "{rcpt}: {reply}");
        assert_eq!(reply.enhanced_code(), Some("5.1.1"));
    }
    let reply = client.command("DATA");
    assert_eq!(reply.code / 100, 5, "DATA without recipients: {reply}");
    assert!(receiver.received().is_empty());
}

#[test]
fn oversize_message_gets_552_at_mail_and_during_data() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(&NodeConfig::new().max_message_size("64KiB").route(
        RouteConfig::to_receiver("*@in.example.test", &receiver, "/ok"),
    ));
    let mut client = SmtpClient::connect(node.smtp_addr());
    let ehlo = client.ehlo("client.test");
    assert!(ehlo.contains("SIZE 65536"), "{ehlo}");
    let reply = client.command("MAIL FROM:<a@example.org> SIZE=100000");
    assert_eq!(
        (reply.code, reply.enhanced_code()),
        (552, Some("5.3.4")),
        "{reply}"
    );

    let big = message("big", &"x".repeat(100).repeat(1000).replace("xx", "x\r\n"));
    let reply = client.send_mail("a@example.org", &["bob@in.example.test"], &big);
    assert_eq!(
        (reply.code, reply.enhanced_code()),
        (552, Some("5.3.4")),
        "{reply}"
    );
    // The session goes on: a normal message still passes.
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("ok", "x"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body["subject"], "ok");
}

#[test]
fn bare_lf_in_data_is_refused_and_nothing_is_delivered() {
    let (_ca, receiver, node) = node_with_route("/ok", None);
    for (name, data) in [
        ("bare LF", &b"Subject: a\r\n\r\nline one\nline two\r\n"[..]),
        ("bare CR", &b"Subject: a\r\n\r\nline one\rline two\r\n"[..]),
        // The classic smuggling payload: a fake end of data followed by a second transaction.
        (
            "LF.CRLF smuggling",
            &b"Subject: a\r\n\r\nhi\n.\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@in.example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n"[..],
        ),
    ] {
        let mut client = SmtpClient::connect(node.smtp_addr());
        let reply = client.send_mail("a@example.org", &["bob@in.example.test"], data);
        assert_eq!(reply.code, 550, "{name}: {reply}");
        assert_eq!(reply.enhanced_code(), Some("5.6.0"), "{name}");
        // The session is still in sync: the next command gets its own reply.
        assert_eq!(client.command("NOOP").code, 250, "{name}");
    }
    assert!(
        receiver.received().is_empty(),
        "nothing delivered, nothing smuggled"
    );
}

#[test]
fn retransmission_of_the_same_message_carries_the_same_webhook_id() {
    let (_ca, receiver, node) = node_with_route("/ok", None);
    let data = message("dup", "same bytes");
    for _ in 0..2 {
        let mut client = SmtpClient::connect(node.smtp_addr());
        let reply = client.send_mail("a@example.org", &["bob@in.example.test"], &data);
        assert_eq!(reply.code, 250, "{reply}");
    }
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail("a@example.org", &["carol@in.example.test"], &data);
    assert_eq!(reply.code, 250, "{reply}");
    let received = receiver.received();
    let ids: Vec<_> = received
        .iter()
        .map(|r| r.header("webhook-id").expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], ids[1], "same bytes, same recipients: same id");
    assert_ne!(ids[0], ids[2], "other recipients: another delivery");
}

#[test]
fn recipients_of_two_routes_get_one_delivery_each() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new()
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            ))
            .route(RouteConfig::to_receiver(
                "ops@other.example.test",
                &receiver,
                "/status/201",
            )),
    );
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &[
            "bob@in.example.test",
            "ops@other.example.test",
            "carol@in.example.test",
        ],
        &message("two", "x"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let mut received = receiver.received();
    received.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].path, "/ok");
    assert_eq!(
        received[0].body["envelope"]["rcpt_to"],
        serde_json::json!(["bob@in.example.test", "carol@in.example.test"])
    );
    assert_eq!(
        received[1].body["envelope"]["rcpt_to"],
        serde_json::json!(["ops@other.example.test"])
    );
}

#[test]
fn one_route_failing_makes_the_whole_message_451() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new()
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            ))
            .route(
                RouteConfig::to_receiver("*@down.example.test", &receiver, "/status/503")
                    .budget("1s"),
            ),
    );
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test", "x@down.example.test"],
        &message("half", "x"),
    );
    assert_eq!(reply.code, 451, "{reply}");
}

#[test]
fn starttls_session_reports_the_negotiated_tls_in_the_payload() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(&NodeConfig::new().tls(&ca).route(RouteConfig::to_receiver(
        "*@in.example.test",
        &receiver,
        "/ok",
    )));
    let mut client = SmtpClient::connect(node.smtp_addr());
    let ehlo = client.ehlo("client.test");
    for keyword in [
        "PIPELINING",
        "SIZE",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(keyword), "EHLO lacks {keyword}: {ehlo}");
    }
    assert_eq!(client.starttls(&ca.ca_pem).code, 220);
    let (version, suite) = client.tls_info().expect("TLS is up");
    let ehlo = client.ehlo("client.test");
    assert!(!ehlo.contains("STARTTLS"), "no STARTTLS inside TLS: {ehlo}");
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("tls", "x"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let received = receiver.received();
    let tls = &received[0].body["envelope"]["tls"];
    // A client that offers TLS 1.3 gets it (DESIGN §3: Gmail and Microsoft send over 1.3).
    assert_eq!(tls["version"], "TLSv1.3", "{tls}");
    assert!(
        [
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256"
        ]
        .contains(&tls["cipher"].as_str().unwrap_or_default()),
        "{tls}"
    );
    // rustls names them `TLSv1_3` / `TLS13_AES_256_GCM_SHA384`; the payload uses the IANA names.
    assert_eq!(tls["version"], version.replace('_', "."), "{tls}");
    let iana = suite.replace("TLS13_", "TLS_");
    assert_eq!(tls["cipher"], iana, "{tls}");
}

#[test]
fn a_client_that_stops_at_tls_1_2_gets_tls_1_2_and_its_ecdhe_suite_in_the_payload() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(&NodeConfig::new().tls(&ca).route(RouteConfig::to_receiver(
        "*@in.example.test",
        &receiver,
        "/ok",
    )));
    let mut client = SmtpClient::connect(node.smtp_addr());
    client.ehlo("client.test");
    let reply = client.starttls_offering(&ca.ca_pem, &[&rustls::version::TLS12]);
    assert_eq!(reply.code, 220);
    let (version, suite) = client.tls_info().expect("TLS is up");
    assert_eq!(version, "TLSv1_2");
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("tls12", "x"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let received = receiver.received();
    let tls = &received[0].body["envelope"]["tls"];
    assert_eq!(tls["version"], "TLSv1.2", "{tls}");
    // The test CA's server key is ECDSA P-256, so an ECDHE-ECDSA AEAD suite; rustls names
    // TLS 1.2 suites by their IANA names already.
    assert_eq!(tls["cipher"], suite, "{tls}");
    let cipher = tls["cipher"].as_str().unwrap_or_default();
    assert!(
        cipher.starts_with("TLS_ECDHE_ECDSA_WITH_")
            && (cipher.contains("_GCM_") || cipher.contains("_CHACHA20_POLY1305_")),
        "{tls}"
    );
}

#[test]
fn swaks_delivers_over_starttls() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(&NodeConfig::new().tls(&ca).route(RouteConfig::to_receiver(
        "*@in.example.test",
        &receiver,
        "/ok",
    )));
    let out = swaks(
        node.smtp_addr(),
        &[
            "--tls",
            "--from",
            "alice@example.org",
            "--to",
            "bob@in.example.test",
            "--header",
            "Subject: via swaks",
            "--body",
            "hello from swaks",
        ],
    );
    let dialogue = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{dialogue}");
    assert!(
        dialogue.contains("<~  250 2.0.0"),
        "250 over TLS:\n{dialogue}"
    );
    let received = receiver.wait_for(1, WAIT);
    assert_eq!(received[0].body["subject"], "via swaks");
    assert!(
        received[0].body["envelope"]["tls"]["version"]
            .as_str()
            .is_some()
    );
}

#[test]
fn lettre_delivers_a_message_with_an_attachment() {
    let (_ca, receiver, node) = node_with_route("/ok", None);
    let raw =
        b"From: a@example.org\r\nTo: bob@in.example.test\r\nSubject: =?UTF-8?B?w4TDpMO2?=\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
Gr=FC=DFe\r\n--b\r\nContent-Type: application/octet-stream\r\n\
Content-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
AAECAwQ=\r\n--b--\r\n";
    let code = send_with_lettre(
        node.smtp_addr(),
        "a@example.org",
        &["bob@in.example.test"],
        raw,
    )
    .expect("lettre send");
    assert_eq!(code, 250);
    let received = receiver.wait_for(1, WAIT);
    let body = &received[0].body;
    assert_eq!(body["subject"], "Ääö");
    assert_eq!(body["text"].as_str().map(str::trim_end), Some("Grüße"));
    let attachment = &body["attachments"][0];
    assert_eq!(attachment["filename"], "data.bin");
    assert_eq!(attachment["size"], 5);
    assert_eq!(attachment["content_base64"], "AAECAwQ=");
    assert_eq!(
        attachment["sha256"],
        "08bb5e5d6eaac1049ede0893d30ed022b1a4d9b5b48db414871f51c9cb35283d"
    );
}

#[test]
fn too_many_recipients_get_452() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new()
            .max_recipients(2)
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            )),
    );
    let mut client = SmtpClient::connect(node.smtp_addr());
    client.ehlo("client.test");
    assert_eq!(client.command("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(client.command("RCPT TO:<a@in.example.test>").code, 250);
    assert_eq!(client.command("RCPT TO:<b@in.example.test>").code, 250);
    let reply = client.command("RCPT TO:<c@in.example.test>");
    assert_eq!(
        (reply.code, reply.enhanced_code()),
        (452, Some("4.5.3")),
        "{reply}"
    );
}

#[test]
fn sessions_past_the_per_ip_limit_get_421() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(&NodeConfig::new().max_sessions_per_ip(2).route(
        RouteConfig::to_receiver("*@in.example.test", &receiver, "/ok"),
    ));
    let first = SmtpClient::connect(node.smtp_addr());
    let second = SmtpClient::connect(node.smtp_addr());
    assert_eq!(first.greeting().code, 220);
    assert_eq!(second.greeting().code, 220);
    let third = SmtpClient::connect(node.smtp_addr());
    assert_eq!(third.greeting().code, 421, "{}", third.greeting());
    drop(first);
    // The slot is released when a session ends.
    let mut accepted = false;
    for _ in 0..50 {
        if SmtpClient::connect(node.smtp_addr()).greeting().code == 220 {
            accepted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(accepted, "a freed slot is reused");
}

#[test]
fn sigterm_lets_the_transaction_in_flight_finish() {
    let (_ca, receiver, mut node) = node_with_route("/delay/2000/status/200", None);
    let addr = node.smtp_addr();
    let sender = std::thread::spawn(move || {
        let mut client = SmtpClient::connect(addr);
        client.send_mail(
            "a@example.org",
            &["bob@in.example.test"],
            &message("late", "x"),
        )
    });
    // Wait until the delivery reached the receiver, then ask the node to stop.
    receiver.wait_for(1, WAIT);
    let status = node.terminate();
    let reply = sender.join().expect("sender thread");
    assert_eq!(
        reply.code, 250,
        "the transaction in flight completed: {reply}"
    );
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    assert!(
        SmtpClient::try_connect(addr).is_err(),
        "no new sessions after shutdown"
    );
}

#[test]
fn check_config_lists_every_problem_and_names_the_keys() {
    let (code, output) = Node::check_config(
        r#"
[node]
hostname = "mx.test"
[smtp]
listen = ["127.0.0.1:2525"]
max_mesage_size = "1MiB"
[[route]]
match = "*@in.example.test"
webhook = "http://hooks.example.test/"
webhook_secret = "not-a-whsec-topsecret"
"#,
    );
    assert_ne!(code, 0, "{output}");
    assert!(
        output.contains("smtp.max_mesage_size: unknown key"),
        "{output}"
    );
    let (code, output) = Node::check_config(
        r#"
[smtp]
listen = ["127.0.0.1:2525"]
[[route]]
match = "*@in.example.test"
webhook = "http://hooks.example.test/"
webhook_secret = "not-a-whsec-topsecret"
webhook_budget = "forever"
"#,
    );
    assert_ne!(code, 0);
    for key in [
        "route[0].webhook:",
        "route[0].webhook_secret:",
        "route[0].webhook_budget:",
    ] {
        assert!(output.contains(key), "{key} missing in:\n{output}");
    }
    assert!(
        !output.contains("topsecret"),
        "secrets are never echoed:\n{output}"
    );
}

#[test]
fn mime_nesting_past_the_limit_is_refused_with_554_and_not_delivered() {
    let (_ca, receiver, node) = node_with_route("/ok", None);
    let depth = 40;
    let mut data = String::from("Subject: deep\r\nMIME-Version: 1.0\r\n");
    for level in 0..depth {
        data.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n--b{level}\r\n"
        ));
    }
    data.push_str("Content-Type: text/plain\r\n\r\ninnermost\r\n");
    for level in (0..depth).rev() {
        data.push_str(&format!("--b{level}--\r\n"));
    }
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail("a@example.org", &["bob@in.example.test"], data.as_bytes());
    assert_eq!(
        (reply.code, reply.enhanced_code()),
        (554, Some("5.6.0")),
        "{reply}"
    );
    assert!(receiver.received().is_empty());
}

#[test]
fn idle_client_is_disconnected_with_421_after_the_command_timeout() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(&NodeConfig::new().command_timeout("1s").route(
        RouteConfig::to_receiver("*@in.example.test", &receiver, "/ok"),
    ));
    let mut client = SmtpClient::connect(node.smtp_addr());
    client.ehlo("client.test");
    let reply = client.read_reply();
    assert_eq!(
        (reply.code, reply.enhanced_code()),
        (421, Some("4.4.2")),
        "{reply}"
    );
    assert!(client.try_read_reply().is_err(), "the connection is closed");
}

#[test]
fn running_node_has_core_dumps_off_and_memory_locked() {
    let (_ca, _receiver, node) = node_with_route("/ok", None);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", node.pid())).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "RLIMIT_CORE is 0: {core}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).expect("status");
    let locked_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck line");
    if node.log().contains("hardening:") {
        // Not permitted here (an unprivileged run with a small RLIMIT_MEMLOCK): the node says so.
        assert!(node.log().contains("memory is not locked") || node.log().contains("mlockall"));
    } else {
        assert!(
            locked_kib > 0,
            "mlockall locked the node's memory: VmLck {locked_kib} kB"
        );
    }
}

#[test]
fn in_flight_budget_refuses_data_with_452_while_another_message_holds_it() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new()
            .max_message_size("1MiB")
            .max_in_flight("1MiB")
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            )),
    );
    // The first client declares 900 KB and starts sending: its reservation holds the budget.
    let mut first = SmtpClient::connect(node.smtp_addr());
    first.ehlo("client.test");
    assert_eq!(
        first.command("MAIL FROM:<a@example.org> SIZE=900000").code,
        250
    );
    assert_eq!(first.command("RCPT TO:<bob@in.example.test>").code, 250);
    assert_eq!(first.command("DATA").code, 354);
    first.send(b"Subject: holder\r\n\r\n");
    first.send(&b"0123456789abcdef\r\n".repeat(40_000)); // 720 KB, no terminator yet

    let mut second = SmtpClient::connect(node.smtp_addr());
    second.ehlo("client.test");
    assert_eq!(
        second.command("MAIL FROM:<a@example.org> SIZE=500000").code,
        250
    );
    assert_eq!(second.command("RCPT TO:<bob@in.example.test>").code, 250);
    let reply = second.command("DATA");
    assert_eq!(
        (reply.code, reply.enhanced_code()),
        (452, Some("4.3.1")),
        "{reply}"
    );

    // When the first message is done, the budget is free again.
    first.send(b".\r\n");
    assert_eq!(first.read_reply().code, 250);
    assert_eq!(second.command("RSET").code, 250);
    let reply = second.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("after", "x"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(receiver.received().len(), 2);
}

/// Issue 16: each configured header bound refuses a message past it with `554 5.6.0` and a text
/// naming the bound, before `250` and before any delivery; a message at each bound gets `250`.
#[test]
fn configured_header_bounds_refuse_past_them_with_554_naming_the_bound_issue_16() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new()
            .header_bounds("2KiB", "8KiB", "16KiB")
            .max_addresses(5)
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            )),
    );
    let with_headers = |headers: &str| -> Vec<u8> {
        format!("From: a@example.org\r\n{headers}Subject: bounds\r\n\r\nbody\r\n").into_bytes()
    };
    // A field of `lines` continuation lines of 102 octets each (CRLF included).
    let field = |name: &str, lines: usize| -> String {
        format!(
            "{name}: x\r\n{}",
            format!(" {}\r\n", "x=?".repeat(33)).repeat(lines)
        )
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "a line at max_header_line",
            with_headers(&format!("X-A: {}\r\n", "x".repeat(2048 - 5))),
            250,
            "",
        ),
        (
            "a line past max_header_line",
            with_headers(&format!("X-A: {}\r\n", "x=?".repeat(700))),
            554,
            "5.6.0 Message refused: header line longer than 2048 octets",
        ),
        (
            "a field within max_header_field",
            with_headers(&field("X-A", 70)),
            250,
            "",
        ),
        (
            "a field past max_header_field",
            with_headers(&field("X-A", 90)),
            554,
            "5.6.0 Message refused: header field larger than 8192 octets",
        ),
        (
            "fields past max_header_section",
            with_headers(&(field("X-A", 60) + &field("X-B", 60) + &field("X-C", 60))),
            554,
            "5.6.0 Message refused: header section larger than 16384 octets",
        ),
        (
            "five addresses",
            with_headers("To: b@in.example.test, c@x.test\r\nCc: d@x.test, e@x.test\r\n"),
            250,
            "",
        ),
        (
            "six addresses",
            with_headers("To: b@in.example.test, c@x.test\r\nCc: d@x.test, e@x.test, f@x.test\r\n"),
            554,
            "5.6.0 Message refused: more than 5 addresses in From, To, Cc and Reply-To",
        ),
    ];
    let mut accepted = 0;
    for (name, data, code, text) in &cases {
        let mut client = SmtpClient::connect(node.smtp_addr());
        let reply = client.send_mail("a@example.org", &["bob@in.example.test"], data);
        assert_eq!(reply.code, *code, "{name}: {reply}");
        if *code == 250 {
            accepted += 1;
        } else {
            assert_eq!(reply.text(), *text, "{name}");
        }
    }
    assert_eq!(
        receiver.received().len(),
        accepted,
        "nothing refused was delivered"
    );
}

/// Issue 16: once parsed, a message is charged for what it holds. One whose parsed form and
/// payload need more than the whole in-flight budget (control characters take six bytes each
/// in JSON) gets `552 5.3.4` before any delivery; plain text of the same size gets `250`.
#[test]
fn a_message_expanding_past_the_whole_budget_gets_552_and_plain_text_of_its_size_250_issue_16() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new()
            .max_message_size("1MiB")
            .max_in_flight("1MiB")
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            )),
    );
    let body = |line: &str| line.repeat(600_000 / line.len());
    let controls: String = (1u8..0x20)
        .filter(|b| !matches!(b, b'\r' | b'\n'))
        .map(char::from)
        .collect::<String>()
        .repeat(2)
        + "\r\n";
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("controls", &body(&controls)),
    );
    assert_eq!(
        (reply.code, reply.text().as_str()),
        (
            552,
            "5.3.4 Message refused: decoded, it needs more memory than this node allows"
        ),
    );
    assert_eq!(receiver.received().len(), 0);
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        &message("plain", &body(&format!("{}\r\n", "a".repeat(76)))),
    );
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(receiver.received().len(), 1);
}
