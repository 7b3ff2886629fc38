//! Sender authentication end to end (issue 15, DESIGN §11): the real `mxnode` binary asking a
//! real DNS server (dnsmasq) about messages signed by a real signer (dkimpy), sent over SMTP.
//! Verdicts are asserted on what the receiver got; refusals on the SMTP replies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mxnode_tests::{
    ApiClient, DnsServer, Node, NodeConfig, Receiver, RouteConfig, S3Server, SmtpClient, TestCa,
    new_webhook_secret,
};
use serde_json::{Value, json};

const SIGNER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/dkim_sign.py");

/// The signer's Python: the venv `./build.sh test` makes, or `$MXNODE_DKIMPY_PYTHON`.
fn python() -> String {
    std::env::var("MXNODE_DKIMPY_PYTHON")
        .unwrap_or_else(|_| "/var/tmp/mxnode-auth-venv/bin/python".to_string())
}

/// Keys made once per test binary: RSA 2048 and Ed25519, with their DKIM key records.
struct Keys {
    dir: tempfile::TempDir,
    rsa_record: String,
    ed25519_record: String,
}

impl Keys {
    fn rsa(&self) -> PathBuf {
        self.dir.path().join("rsa.pem")
    }
    fn ed25519(&self) -> PathBuf {
        self.dir.path().join("key.ed25519")
    }
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("key dir");
        let output = Command::new(python())
            .arg(SIGNER)
            .arg("keygen")
            .arg(dir.path())
            .output()
            .expect("run the dkimpy signer (./build.sh test installs its venv)");
        assert!(output.status.success(), "{output:?}");
        let records: Value = serde_json::from_slice(&output.stdout).expect("key records");
        Keys {
            rsa_record: records["rsa"].as_str().expect("rsa").to_string(),
            ed25519_record: records["ed25519"].as_str().expect("ed25519").to_string(),
            dir,
        }
    })
}

/// Runs the signer on `message`.
fn signer(args: &[&str], key: &Path, message: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = Command::new(python())
        .arg(SIGNER)
        .arg(args[0])
        .arg(key)
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the dkimpy signer");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(message)
        .expect("write the message");
    let output = child.wait_with_output().expect("signer output");
    assert!(output.status.success(), "{output:?}");
    output.stdout
}

fn sign(message: &[u8], key: &Path, domain: &str, selector: &str) -> Vec<u8> {
    signer(&["sign", domain, selector], key, message)
}

