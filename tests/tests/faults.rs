//! Faults (issue 8, DESIGN invariant 2): the customer's webhook and S3 store misbehave, the
//! node is killed. Senders behave like MTAs (retry what was not acknowledged, same bytes), and
//! the ledger (`mxnode_tests::ledger`) proves for every message they tried: either the node
//! said `250` and the receiver has it, or the node said `4xx`/`5xx` (or vanished) and the
//! sender still holds it. Zero messages acknowledged and not delivered; duplicates at the
//! receiver only with the same `webhook-id`.
//!
//! A new webhook fault is one line: a receiver route (`tests/peers/webhook_receiver.py`) and
//! a call of [`webhook_fault`].

use std::time::Duration;

use mxnode_tests::ledger::{Ledger, Reconciliation, SendPlan, Target, wait_until};
use mxnode_tests::{
    FaultProxy, Node, NodeConfig, Receiver, RouteConfig, S3Server, TestCa, new_webhook_secret,
};

const RECIPIENT: &str = "bob@in.example.test";

/// Runs `plan` against a node whose only route posts to `path` on a fresh receiver with the
/// webhook budget `budget`, and checks the ledger.
fn webhook_fault(path: &str, budget: &str, plan: SendPlan) -> Reconciliation {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new()
            .route(RouteConfig::to_receiver("*@in.example.test", &receiver, path).budget(budget)),
    );
    let ledger = Ledger::new();
    ledger.send_all(&plan, &|| node.smtp_addr());
    let result = ledger.reconcile(&receiver.received());
    eprintln!("webhook {path}, budget {budget}: {}", result.summary());
    result.assert_nothing_lost();
    assert!(!node.log().contains("panicked"), "{}", node.log());
    result
}

#[test]
fn webhook_answering_500_half_the_time_loses_nothing() {
    let result = webhook_fault("/flaky/50", "2s", SendPlan::new(40, RECIPIENT));
    assert!(result.acknowledged > 0, "{}", result.summary());
}

#[test]
fn webhook_resetting_half_the_connections_loses_nothing() {
    let result = webhook_fault("/flaky-reset/50", "2s", SendPlan::new(40, RECIPIENT));
    assert!(result.acknowledged > 0, "{}", result.summary());
}

#[test]
fn webhook_resetting_every_connection_acknowledges_nothing() {
    let plan = SendPlan {
        attempts: 2,
        ..SendPlan::new(16, RECIPIENT)
    };
    let result = webhook_fault("/reset", "1s", plan);
    assert_eq!(result.acknowledged, 0, "{}", result.summary());
}

#[test]
fn webhook_that_hangs_acknowledges_nothing() {
    let plan = SendPlan {
        attempts: 2,
        ..SendPlan::new(16, RECIPIENT)
    };
    let result = webhook_fault("/hang", "2s", plan);
    assert_eq!(result.acknowledged, 0, "{}", result.summary());
    assert_eq!(result.still_with_sender, 16);
}

#[test]
fn webhook_answering_slower_than_the_budget_now_and_then_loses_nothing() {
    // Answers take 0–3 s against a 2 s budget: some are acknowledged by the receiver after the
    // node gave up (451), and come again with the same webhook-id.
    let result = webhook_fault("/slow/3000", "2s", SendPlan::new(40, RECIPIENT));
    assert!(result.acknowledged > 0, "{}", result.summary());
}

#[test]
fn webhook_budget_shorter_than_the_s3_window_is_kept_on_a_route_without_s3() {
    // Found by the slow-webhook fault run: a route without S3 got the 5 s minimum window that
    // is meant for time spent on uploads, so a 2 s budget ran for 5 s and a 3.5 s answer was
    // acknowledged.
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new().route(
            RouteConfig::to_receiver("*@in.example.test", &receiver, "/delay/3500/status/200")
                .budget("2s"),
        ),
    );
    let mut client = mxnode_tests::SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &[RECIPIENT],
        b"Subject: budget\r\n\r\nx\r\n",
    );
    assert_eq!(reply.code, 451, "{reply}");
    // The node answered before the receiver did.
    assert!(receiver.received().iter().all(|r| r.status.is_none()));
}

#[test]
fn s3_failing_mid_upload_loses_nothing() {
    const BUCKET: &str = "mail";
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    // 70 % of the connections to the store, and always the first one that carries an upload,
    // are reset after 100–200 KB: uploads of the 256 KiB attachments break half way, often
    // several times in a row. (Regression: with the cut left to chance alone, a run whose
    // first kept-alive connection survived saw no broken upload at all.)
    let proxy = FaultProxy::start(s3.port(), 70, 200_000);
    let connection = s3.connection("primary", BUCKET).endpoint(&proxy.endpoint());
    let node = Node::start(
        &NodeConfig::new()
            .route(
                RouteConfig::to_receiver("*@in.example.test", &receiver, "/ok")
                    .attachments("s3")
                    .s3("primary")
                    .budget("5s"),
            )
            .extra_toml(&connection.toml()),
    );
    let plan = SendPlan {
        attachment_bytes: 256 * 1024,
        ..SendPlan::new(24, RECIPIENT)
    };
    let ledger = Ledger::new();
    ledger.send_all(&plan, &|| node.smtp_addr());
    // Every acknowledged message's attachment is in the store, whole.
    let stored_intact = |copy: &mxnode_tests::Received| -> Result<(), String> {
        let attachment = &copy.body["attachments"][0];
        let key = attachment["s3"]["key"]
            .as_str()
            .ok_or("the payload has no S3 key")?;
        let object = s3
            .object(BUCKET, key)
            .ok_or_else(|| format!("object {key} is not in the store"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &object);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        if attachment["sha256"] != hex.as_str() {
            return Err(format!("object {key} differs from the attachment"));
        }
        Ok(())
    };
    let result = ledger.reconcile_checked(&receiver.received(), &stored_intact);
    eprintln!("S3 cut mid-upload: {}", result.summary());
    result.assert_nothing_lost();
    assert!(result.acknowledged > 0, "{}", result.summary());
    let log = node.log();
    assert!(
        log.contains("PUT attempt") && log.contains("retrying"),
        "the proxy broke uploads:\n{log}"
    );
}

#[test]
fn node_killed_with_sigkill_under_load_loses_nothing() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    // Slow answers keep many transactions in flight when the node dies.
    let config = NodeConfig::new().route(RouteConfig::to_receiver(
        "*@in.example.test",
        &receiver,
        "/slow/400",
    ));
    let mut node = Node::start(&config);
    let target = Target::new(node.smtp_addr());
    let plan = SendPlan {
        attempts: 12,
        retry_after: Duration::from_millis(300),
        ..SendPlan::new(60, RECIPIENT)
    };
    let ledger = Ledger::new();
    let mut kills = 0;
    std::thread::scope(|scope| {
        let senders = scope.spawn(|| ledger.send_all(&plan, &|| target.get()));
        for round in 1..=2 {
            let arrived = wait_until(Duration::from_secs(60), || {
                receiver.received().len() >= round * 15
            });
            assert!(arrived, "deliveries before kill {round}");
            let status = node.kill();
            assert!(!status.success(), "{status:?}");
            kills += 1;
            node = Node::start(&config);
            target.set(node.smtp_addr());
        }
        senders.join().expect("senders");
    });
    let result = ledger.reconcile(&receiver.received());
    eprintln!("SIGKILL ×{kills} under load: {}", result.summary());
    result.assert_nothing_lost();
    assert!(
        result.lost_connections > 0,
        "the kills hit sessions: {}",
        result.summary()
    );
    assert_eq!(result.acknowledged, 60, "{}", result.summary());
}
