//! The node's outbound HTTP client (`daemon/src/net/`) end to end: a receiver that speaks only
//! HTTP/2 and one that speaks only HTTP/1.1 both get signed deliveries, kept-alive connections
//! are reused across messages, and deliveries waiting on a slow receiver hold no thread each.
//! Every fact is checked on the receiver's side or in `/proc`, never taken from the node.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use mxnode_tests::{
    Node, NodeConfig, Received, Receiver, RouteConfig, SmtpClient, TestCa, new_webhook_secret,
};

const WAIT: Duration = Duration::from_secs(30);

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\nTo: bob@in.example.test\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.org>\r\n\r\nHello Bob\r\n"
    )
    .into_bytes()
}

/// Sends `count` messages one after the other, each in its own SMTP session, and expects `250`
/// for each.
fn send_one_by_one(node: &Node, count: usize) {
    for n in 0..count {
        let mut client = SmtpClient::connect(node.smtp_addr());
        let reply = client.send_mail(
            "alice@example.org",
            &["bob@in.example.test"],
            &message(&format!("m{n}")),
        );
        assert_eq!(reply.code, 250, "message {n}: {reply}");
    }
}

/// The distinct TLS connections the records came on.
fn connections(received: &[Received]) -> BTreeSet<u64> {
    received.iter().map(|r| r.connection).collect()
}

fn assert_signed_and_acknowledged(received: &[Received], http_version: &str) {
    for r in received {
        assert_eq!(r.http_version, http_version, "{r:?}");
        assert!(
            r.signature_valid,
            "signature verified by the receiver: {r:?}"
        );
        assert!(r.timestamp_fresh, "{r:?}");
        assert_eq!(r.status, Some(200), "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("webhook-id"),
            r.body["id"].as_str(),
            "the payload names its delivery id"
        );
    }
}

#[test]
fn an_http2_only_receiver_gets_signed_deliveries_over_one_shared_connection() {
    let ca = TestCa::new();
    let receiver = Receiver::start_h2(&ca, &new_webhook_secret());
    let node = Node::start(&NodeConfig::new().route(RouteConfig::to_receiver(
        "*@in.example.test",
        &receiver,
        "/ok",
    )));
    send_one_by_one(&node, 4);
    let received = receiver.wait_for(4, WAIT);
    assert_eq!(received.len(), 4, "one delivery per message: {received:?}");
    assert_signed_and_acknowledged(&received, "2");
    let subjects: Vec<_> = received.iter().map(|r| r.body["subject"].clone()).collect();
    assert_eq!(subjects, ["m0", "m1", "m2", "m3"]);
    assert_eq!(
        connections(&received).len(),
        1,
        "every message went over the one HTTP/2 connection: {received:?}"
    );
}

#[test]
fn an_http1_receiver_gets_signed_deliveries_over_one_kept_alive_connection() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(&NodeConfig::new().route(RouteConfig::to_receiver(
        "*@in.example.test",
        &receiver,
        "/ok",
    )));
    send_one_by_one(&node, 5);
    let received = receiver.received();
    assert_eq!(received.len(), 5, "one delivery per message: {received:?}");
    assert_signed_and_acknowledged(&received, "1.1");
    assert_eq!(
        connections(&received).len(),
        1,
        "one message after the other reuse one connection: {received:?}"
    );
}

#[test]
fn a_refusal_from_an_http2_receiver_gives_550_and_retries_go_over_the_same_connection() {
    let ca = TestCa::new();
    let receiver = Receiver::start_h2(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new()
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/status/422",
            ))
            .route(
                RouteConfig::to_receiver("*@retry.example.test", &receiver, "/status/503")
                    .budget("2s"),
            ),
    );
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail("a@example.org", &["bob@in.example.test"], &message("r"));
    assert_eq!(
        (reply.code, reply.enhanced_code()),
        (550, Some("5.7.1")),
        "{reply}"
    );
    let reply = client.send_mail("a@example.org", &["bob@retry.example.test"], &message("t"));
    assert_eq!(
        (reply.code, reply.enhanced_code()),
        (451, Some("4.3.0")),
        "{reply}"
    );
    let received = receiver.received();
    let retried = received.iter().filter(|r| r.path == "/status/503").count();
    assert!(retried >= 2, "retried inside the budget: {received:?}");
    assert!(
        received
            .iter()
            .all(|r| r.signature_valid && !r.acknowledged)
    );
}