/// The test zone: every domain the tests use.
fn zone() -> Vec<(String, String)> {
    let keys = keys();
    let mut records: Vec<(String, String)> = vec![
        // A domain that signs (RSA `s1`, Ed25519 `ed`), sends from 127.0.0.1 and rejects.
        ("origin.test", "v=spf1 ip4:127.0.0.1 -all"),
        ("_dmarc.origin.test", "v=DMARC1; p=reject"),
        // A bank whose mail never comes from 127.0.0.1.
        ("bank.test", "v=spf1 ip4:192.0.2.1 -all"),
        ("_dmarc.bank.test", "v=DMARC1; p=reject"),
        ("quarantine.test", "v=spf1 ip4:192.0.2.1 -all"),
        ("_dmarc.quarantine.test", "v=DMARC1; p=quarantine"),
        ("none.test", "v=spf1 ip4:192.0.2.1 -all"),
        ("_dmarc.none.test", "v=DMARC1; p=none"),
        // p=none for itself, sp=reject for its subdomains (sub.parent.test has no record).
        ("_dmarc.parent.test", "v=DMARC1; p=none; sp=reject"),
        // p=reject applied to 0 % of failing mail: treated as quarantine (RFC 7489 §6.6.4).
        ("pct.test", "v=spf1 ip4:192.0.2.1 -all"),
        ("_dmarc.pct.test", "v=DMARC1; p=reject; pct=0"),
        // SPF that includes itself, and SPF that needs 11 lookups.
        ("loop.test", "v=spf1 include:loop.test -all"),
        // Three void lookups before the match (NXDOMAIN for `a`, `mx` and `exists`), three
        // NODATA answers (names with TXT records only), and two, which is allowed.
        (
            "void.test",
            "v=spf1 a:v1.void.test mx:v2.void.test exists:v3.void.test ip4:127.0.0.1 -all",
        ),
        (
            "nodata.test",
            "v=spf1 a:origin.test a:bank.test a:none.test ip4:127.0.0.1 -all",
        ),
        (
            "twovoid.test",
            "v=spf1 a:v1.void.test a:origin.test ip4:127.0.0.1 -all",
        ),
        // Organisational domains from the Public Suffix List: mail.example.co.uk publishes its
        // own record; org.uk, a public suffix, publishes one for the names under it.
        ("_dmarc.mail.example.co.uk", "v=DMARC1; p=reject"),
        ("_dmarc.org.uk", "v=DMARC1; p=reject"),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    records.push(("s1._domainkey.origin.test".into(), keys.rsa_record.clone()));
    records.push((
        "ed._domainkey.origin.test".into(),
        keys.ed25519_record.clone(),
    ));
    records.push(("arc._domainkey.fwd.test".into(), keys.rsa_record.clone()));
    for domain in ["example.co.uk", "co.uk", "org.uk"] {
        records.push((format!("s1._domainkey.{domain}"), keys.rsa_record.clone()));
    }
    let includes: Vec<String> = (1..=11)
        .map(|i| format!("include:l{i}.many.test"))
        .collect();
    records.push((
        "many.test".into(),
        format!("v=spf1 {} -all", includes.join(" ")),
    ));
    for i in 1..=11 {
        records.push((format!("l{i}.many.test"), "v=spf1 -all".into()));
    }
    records
}

fn dns() -> DnsServer {
    let zone = zone();
    let records: Vec<(&str, &str)> = zone.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    DnsServer::start(&records)
}

/// A node with `*@report.in.test` (dmarc = report) and `*@enforce.in.test` (dmarc = enforce)
/// to one receiver, asking `resolver` with `timeout`.
struct Setup {
    _ca: TestCa,
    receiver: Receiver,
    node: Node,
}

fn setup(resolver: SocketAddr, timeout: &str) -> Setup {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(
        &NodeConfig::new()
            .hostname("mx.in.test")
            .auth(&[resolver], timeout)
            .route(RouteConfig::to_receiver("*@report.in.test", &receiver, "/ok").dmarc("report"))
            .route(
                RouteConfig::to_receiver("*@enforce.in.test", &receiver, "/ok").dmarc("enforce"),
            ),
    );
    Setup {
        _ca: ca,
        receiver,
        node,
    }
}

fn message(from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: someone@report.in.test\r\nSubject: {subject}\r\n\
         Date: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@auth.test>\r\n\r\n\
         {body}\r\n"
    )
    .into_bytes()
}

/// Sends one message; returns the reply code and the `auth` object the receiver got (if any).
fn send(setup: &Setup, mail_from: &str, rcpt: &str, data: &[u8]) -> (u16, String, Option<Value>) {
    setup.receiver.clear();
    let mut client = SmtpClient::connect(setup.node.smtp_addr());
    let reply = client.send_mail(mail_from, &[rcpt], data);
    let received = setup.receiver.received();
    let auth = received.first().map(|r| r.body["auth"].clone());
    if reply.code == 250 {
        assert_eq!(received.len(), 1, "one delivery for a 250");
    } else {
        assert!(received.is_empty(), "nothing delivered for {reply}");
    }
    (reply.code, reply.text(), auth)
}

