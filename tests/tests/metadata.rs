//! The metadata store behind real deliveries (issue 4): records survive a restart and a
//! `kill -9` in the middle of a write burst, run-time settings apply to the next SMTP session and
//! persist, and neither recipients nor subjects are readable in the node's files.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxnode_tests::{
    ApiClient, Node, NodeConfig, Receiver, RouteConfig, SmtpClient, TestCa, new_webhook_secret,
    scan_for_marker,
};
use serde_json::{Value, json};

fn message(rcpt: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.org>\r\n\r\nHello\r\n"
    )
    .into_bytes()
}

/// Every record, following the cursor to the end.
fn all_records(api: &ApiClient, key: &str) -> Vec<Value> {
    let mut records = Vec::new();
    let mut path = "/api/v1/emails?limit=100".to_string();
    loop {
        let answer = api.get(&path, Some(key));
        assert_eq!(answer.status, 200, "{}", answer.body);
        let page = answer.json();
        records.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(cursor) => path = format!("/api/v1/emails?limit=100&cursor={cursor}"),
            None => return records,
        }
    }
}

/// The delivery id a `250 2.0.0 <id> accepted` names.
fn delivery_id(reply_text: &str) -> String {
    reply_text
        .split_whitespace()
        .find(|w| w.starts_with("msg_"))
        .unwrap_or_else(|| panic!("no id in {reply_text:?}"))
        .to_string()
}

#[test]
fn records_survive_a_restart_with_every_field() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let mut node = Node::start(
        &NodeConfig::new()
            .http(&ca)
            .api_key("admin", &["admin"])
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            )),
    );
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "alice@example.org",
        &["bob@in.example.test"],
        &message("bob@in.example.test", "kept"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let id = delivery_id(&reply.text());
    drop(client);
    assert!(node.terminate().success());
    node.restart();

    let api = ApiClient::new(&node, &ca);
    let records = all_records(&api, node.api_key("admin"));
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record["delivery_id"], id);
    assert_eq!(record["status"], "delivered");
    assert_eq!(record["smtp_code"], 250);
    assert_eq!(record["webhook_status"], 200);
    assert_eq!(record["recipients"], json!(["bob@in.example.test"]));
    assert_eq!(record["route"], "*@in.example.test");
    assert_eq!(record["subject"], "kept");
    assert_eq!(record["message_id"], "<kept@example.org>");
    assert!(record.get("mail_from").is_none() && !record.to_string().contains("alice"));
}