#[test]
fn failed_attempts_are_logged_by_class() {
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // (recipient domain, route, what the node's log must name)
    let cases = [
        (
            "cert.example.test",
            RouteConfig::new(
                "*@cert.example.test",
                &receiver.url("/ok"),
                receiver.secret(),
            )
            .ca(&other_ca.ca_pem),
            "TLS failure: invalid peer certificate",
        ),
        (
            "reset.example.test",
            RouteConfig::to_receiver("*@reset.example.test", &receiver, "/reset"),
            "connection reset",
        ),
        (
            "hang.example.test",
            RouteConfig::to_receiver("*@hang.example.test", &receiver, "/hang"),
            "timeout (waiting for the answer)",
        ),
        (
            "down.example.test",
            RouteConfig::new(
                "*@down.example.test",
                &format!("https://127.0.0.1:{free_port}/ok"),
                receiver.secret(),
            )
            .ca(&ca.ca_pem),
            "connection failed",
        ),
    ];
    let mut config = NodeConfig::new();
    for (_, route, _) in &cases {
        config = config.route(route.clone().budget("1s"));
    }
    let node = Node::start(&config);
    for (domain, _, expected) in &cases {
        let mut client = SmtpClient::connect(node.smtp_addr());
        let reply = client.send_mail("a@example.org", &[&format!("bob@{domain}")], &message("f"));
        assert_eq!(
            (reply.code, reply.enhanced_code()),
            (451, Some("4.3.0")),
            "{domain}: {reply}"
        );
        assert!(
            node.wait_for_log(expected, WAIT),
            "{domain}: the log names {expected:?}:\n{}",
            node.log()
        );
    }
}

/// Threads of process `pid` right now.
fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| tasks.count())
        .unwrap_or(0)
}

#[test]
fn a_hundred_sessions_waiting_on_a_slow_receiver_hold_no_thread_each() {
    const SESSIONS: usize = 100;
    // Long enough to count the node's threads while every delivery waits, short enough to stay
    // far inside the default 30 s budget and the 20 s attempt limit.
    const RECEIVER_DELAY_MS: u64 = 6_000;
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let allowed = cores + 8;

    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new()
            .max_sessions_per_ip(SESSIONS as u64 + 10)
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                &format!("/delay/{RECEIVER_DELAY_MS}/status/200"),
            )),
    );
    let addr = node.smtp_addr();
    let idle_threads = thread_count(node.pid());
    let senders: Vec<_> = (0..SESSIONS)
        .map(|n| {
            // Errors are returned, not panicked on: a failed assertion below stops the node
            // under these sessions, and their replies are judged only when it did not.
            thread::spawn(move || {
                SmtpClient::try_connect(addr)?.try_send_mail(
                    "alice@example.org",
                    &["bob@in.example.test"],
                    &message(&format!("slow{n}")),
                )
            })
        })
        .collect();

    // Every delivery is on the receiver's side and waiting for its answer: count the node's
    // threads for a while, keeping the highest figure.
    let waiting = receiver.wait_for(SESSIONS, Duration::from_secs(60));
    assert_eq!(
        waiting.len(),
        SESSIONS,
        "all deliveries reached the receiver"
    );
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        peak = peak.max(thread_count(node.pid()));
        thread::sleep(Duration::from_millis(50));
    }
    let still_waiting = receiver
        .received()
        .iter()
        .filter(|r| r.status.is_none())
        .count();
    eprintln!(
        "node threads: {idle_threads} idle, at most {peak} with {still_waiting} of {SESSIONS} \
         deliveries waiting on the receiver ({cores} cores, {allowed} allowed)"
    );
    assert!(
        still_waiting > SESSIONS / 2,
        "the count was taken while the deliveries waited ({still_waiting} still waiting)"
    );
    assert!(
        peak <= allowed,
        "{peak} threads with {SESSIONS} deliveries in flight; at most {allowed} allowed"
    );

    for (n, sender) in senders.into_iter().enumerate() {
        let reply = sender.join().expect("sender thread");
        let reply = reply.unwrap_or_else(|e| panic!("session {n}: {e}"));
        assert_eq!(reply.code, 250, "session {n}: {reply}");
    }
    let received = receiver.received();
    assert_eq!(received.len(), SESSIONS);
    assert!(received.iter().all(|r| r.signature_valid && r.acknowledged));
}