#[test]
fn signed_mail_passes_spf_dkim_with_rsa_and_ed25519_and_dmarc() {
    let dns = dns();
    let setup = setup(dns.addr(), "3s");
    let keys = keys();
    let plain = message("alice@origin.test", "signed", "Hello");
    let signed = sign(&plain, &keys.rsa(), "origin.test", "s1");
    let signed = sign(&signed, &keys.ed25519(), "origin.test", "ed");
    let (code, text, auth) = send(&setup, "alice@origin.test", "bob@enforce.in.test", &signed);
    assert_eq!(code, 250, "{text}");
    let auth = auth.expect("auth object");
    assert_eq!(
        auth,
        json!({
            "spf": {"result": "pass", "domain": "origin.test"},
            "dkim": [
                {"result": "pass", "domain": "origin.test", "selector": "ed"},
                {"result": "pass", "domain": "origin.test", "selector": "s1"},
            ],
            "dmarc": {"result": "pass", "domain": "origin.test", "policy": "reject"},
            "arc": {"result": "none"},
            "header": "mx.in.test; spf=pass smtp.mailfrom=origin.test; \
                       dkim=pass header.d=origin.test header.s=ed; \
                       dkim=pass header.d=origin.test header.s=s1; \
                       dmarc=pass header.from=origin.test",
        }),
        "dns log:\n{}",
        dns.log()
    );
    // The order of the payload's keys is the contract's: `auth` between envelope and
    // message_id, its own keys as DESIGN §4 lists them.
    let raw = &setup.receiver.received()[0].raw_body;
    let at = |k: &str| raw.find(k).unwrap_or_else(|| panic!("{k} in {raw}"));
    assert!(at("\"envelope\":") < at("\"auth\":") && at("\"auth\":") < at("\"message_id\":"));
    assert!(raw.contains(r#""auth":{"spf":{"result":"pass","domain":"origin.test"},"dkim":[{"#));
    // Logs carry counts and words, never the domains.
    let log = setup.node.log();
    assert!(log.contains("auth: spf=pass dkim=2 signature(s), 2 passed, dmarc=pass"));
    assert!(!log.contains("origin.test"), "{log}");
}

#[test]
fn body_altered_after_signing_fails_dkim_and_spf_still_aligns() {
    let dns = dns();
    let setup = setup(dns.addr(), "3s");
    let signed = sign(
        &message("alice@origin.test", "altered", "Pay 10 EUR"),
        &keys().rsa(),
        "origin.test",
        "s1",
    );
    let altered = String::from_utf8(signed)
        .expect("utf-8")
        .replace("Pay 10 EUR", "Pay 10000 EUR")
        .into_bytes();
    let (code, text, auth) = send(&setup, "alice@origin.test", "bob@enforce.in.test", &altered);
    assert_eq!(code, 250, "{text}");
    let auth = auth.expect("auth");
    assert_eq!(auth["dkim"][0]["result"], "fail", "{auth}");
    assert_eq!(auth["spf"]["result"], "pass");
    assert_eq!(auth["dmarc"]["result"], "pass", "aligned SPF pass: {auth}");
}

#[test]
fn spoof_of_a_reject_domain_is_refused_under_enforce_and_reported_under_report() {
    let dns = dns();
    let setup = setup(dns.addr(), "3s");
    let spoof = message("ceo@bank.test", "wire", "Wire the money today.");
    let (code, text, _) = send(&setup, "ceo@bank.test", "cfo@enforce.in.test", &spoof);
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.7.1 "), "{text}");
    let (code, text, auth) = send(&setup, "ceo@bank.test", "cfo@report.in.test", &spoof);
    assert_eq!(code, 250, "{text}");
    let auth = auth.expect("auth");
    assert_eq!(
        auth["spf"],
        json!({"result": "fail", "domain": "bank.test"})
    );
    assert_eq!(auth["dkim"], json!([]));
    assert_eq!(
        auth["dmarc"],
        json!({"result": "fail", "domain": "bank.test", "policy": "reject"})
    );
    assert_eq!(
        auth["header"],
        "mx.in.test; spf=fail smtp.mailfrom=bank.test; dkim=none; dmarc=fail header.from=bank.test"
    );
}

#[test]
fn enforce_refuses_only_an_applied_reject_policy() {
    let dns = dns();
    let setup = setup(dns.addr(), "3s");
    // (From domain, reply under enforce, policy reported)
    let cases = [
        ("quarantine.test", 250, json!("quarantine")),
        ("none.test", 250, json!("none")),
        ("pct.test", 250, json!("reject")),
        ("sub.parent.test", 550, json!("reject")),
    ];
    for (domain, expect, policy) in cases {
        let from = format!("x@{domain}");
        let data = message(&from, "policy", "text");
        let (code, text, auth) = send(&setup, &from, "r@enforce.in.test", &data);
        assert_eq!(code, expect, "{domain}: {text}");
        if let Some(auth) = auth {
            assert_eq!(auth["dmarc"]["result"], "fail", "{domain}: {auth}");
            assert_eq!(auth["dmarc"]["policy"], policy, "{domain}: {auth}");
        }
    }
}

#[test]
fn enforcing_and_reporting_routes_never_share_a_transaction() {
    let dns = dns();
    let setup = setup(dns.addr(), "3s");
    let spoof = message("ceo@bank.test", "split", "Wire the money.");
    let mut client = SmtpClient::connect(setup.node.smtp_addr());
    assert_eq!(client.command("EHLO client.test").code, 250);
    assert_eq!(client.command("MAIL FROM:<ceo@bank.test>").code, 250);
    assert_eq!(client.command("RCPT TO:<a@enforce.in.test>").code, 250);
    // The reporting route's recipient must come in its own transaction: one DATA reply could
    // not be true for both.
    let deferred = client.command("RCPT TO:<b@report.in.test>");
    assert_eq!(deferred.code, 452, "{deferred}");
    assert_eq!(deferred.enhanced_code(), Some("4.5.3"));
    assert_eq!(client.command("RCPT TO:<c@enforce.in.test>").code, 250);
    assert_eq!(client.command("DATA").code, 354);
    client.send(&spoof);
    client.send(b".\r\n");
    let refused = client.read_reply();
    assert_eq!(refused.code, 550, "{refused}");
    assert!(setup.receiver.received().is_empty());
    // The sender's MTA retries the deferred recipient in a second transaction: delivered.
    let reply = client.send_mail("ceo@bank.test", &["b@report.in.test"], &spoof);
    assert_eq!(reply.code, 250, "{reply}");
    let received = setup.receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].body["envelope"]["rcpt_to"],
        json!(["b@report.in.test"])
    );
    assert_eq!(received[0].body["auth"]["dmarc"]["result"], "fail");
}