#[test]
fn every_acknowledged_message_has_its_record_after_kill_9_mid_burst() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let mut node = Node::start(
        &NodeConfig::new()
            .http(&ca)
            .api_key("admin", &["admin"])
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            )),
    );
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let addr = node.smtp_addr();
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let acknowledged = acknowledged.clone();
            std::thread::spawn(move || {
                let Ok(mut client) = SmtpClient::try_connect(addr) else {
                    return;
                };
                client.set_read_timeout(Duration::from_secs(10));
                for n in 0..10_000 {
                    let subject = format!("burst-{sender}-{n}");
                    let data = message("bob@in.example.test", &subject);
                    // A killed node ends the burst: the raw client panics on a broken
                    // connection, which only ends this sender.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        client.send_mail("a@example.org", &["bob@in.example.test"], &data)
                    }));
                    match outcome {
                        Ok(reply) if reply.code == 250 => acknowledged
                            .lock()
                            .expect("ledger")
                            .push(delivery_id(&reply.text())),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Let the burst run, then kill the node without warning.
    let started = Instant::now();
    while acknowledged.lock().expect("ledger").len() < 40
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    node.kill();
    for sender in senders {
        let _ = sender.join();
    }
    let acknowledged = acknowledged.lock().expect("ledger").clone();
    assert!(
        acknowledged.len() >= 40,
        "the burst ran: {}",
        acknowledged.len()
    );

    node.restart();
    let api = ApiClient::new(&node, &ca);
    let recorded: std::collections::HashSet<String> = all_records(&api, node.api_key("admin"))
        .iter()
        .filter_map(|r| r["delivery_id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| !recorded.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not recorded: {missing:?}"
    );
}

#[test]
fn settings_change_applies_to_the_next_smtp_session_and_persists() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let mut node = Node::start(
        &NodeConfig::new()
            .http(&ca)
            .api_key("admin", &["admin"])
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            )),
    );
    let key = node.api_key("admin").to_string();
    let mut before = SmtpClient::connect(node.smtp_addr());
    before.ehlo("client.test");

    let api = ApiClient::new(&node, &ca);
    let mut settings = api.get("/api/v1/settings", Some(&key)).json();
    assert_eq!(
        settings["routes"][0]["webhook_secret"], "********",
        "secrets are masked"
    );
    assert!(!settings.to_string().contains(receiver.secret()));
    let mut new_route = settings["routes"][0].clone();
    new_route["match"] = json!("*@new.example.test");
    new_route["webhook"] = json!(receiver.url("/status/201"));
    new_route["webhook_secret"] = json!(receiver.secret());
    settings["routes"]
        .as_array_mut()
        .expect("routes")
        .push(new_route);
    settings["retention"]["store_subject"] = json!(false);
    let answer = api.put("/api/v1/settings", Some(&key), &settings);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        !answer.body.contains(receiver.secret()),
        "the answer masks secrets"
    );

    // The session that started before the change keeps its routing table.
    assert_eq!(before.command("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(before.command("RCPT TO:<x@new.example.test>").code, 550);
    // The next session uses the new one.
    let mut after = SmtpClient::connect(node.smtp_addr());
    let reply = after.send_mail(
        "a@example.org",
        &["x@new.example.test"],
        &message("x@new.example.test", "secret-subject"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(receiver.received()[0].path, "/status/201");
    let records = all_records(&api, &key);
    assert_eq!(
        records[0]["subject"],
        Value::Null,
        "store_subject = false applies at once"
    );

    // Stored settings win over the file after a restart.
    assert!(node.terminate().success());
    node.restart();
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["y@new.example.test"],
        &message("y@new.example.test", "again"),
    );
    assert_eq!(reply.code, 250, "{reply}");

    // An invalid document is refused with the key named, and nothing changes.
    let api = ApiClient::new(&node, &ca);
    let bad = json!({"routes": [{"match": "*@in.example.test", "webhook": "http://10.1.1.1/x"}]});
    let answer = api.put("/api/v1/settings", Some(&key), &bad);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("routes[0].webhook"), "{}", answer.body);
    let mut client = SmtpClient::connect(node.smtp_addr());
    client.ehlo("client.test");
    assert_eq!(client.command("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(client.command("RCPT TO:<z@new.example.test>").code, 250);
}

#[test]
fn store_files_hold_neither_recipient_nor_subject_in_plaintext() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let mut node = Node::start(
        &NodeConfig::new()
            .http(&ca)
            .api_key("admin", &["admin"])
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            )),
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let rcpt = format!("rcpt{nanos}@in.example.test");
    let subject = format!("subject{nanos}");
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail("a@example.org", &[&rcpt], &message(&rcpt, &subject));
    assert_eq!(reply.code, 250, "{reply}");
    let api = ApiClient::new(&node, &ca);
    let records = all_records(&api, node.api_key("admin"));
    assert_eq!(
        records[0]["subject"],
        subject.as_str(),
        "the record holds the subject"
    );
    assert!(node.terminate().success());

    for marker in [rcpt.as_str(), &format!("rcpt{nanos}"), subject.as_str()] {
        let hits = scan_for_marker(&[node.data_dir()], marker.as_bytes());
        assert!(hits.is_empty(), "{marker} readable in {hits:?}");
    }
}

/// Issue 16: settings saved through the API that no longer load at start (here: the route's
/// `webhook_ca` file is gone) must not fall back to the file's settings — on the appliance the
/// file has no routes and every recipient would get 550, bouncing mail. The node defers every
/// RCPT and DATA with `451 4.3.0`, says so in `/metrics` and loudly in the log (the store and
/// the key named, never a secret), and a good `PUT` ends the deferral. A `file:`/`env:` secret
/// in a settings document is refused with 400 naming the field.
#[test]
fn issue_16_settings_that_fail_to_load_at_start_defer_mail_instead_of_bouncing_it() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    // Like the appliance: the config file has no routes; they come from the API.
    let mut node = Node::start(&NodeConfig::new().http(&ca).api_key("admin", &["admin"]));
    let key = node.api_key("admin").to_string();
    let api = ApiClient::new(&node, &ca);

    // A secret reference through the API: refused by field, nothing read.
    let secret_file = node.temp_root().join("webhook-secret");
    std::fs::write(&secret_file, receiver.secret()).expect("write secret file");
    let reference = json!({"routes": [{
        "match": "*@in.example.test", "webhook": receiver.url("/ok"),
        "webhook_ca": receiver.ca_pem().display().to_string(),
        "webhook_secret": format!("file:{}", secret_file.display()),
    }]});
    let answer = api.put("/api/v1/settings", Some(&key), &reference);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.body.contains("routes[0].webhook_secret"),
        "{}",
        answer.body
    );

    // A route whose CA bundle is a file that will disappear.
    let ca_copy = node.temp_root().join("webhook-ca.pem");
    std::fs::copy(receiver.ca_pem(), &ca_copy).expect("copy CA");
    let route = |ca: &std::path::Path| {
        json!({"routes": [{
            "match": "*@in.example.test", "webhook": receiver.url("/ok"),
            "webhook_ca": ca.display().to_string(), "webhook_secret": receiver.secret(),
        }]})
    };
    let answer = api.put("/api/v1/settings", Some(&key), &route(&ca_copy));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["x@in.example.test"],
        &message("x@in.example.test", "before"),
    );
    assert_eq!(reply.code, 250, "{reply}");

    assert!(node.terminate().success());
    std::fs::remove_file(&ca_copy).expect("remove CA copy");
    node.restart();
    let api = ApiClient::new(&node, &ca);

    let mut client = SmtpClient::connect(node.smtp_addr());
    client.ehlo("client.test");
    assert_eq!(client.command("MAIL FROM:<a@example.org>").code, 250);
    let rcpt = client.command("RCPT TO:<x@in.example.test>");
    assert_eq!(rcpt.code, 451, "deferred, never 550: {rcpt}");
    assert_eq!(rcpt.enhanced_code(), Some("4.3.0"), "{rcpt}");
    assert!(
        rcpt.contains("settings"),
        "the text names the problem: {rcpt}"
    );
    let data = client.command("DATA");
    assert_eq!(data.code, 451, "{data}");
    assert_eq!(data.enhanced_code(), Some("4.3.0"), "{data}");

    let metrics = api.get("/metrics", Some(&key));
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("mxnode_settings_load_failed 1"),
        "{}",
        metrics.body
    );
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("SETTINGS NOT LOADED"))
        .unwrap_or_else(|| panic!("a loud log line: {log}"));
    assert!(
        line.contains("routes[0].webhook_ca"),
        "names the key: {line}"
    );
    assert!(
        line.contains("`settings`"),
        "names the stored settings: {line}"
    );
    assert!(!log.contains(receiver.secret()), "never the secret value");

    // The operator fixes the settings: mail flows again at once.
    let answer = api.put("/api/v1/settings", Some(&key), &route(receiver.ca_pem()));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["y@in.example.test"],
        &message("y@in.example.test", "after"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let metrics = api.get("/metrics", Some(&key));
    assert!(
        metrics.body.contains("mxnode_settings_load_failed 0"),
        "{}",
        metrics.body
    );
}
