//! A real MTA as the sender (issue 14): a private Postfix instance (`tests/src/postfix.rs`)
//! relays to the node with `smtp_tls_security_level = encrypt`, as a sending mail server on the
//! Internet would, and the payload reports the TLS that Postfix's own log says it negotiated.

use std::time::Duration;

use mxnode_tests::{
    Node, NodeConfig, Postfix, Receiver, RouteConfig, SmtpClient, TestCa, new_webhook_secret,
};

/// How long a relayed message may take to reach the receiver: the first attempt is immediate,
/// and with the instance's 1–2 s backoff a deferral would be retried many times within this.
const DELIVERY_WAIT: Duration = Duration::from_secs(60);
/// How long Postfix may take to log a delivery and empty its queue once the receiver has it.
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// The `TLS connection established to …` line of Postfix's log (smtp_tls_loglevel = 1).
fn tls_line(log: &str) -> Option<&str> {
    log.lines()
        .find(|line| line.contains("TLS connection established to"))
}

#[test]
fn postfix_delivers_over_starttls_with_tls_1_3_issue_14() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(&NodeConfig::new().tls(&ca).route(RouteConfig::to_receiver(
        "*@in.example.test",
        &receiver,
        "/ok",
    )));
    let postfix = Postfix::start(node.smtp_addr(), &ca.ca_pem);

    // Injected in plain SMTP on loopback; the TLS under test is Postfix → node.
    let message = "From: Alice <alice@example.org>\r\nTo: bob@in.example.test\r\n\
                   Subject: via postfix\r\nMessage-ID: <postfix-tls@example.org>\r\n\
                   Date: Tue, 1 Jul 2025 10:00:00 +0000\r\n\r\nrelayed by Postfix\r\n";
    let mut client = SmtpClient::connect(postfix.smtp_addr());
    let reply = client.send_mail(
        "alice@example.org",
        &["bob@in.example.test"],
        message.as_bytes(),
    );
    assert_eq!(reply.code, 250, "Postfix queued the message: {reply}");

    let received = receiver.wait_for(1, DELIVERY_WAIT);
    assert_eq!(
        received.len(),
        1,
        "one delivery through Postfix; Postfix's log:\n{}\nqueue:\n{}",
        postfix.log(),
        postfix.queue_listing()
    );
    let body = &received[0].body;
    assert_eq!(body["subject"], "via postfix");
    // Postfix's smtp client, not the injecting one, spoke to the node.
    assert_eq!(body["envelope"]["helo"], "postfix.test", "{body}");
    let tls = &body["envelope"]["tls"];
    assert_eq!(tls["version"], "TLSv1.3", "{tls}");
    let cipher = tls["cipher"].as_str().unwrap_or_default();
    assert!(
        cipher.starts_with("TLS_AES_") || cipher == "TLS_CHACHA20_POLY1305_SHA256",
        "{tls}"
    );

    assert!(
        postfix.wait_until_queue_empty(SETTLE_WAIT),
        "Postfix's queue is empty after the delivery:\n{}",
        postfix.queue_listing()
    );
    assert!(
        postfix.wait_for_log(" status=sent ", SETTLE_WAIT),
        "Postfix logs the delivery as sent:\n{}",
        postfix.log()
    );
    let log = postfix.log();
    let line = tls_line(&log).unwrap_or_else(|| panic!("Postfix logs its TLS session:\n{log}"));
    // `Trusted`: the node's certificate chain verified against the test CA (smtp_tls_CAfile);
    // `encrypt` does not check the name, so this is not `Verified`.
    assert!(
        line.contains(&format!(
            "Trusted TLS connection established to 127.0.0.1[127.0.0.1]:{}: TLSv1.3 with cipher {cipher} ",
            node.smtp_addr().port()
        )),
        "Postfix and the payload agree on version and cipher: {line}"
    );
}