#[test]
fn forwarded_message_with_broken_dkim_and_a_valid_arc_chain_passes_arc() {
    let dns = dns();
    let setup = setup(dns.addr(), "3s");
    let keys = keys();
    let original = sign(
        &message("alice@origin.test", "forwarded", "Original text"),
        &keys.rsa(),
        "origin.test",
        "s1",
    );
    // The forwarder checked the original, then changed the body (a list footer) and sealed.
    let mut forwarded =
        b"Authentication-Results: fwd.test; dkim=pass header.d=origin.test\r\n".to_vec();
    forwarded.extend_from_slice(&original);
    forwarded.extend_from_slice(b"-- \r\nThe list footer\r\n");
    let sealed = signer(
        &["arc", "fwd.test", "arc", "fwd.test"],
        &keys.rsa(),
        &forwarded,
    );
    let (code, text, auth) = send(&setup, "list@fwd.test", "bob@report.in.test", &sealed);
    assert_eq!(code, 250, "{text}");
    let auth = auth.expect("auth");
    assert_eq!(auth["arc"]["result"], "pass", "{auth}\n{}", dns.log());
    assert_eq!(auth["dkim"][0]["result"], "fail", "{auth}");
    assert!(
        auth["header"]
            .as_str()
            .is_some_and(|h| h.ends_with("; arc=pass")),
        "{auth}"
    );
}

#[test]
fn dead_dns_gives_temperror_within_the_timeout_451_under_enforce_delivered_under_report() {
    let dns = dns();
    let setup = setup(dns.addr(), "1s");
    let data = message("x@dead.test", "dead", "text");
    for (rcpt, expect) in [("r@enforce.in.test", 451), ("r@report.in.test", 250)] {
        let mut client = SmtpClient::connect(setup.node.smtp_addr());
        assert_eq!(client.command("EHLO client.test").code, 250);
        assert_eq!(client.command("MAIL FROM:<x@dead.test>").code, 250);
        assert_eq!(client.command(&format!("RCPT TO:<{rcpt}>")).code, 250);
        assert_eq!(client.command("DATA").code, 354);
        setup.receiver.clear();
        client.send(&data);
        let end_of_data = Instant::now();
        client.send(b".\r\n");
        let reply = client.read_reply();
        let waited = end_of_data.elapsed();
        assert_eq!(reply.code, expect, "{rcpt}: {reply}");
        // At most auth.timeout for authentication, plus the delivery itself.
        assert!(
            waited < Duration::from_millis(2500),
            "{rcpt}: waited {waited:?}"
        );
        if expect == 451 {
            assert_eq!(reply.enhanced_code(), Some("4.7.5"), "{reply}");
            assert!(setup.receiver.received().is_empty());
        } else {
            let auth = setup.receiver.received()[0].body["auth"].clone();
            assert_eq!(auth["spf"]["result"], "temperror", "{auth}");
            assert_eq!(auth["dmarc"]["result"], "temperror", "{auth}");
            assert_eq!(auth["dkim"], json!([]));
        }
    }
}

#[test]
fn spf_include_loops_and_more_than_ten_lookups_are_permerror() {
    let dns = dns();
    let setup = setup(dns.addr(), "3s");
    for domain in ["loop.test", "many.test"] {
        let from = format!("x@{domain}");
        let (code, text, auth) = send(
            &setup,
            &from,
            "r@report.in.test",
            &message(&from, "spf", "x"),
        );
        assert_eq!(code, 250, "{text}");
        let auth = auth.expect("auth");
        assert_eq!(
            auth["spf"],
            json!({"result": "permerror", "domain": domain}),
            "{domain}: {auth}"
        );
    }
}

