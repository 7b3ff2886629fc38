//! Every real-world message of `../shared/corpus`, sent over SMTP with CRLF line ends (issue 2):
//! each is delivered (`250`, and the receiver has it) or refused with a clear `5xx` — never a
//! `4xx`, a hang or a dead node. For the stalwart-mail-parser messages, the `text` the receiver
//! got equals the reference's decoded text body, except for the deliberate differences listed in
//! `mxnode_tests::corpus::EXCEPTIONS` (shared with the parser's golden test).

use std::path::PathBuf;

use mxnode_tests::corpus::{
    files_under, is_exception, normalise, stalwart_dir, stalwart_expected_text,
};
use mxnode_tests::{
    Node, NodeConfig, Receiver, RouteConfig, SmtpClient, TestCa, corpus_dir, crlf,
    new_webhook_secret,
};

/// Corpus messages the node refuses on purpose, with the enhanced code and why. The test fails
/// when one of them is delivered after all, or when any other message is refused.
const EXPECTED_REFUSALS: &[(&str, &str, &str)] = &[
    (
        "stalwart-mail-parser/eml/legacy/049.eml",
        "5.6.0",
        "a bare CR inside a header line: refused as an SMTP-smuggling vector (DESIGN §3)",
    ),
    (
        "stalwart-mail-parser/eml/thirdparty/005.eml",
        "5.6.0",
        "an unencoded binary UTF-16 part with NUL bytes: NUL is not allowed in SMTP DATA, even \
         with 8BITMIME (RFC 6152), and is a smuggling vector",
    ),
];

/// Messages per SMTP session: several transactions per connection, as MTAs do.
const MESSAGES_PER_SESSION: usize = 25;

fn corpus_messages() -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(&corpus_dir(), &mut files);
    files.retain(|p| {
        p.extension().is_some_and(|e| e == "eml")
            || p.ends_with("ruby-mail/sample_output_multipart")
    });
    assert!(
        files.len() >= 200,
        "corpus not found at {}",
        corpus_dir().display()
    );
    files
}

#[test]
fn every_corpus_message_is_delivered_or_refused_with_a_clear_5xx() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(&NodeConfig::new().route(RouteConfig::to_receiver(
        "*@in.example.test",
        &receiver,
        "/ok",
    )));
    let stalwart = stalwart_dir();
    let mut delivered = 0;
    let mut refused = Vec::new();
    let mut text_mismatches = Vec::new();
    let mut stale_exceptions = Vec::new();
    let mut client = SmtpClient::connect(node.smtp_addr());
    for (i, file) in corpus_messages().iter().enumerate() {
        if i > 0 && i % MESSAGES_PER_SESSION == 0 {
            client = SmtpClient::connect(node.smtp_addr());
        }
        let name = file
            .strip_prefix(corpus_dir())
            .unwrap_or(file)
            .display()
            .to_string();
        let data = crlf(&std::fs::read(file).expect("readable corpus file"));
        receiver.clear();
        let reply = client.send_mail("sender@example.org", &["bob@in.example.test"], &data);
        match reply.code {
            250 => {
                let received = receiver.received();
                assert_eq!(
                    received.len(),
                    1,
                    "{name}: 250 but the receiver has {}",
                    received.len()
                );
                assert!(received[0].signature_valid, "{name}");
                delivered += 1;
                if EXPECTED_REFUSALS.iter().any(|(file, _, _)| *file == name) {
                    refused.push(format!("{name}: delivered although it should be refused"));
                }
                if let Ok(relative) = file.strip_prefix(&stalwart) {
                    let relative = relative.display().to_string();
                    let expected = stalwart_expected_text(file);
                    let actual = received[0].body["text"].as_str().map(normalise);
                    match (expected == actual, is_exception(&relative)) {
                        (true, false) | (false, true) => {}
                        (true, true) => stale_exceptions.push(relative),
                        (false, false) => text_mismatches.push(relative),
                    }
                }
            }
            500..=599 => {
                assert!(
                    reply.enhanced_code().is_some(),
                    "{name}: a refusal names its class: {reply}"
                );
                assert!(
                    receiver.received().is_empty(),
                    "{name}: refused but delivered"
                );
                let expected = EXPECTED_REFUSALS.iter().find(|(file, _, _)| *file == name);
                match expected {
                    Some((_, code, _)) if reply.enhanced_code() == Some(*code) => {}
                    _ => refused.push(format!("{name}: {reply}")),
                }
            }
            _ => panic!("{name}: neither delivered nor refused for good: {reply}"),
        }
    }
    assert!(refused.is_empty(), "unexpected outcomes: {refused:#?}");
    assert!(delivered >= 200);
    assert!(
        text_mismatches.is_empty(),
        "text differs from the reference: {text_mismatches:?}"
    );
    assert!(
        stale_exceptions.is_empty(),
        "exceptions no longer needed: {stale_exceptions:?}"
    );
    assert_eq!(client.command("NOOP").code, 250, "the node is still alive");
}