#[test]
fn more_than_two_void_lookups_are_permerror() {
    let dns = dns();
    let setup = setup(dns.addr(), "3s");
    // (MAIL FROM domain, SPF result): each record ends in `ip4:127.0.0.1`, the client.
    for (domain, expect) in [
        ("void.test", "permerror"),
        ("nodata.test", "permerror"),
        ("twovoid.test", "pass"),
    ] {
        let from = format!("x@{domain}");
        let (code, text, auth) = send(
            &setup,
            &from,
            "r@report.in.test",
            &message(&from, "void", "x"),
        );
        assert_eq!(code, 250, "{text}");
        let auth = auth.expect("auth");
        assert_eq!(
            auth["spf"],
            json!({"result": expect, "domain": domain}),
            "{domain}: {auth}\n{}",
            dns.log()
        );
    }
}

#[test]
fn relaxed_alignment_follows_the_public_suffix_list() {
    let dns = dns();
    let setup = setup(dns.addr(), "3s");
    let key = keys().rsa();
    // (From domain, signing domain, DMARC result, reply under enforce). SPF never aligns
    // (bank.test does not send from here), so DKIM alone decides.
    let cases = [
        // The parent's signature speaks for mail.example.co.uk: one organisation on the PSL
        // (mail-auth's tree walk would stop at mail.example.co.uk's own record: fail).
        ("mail.example.co.uk", "example.co.uk", "pass", 250),
        // A public suffix is nobody's organisation.
        ("mail.example.co.uk", "co.uk", "fail", 550),
        // org.uk publishes a record for the names under it, and signs; it still does not
        // speak for victim.org.uk (the tree walk would make org.uk its organisation: pass).
        ("victim.org.uk", "org.uk", "fail", 550),
    ];
    for (from_domain, d, result, expect) in cases {
        let from = format!("a@{from_domain}");
        let data = sign(&message(&from, "psl", "text"), &key, d, "s1");
        let (code, text, _) = send(&setup, "x@bank.test", "r@enforce.in.test", &data);
        assert_eq!(code, expect, "{from_domain} signed by {d}: {text}");
        let (code, text, auth) = send(&setup, "x@bank.test", "r@report.in.test", &data);
        assert_eq!(code, 250, "{text}");
        let auth = auth.expect("auth");
        assert_eq!(auth["dkim"][0]["result"], "pass", "{auth}");
        assert_eq!(
            auth["dmarc"],
            json!({"result": result, "domain": from_domain, "policy": "reject"}),
            "{from_domain} signed by {d}: {auth}\n{}",
            dns.log()
        );
    }
}

/// The value of one sample of the node's `/metrics` (0 when absent).
fn metric(api: &ApiClient, key: &str, sample: &str) -> f64 {
    let answer = api.get("/metrics", Some(key));
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

#[test]
fn stored_message_record_and_metrics_carry_the_verdict() {
    let dns = dns();
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let s3 = S3Server::start();
    s3.create_bucket("mail");
    let node = Node::start(
        &NodeConfig::new()
            .hostname("mx.in.test")
            .auth(&[dns.addr()], "3s")
            .http(&ca)
            .api_key("reader", &["emails:read"])
            .api_key("scraper", &["metrics:read"])
            .route(
                RouteConfig::to_receiver("*@report.in.test", &receiver, "/ok")
                    .dmarc("report")
                    .attachments("s3")
                    .s3("primary")
                    .raw_to_s3(),
            )
            .extra_toml(&s3.connection("primary", "mail").toml()),
    );
    let api = ApiClient::new(&node, &ca);
    let sample = |check: &str, result: &str| {
        metric(
            &api,
            node.api_key("scraper"),
            &format!("mxnode_auth_results_total{{check=\"{check}\",result=\"{result}\"}}"),
        )
    };
    let before = [
        sample("spf", "fail"),
        sample("dmarc", "fail"),
        sample("arc", "none"),
    ];

    // A spoof that claims our verdict twice (once folded, in another case), and carries a
    // genuine one from another host.
    let mut spoof = b"Authentication-Results: mx.in.test; dmarc=pass header.from=bank.test\r\n\
        Authentication-Results: other.example; spf=pass smtp.mailfrom=bank.test\r\n\
        Authentication-Results: MX.IN.TEST;\r\n\tdkim=pass header.d=bank.test\r\n"
        .to_vec();
    spoof.extend_from_slice(&message("ceo@bank.test", "stored", "Wire the money."));
    let reply = SmtpClient::connect(node.smtp_addr()).send_mail(
        "ceo@bank.test",
        &["cfo@report.in.test"],
        &spoof,
    );
    assert_eq!(reply.code, 250, "{reply}");
    let received = receiver.received();
    let payload = &received[0].body;
    let header = payload["auth"]["header"].as_str().expect("auth.header");
    assert!(
        header.contains("dmarc=fail header.from=bank.test"),
        "{header}"
    );

    // The stored message: our verdict first, the forged ones gone, the other host's kept.
    let key = payload["raw"]["s3"]["key"].as_str().expect("raw key");
    let stored = String::from_utf8(s3.object("mail", key).expect("raw object")).expect("utf-8");
    let ours = format!("Authentication-Results: {header}\r\n");
    assert!(stored.starts_with(&ours), "{stored}");
    assert_eq!(
        stored.matches("Authentication-Results:").count(),
        2,
        "{stored}"
    );
    assert!(stored.contains("Authentication-Results: other.example; spf=pass"));
    assert!(
        !stored.contains("dmarc=pass") && !stored.contains("dkim=pass"),
        "{stored}"
    );
    let rest = String::from_utf8(spoof)
        .expect("utf-8")
        .replace(
            "Authentication-Results: mx.in.test; dmarc=pass header.from=bank.test\r\n",
            "",
        )
        .replace(
            "Authentication-Results: MX.IN.TEST;\r\n\tdkim=pass header.d=bank.test\r\n",
            "",
        );
    assert_eq!(
        &stored[ours.len()..],
        rest,
        "the rest is the message as received"
    );

    // The record: the DMARC result, no domain, no selector.
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let list = api.get("/api/v1/emails", Some(node.api_key("reader")));
        assert_eq!(list.status, 200, "{}", list.body);
        if let Some(id) = list.json()["items"][0]["id"].as_str() {
            let answer = api.get(
                &format!("/api/v1/emails/{id}"),
                Some(node.api_key("reader")),
            );
            assert_eq!(answer.status, 200, "{}", answer.body);
            break answer;
        }
        assert!(Instant::now() < deadline, "no record: {}", list.body);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(record.json()["dmarc"], "fail", "{}", record.body);
    assert!(!record.body.contains("bank.test"), "{}", record.body);
    assert!(!record.body.contains("selector"), "{}", record.body);

    // The counters moved by one for each check of this message.
    let after = [
        sample("spf", "fail"),
        sample("dmarc", "fail"),
        sample("arc", "none"),
    ];
    assert_eq!(
        after,
        before.map(|v| v + 1.0),
        "spf fail, dmarc fail, arc none"
    );
}

/// DKIM's key and DMARC's record are asked for as soon as the header section is in, while the
/// body is still on its way (issue 15: "DKIM/DMARC as soon as the headers are in"), so a fast
/// resolver adds no round trip after the end of data.
#[test]
fn dkim_key_and_dmarc_record_are_looked_up_before_the_end_of_data() {
    let dns = dns();
    let setup = setup(dns.addr(), "3s");
    let signed = sign(
        &message("alice@origin.test", "early", "Hello"),
        &keys().rsa(),
        "origin.test",
        "s1",
    );
    let split = signed
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header section")
        + 4;
    let (header, body) = signed.split_at(split);
    let mut client = SmtpClient::connect(setup.node.smtp_addr());
    assert_eq!(client.ehlo("client.origin.test").code, 250);
    assert_eq!(client.command("MAIL FROM:<alice@origin.test>").code, 250);
    assert_eq!(client.command("RCPT TO:<bob@report.in.test>").code, 250);
    assert_eq!(client.command("DATA").code, 354);
    client.send(header);
    // The body has not been sent: only the header section can have prompted these queries.
    let asked = |name: &str| dns.log().contains(name);
    let waited = Instant::now();
    while !(asked("s1._domainkey.origin.test") && asked("_dmarc.origin.test")) {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "no DKIM key or DMARC lookup before the end of data; dns log:\n{}",
            dns.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    client.send(body);
    client.send(b".\r\n");
    let reply = client.read_reply();
    assert_eq!(reply.code, 250, "{reply}");
    let received = setup.receiver.received();
    let auth = &received[0].body["auth"];
    assert_eq!(auth["dkim"][0]["result"], "pass", "{auth}");
    assert_eq!(auth["dmarc"]["result"], "pass", "{auth}");
}
