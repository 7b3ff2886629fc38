//! Attachments (and raw messages) to S3 before the webhook (issue 3), end to end: the real
//! `mxnode` binary between a real SMTP client, a real S3 server that checks SigV4 (s3s-fs) and
//! the real HTTPS receiver. Objects are read back from the store, payloads from the receiver.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mxnode_tests::{
    Node, NodeConfig, Receiver, RouteConfig, S3Connection, S3Server, SmtpClient, TestCa, TlsFront,
    new_webhook_secret,
};

const BUCKET: &str = "mail";
const SENDER: &str = "alice@example.org";
const RCPT: &str = "bob@in.example.test";
/// Longest a sanitised file name may be (the daemon's `MAX_FILENAME_BYTES`).
const MAX_FILENAME_BYTES: usize = 100;

/// One MIME part to attach: the `Content-Disposition` parameters as written (so a test can
/// use RFC 2231 forms), the content type and the bytes.
struct Part<'a> {
    disposition_params: String,
    content_type: &'a str,
    data: &'a [u8],
}

fn part<'a>(filename: &str, content_type: &'a str, data: &'a [u8]) -> Part<'a> {
    Part {
        disposition_params: format!("filename=\"{filename}\""),
        content_type,
        data,
    }
}

/// A multipart/mixed message with a text body and `parts`, base64 in 76-column lines, CRLF.
fn message(subject: &str, parts: &[Part<'_>]) -> Vec<u8> {
    let boundary = "=_mxnode_test_boundary";
    let mut out = format!(
        "From: Alice <{SENDER}>\r\nTo: {RCPT}\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.org>\r\nDate: Tue, 1 Jul 2025 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"
    )
    .into_bytes();
    for part in parts {
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: {}\r\nContent-Transfer-Encoding: base64\r\n\
                 Content-Disposition: attachment;\r\n {}\r\n\r\n",
                part.content_type, part.disposition_params
            )
            .as_bytes(),
        );
        let encoded = BASE64.encode(part.data);
        for line in encoded.as_bytes().chunks(76) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// Deterministic pseudo-random bytes (no dependency, reproducible).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Everything an S3 test talks to.
struct Setup {
    _ca: TestCa,
    receiver: Receiver,
    s3: S3Server,
    node: Node,
}

/// A node with one route `*@in.example.test` to a receiver's `/ok`, its attachments to an
/// s3s-fs connection `primary` (bucket `mail`, created when `with_bucket`). `connection` and
/// `route` adjust the defaults.
fn setup(
    with_bucket: bool,
    connection: impl FnOnce(S3Connection) -> S3Connection,
    route: impl FnOnce(RouteConfig) -> RouteConfig,
) -> Setup {
    setup_node(with_bucket, connection, route, |n| n)
}

/// [`setup`] with the node's config adjusted by `node` too.
fn setup_node(
    with_bucket: bool,
    connection: impl FnOnce(S3Connection) -> S3Connection,
    route: impl FnOnce(RouteConfig) -> RouteConfig,
    node: impl FnOnce(NodeConfig) -> NodeConfig,
) -> Setup {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let s3 = S3Server::start();
    if with_bucket {
        s3.create_bucket(BUCKET);
    }
    let connection = connection(s3.connection("primary", BUCKET));
    let route = route(
        RouteConfig::to_receiver("*@in.example.test", &receiver, "/ok")
            .attachments("s3")
            .s3("primary"),
    );
    let node = Node::start(
        &node(NodeConfig::new())
            .route(route)
            .extra_toml(&connection.toml()),
    );
    Setup {
        _ca: ca,
        receiver,
        s3,
        node,
    }
}

fn send(node: &Node, data: &[u8]) -> mxnode_tests::Reply {
    SmtpClient::connect(node.smtp_addr()).send_mail(SENDER, &[RCPT], data)
}

/// `YYYY/MM/DD` of the payload's `received_at` (RFC 3339, UTC).
fn date_dir(payload: &serde_json::Value) -> String {
    let received = payload["received_at"].as_str().expect("received_at");
    format!(
        "{}/{}/{}",
        &received[0..4],
        &received[5..7],
        &received[8..10]
    )
}

/// Percent-encoding of a key path as the daemon writes it into URLs (SigV4's URI encoding).
fn encode_key(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn attachments_land_in_s3_and_the_payload_points_at_them_without_base64() {
    let Setup {
        receiver, s3, node, ..
    } = setup(true, |c| c, |r| r);
    let pdf = bytes(70_000, 1);
    let png = bytes(1_234, 2);
    let data = message(
        "two-files",
        &[
            part("report.pdf", "application/pdf", &pdf),
            part("chart.png", "image/png", &png),
        ],
    );
    let reply = send(&node, &data);
    assert_eq!(reply.code, 250, "{reply}");

    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let payload = &received[0].body;
    let id = received[0].header("webhook-id").expect("webhook-id");
    let dir = format!("{}/{id}", date_dir(payload));
    let attachments = payload["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 2);
    for (n, (attachment, (name, content_type, content))) in attachments
        .iter()
        .zip([
            ("report.pdf", "application/pdf", &pdf),
            ("chart.png", "image/png", &png),
        ])
        .enumerate()
    {
        assert!(
            attachment.get("content_base64").is_none(),
            "no inline content when attachments go to S3: {attachment}"
        );
        let key = format!("{dir}/{}-{name}", n + 1);
        assert_eq!(attachment["filename"], name);
        assert_eq!(attachment["content_type"], content_type);
        assert_eq!(attachment["size"], content.len());
        assert_eq!(attachment["s3"]["bucket"], BUCKET);
        assert_eq!(attachment["s3"]["key"], key.as_str());
        assert_eq!(
            attachment["s3"]["url"],
            format!("{}/{BUCKET}/{key}", s3.endpoint()).as_str()
        );
        assert_eq!(
            s3.object(BUCKET, &key).as_ref(),
            Some(content),
            "{key} holds the attachment's bytes"
        );
        assert_eq!(s3.content_type(BUCKET, &key).as_deref(), Some(content_type));
    }
    assert_eq!(s3.keys(BUCKET).len(), 2, "{:?}", s3.keys(BUCKET));
    assert!(payload.get("raw").is_none(), "raw only with raw_to_s3");
    assert!(
        !received[0].raw_body.contains(&BASE64.encode(&png)),
        "no attachment bytes in the webhook body"
    );
}

#[test]
fn wrong_credentials_give_451_and_the_receiver_gets_nothing() {
    let secret = "definitely-not-the-secret";
    let Setup {
        receiver, s3, node, ..
    } = setup(true, |c| c.secret(secret), |r| r);
    let data = message("denied", &[part("a.pdf", "application/pdf", b"%PDF")]);
    let reply = send(&node, &data);
    assert_eq!(reply.code, 451, "{reply}");
    assert_eq!(reply.enhanced_code(), Some("4.3.0"));
    assert!(
        receiver.received().is_empty(),
        "no webhook without the upload"
    );
    assert!(s3.keys(BUCKET).is_empty());

    // The log names bucket, key and S3 error code; never the secret or the sender.
    let log = node.log();
    assert!(log.contains("bucket=mail"), "{log}");
    assert!(log.contains("key="), "{log}");
    assert!(
        log.contains("/1-…"),
        "the key names the attachment by number: {log}"
    );
    assert!(
        !log.contains("a.pdf"),
        "but never by its file name (content): {log}"
    );
    assert!(log.contains("code=SignatureDoesNotMatch"), "{log}");
    assert!(!log.contains(secret), "{log}");
    assert!(!log.contains(SENDER), "{log}");
}

#[test]
fn missing_bucket_gives_451_and_no_webhook() {
    let Setup {
        receiver, s3, node, ..
    } = setup(false, |c| c, |r| r);
    let data = message("nobucket", &[part("a.pdf", "application/pdf", b"%PDF")]);
    let reply = send(&node, &data);
    assert_eq!(reply.code, 451, "{reply}");
    assert!(receiver.received().is_empty());
    assert!(
        !s3.root().join(BUCKET).exists(),
        "nothing was written into a bucket that does not exist"
    );
    let log = node.log();
    assert!(log.contains("code=NoSuchBucket"), "{log}");
    assert!(log.contains("bucket=mail"), "{log}");
}

/// Reads a field such as `VmHWM` (kB) from `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

#[test]
fn twenty_mib_attachment_is_stored_intact_and_peak_memory_is_reported() {
    // 20 MiB in base64 is a 27.4 MiB message: above the default SIZE of 25 MiB.
    let Setup {
        receiver, s3, node, ..
    } = setup_node(true, |c| c, |r| r, |n| n.max_message_size("32MiB"));
    let big = bytes(20 * 1024 * 1024, 3);
    let data = message("big", &[part("big.bin", "application/octet-stream", &big)]);
    let before = proc_status_kib(node.pid(), "VmHWM");
    let reply = send(&node, &data);
    assert_eq!(reply.code, 250, "{reply}");
    let after = proc_status_kib(node.pid(), "VmHWM");

    let received = receiver.received();
    let payload = &received[0].body;
    let key = payload["attachments"][0]["s3"]["key"]
        .as_str()
        .expect("key");
    assert!(s3.object(BUCKET, key) == Some(big), "20 MiB landed intact");
    assert!(
        received[0].raw_body.len() < 64 * 1024,
        "the payload carries no attachment bytes: {} bytes",
        received[0].raw_body.len()
    );
    // The figure for the README; machines are noisy, so only a loose sanity bound is asserted.
    if let (Some(before), Some(after)) = (before, after) {
        eprintln!(
            "mxnode peak memory (VmHWM): {before} KiB before, {after} KiB after a {} byte \
             message with a 20 MiB attachment to S3",
            data.len()
        );
        assert!(
            after < 1024 * 1024,
            "peak memory {after} KiB: far beyond any reasonable multiple of the message"
        );
    }
}

#[test]
fn hostile_filenames_become_safe_keys_and_stay_in_the_payload() {
    let Setup {
        receiver, s3, node, ..
    } = setup(true, |c| c, |r| r);
    let long_name = format!("{}.pdf", "Quartalsbericht-".repeat(18) + "abcdefgh");
    assert_eq!(long_name.chars().count(), 300);
    let unicode = "報告書 2026 — Übersicht.pdf";
    let encoded_unicode: String = unicode
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let parts = [
        part("../../etc/passwd", "text/plain", b"root:x:0:0"),
        Part {
            disposition_params: format!("filename*=UTF-8''{encoded_unicode}"),
            content_type: "application/pdf",
            data: b"unicode",
        },
        part(&long_name, "application/pdf", b"long"),
        // RFC 2231 form: backslashes would be quoted-pairs inside a quoted string.
        Part {
            disposition_params: "filename*=UTF-8''..%5C..%5Cboot.ini".to_string(),
            content_type: "text/plain",
            data: b"backslashes",
        },
    ];
    let reply = send(&node, &message("names", &parts));
    assert_eq!(reply.code, 250, "{reply}");

    let received = receiver.received();
    let payload = &received[0].body;
    let id = received[0].header("webhook-id").expect("id");
    let dir = format!("{}/{id}", date_dir(payload));
    let expected = [
        (
            "../../etc/passwd",
            "1-passwd".to_string(),
            &b"root:x:0:0"[..],
        ),
        (
            unicode,
            "2-報告書_2026_Übersicht.pdf".to_string(),
            b"unicode",
        ),
        (
            long_name.as_str(),
            format!(
                "3-{}.pdf",
                &("Quartalsbericht-".repeat(19))[..MAX_FILENAME_BYTES - 4]
            ),
            b"long",
        ),
        ("..\\..\\boot.ini", "4-boot.ini".to_string(), b"backslashes"),
    ];
    for (attachment, (original, name, content)) in payload["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .zip(expected)
    {
        let key = format!("{dir}/{name}");
        assert_eq!(attachment["filename"], original, "the original name stays");
        assert_eq!(attachment["s3"]["key"], key.as_str());
        assert_eq!(
            attachment["s3"]["url"],
            format!("{}/{BUCKET}/{}", s3.endpoint(), encode_key(&key)).as_str()
        );
        assert_eq!(s3.object(BUCKET, &key).as_deref(), Some(content), "{key}");
        let file_name = key.rsplit('/').next().unwrap_or_default();
        assert!(file_name.len() <= MAX_FILENAME_BYTES + 2, "{file_name}");
        assert!(!key.contains(".."), "{key}");
        assert!(!key.contains('\\'), "{key}");
    }
    // Nothing escaped the delivery's directory.
    for key in s3.keys(BUCKET) {
        assert!(key.starts_with(&dir), "{key} outside {dir}");
    }
}

#[test]
fn raw_to_s3_stores_the_message_as_received_and_the_payload_points_at_it() {
    let Setup {
        receiver, s3, node, ..
    } = setup(true, |c| c.prefix("/in/mx1/"), |r| r.raw_to_s3());
    // Lines starting with a dot are dot-stuffed on the wire and must come back unstuffed.
    let mut data = message("raw", &[part("a.txt", "text/plain", b"attached")]);
    let tail = b"--trailing text--\r\n.leading dot line\r\n..two dots\r\n";
    data.extend_from_slice(tail);
    let reply = send(&node, &data);
    assert_eq!(reply.code, 250, "{reply}");

    let received = receiver.received();
    let payload = &received[0].body;
    let id = received[0].header("webhook-id").expect("id");
    let dir = format!("in/mx1/{}/{id}", date_dir(payload));
    let raw_key = format!("{dir}/raw.eml");
    assert_eq!(payload["raw"]["s3"]["bucket"], BUCKET);
    assert_eq!(payload["raw"]["s3"]["key"], raw_key.as_str());
    assert_eq!(
        payload["raw"]["s3"]["url"],
        format!("{}/{BUCKET}/{raw_key}", s3.endpoint()).as_str()
    );
    assert_eq!(payload["raw"]["size"], data.len());
    assert_eq!(payload["size"], data.len());
    // Issue 15: the stored message starts with the node's Authentication-Results header (the
    // payload's `auth.header`), then the message exactly as sent, dot-stuffing removed.
    let stamp = format!(
        "Authentication-Results: {}\r\n",
        payload["auth"]["header"].as_str().expect("auth.header")
    );
    let mut stamped = stamp.into_bytes();
    stamped.extend_from_slice(&data);
    assert_eq!(
        s3.object(BUCKET, &raw_key),
        Some(stamped),
        "the raw object is our Authentication-Results, then the message as sent, dot-stuffing removed"
    );
    assert_eq!(
        s3.content_type(BUCKET, &raw_key).as_deref(),
        Some("message/rfc822")
    );
    assert_eq!(
        payload["attachments"][0]["s3"]["key"],
        format!("{dir}/1-a.txt").as_str()
    );
}

#[test]
fn retransmission_overwrites_the_same_keys() {
    let Setup {
        receiver, s3, node, ..
    } = setup(true, |c| c, |r| r.raw_to_s3());
    let data = message(
        "again",
        &[
            part("a.pdf", "application/pdf", b"first"),
            part("b.pdf", "application/pdf", b"second"),
        ],
    );
    assert_eq!(send(&node, &data).code, 250);
    let keys = s3.keys(BUCKET);
    assert_eq!(keys.len(), 3, "{keys:?}");
    let modified = |key: &str| -> SystemTime {
        std::fs::metadata(s3.root().join(BUCKET).join(key))
            .and_then(|m| m.modified())
            .expect("object mtime")
    };
    let first: Vec<SystemTime> = keys.iter().map(|k| modified(k)).collect();
    std::thread::sleep(Duration::from_millis(50));

    assert_eq!(send(&node, &data).code, 250);
    assert_eq!(s3.keys(BUCKET), keys, "same keys, no orphans");
    for (key, before) in keys.iter().zip(first) {
        assert!(modified(key) > before, "{key} was written again");
    }
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].header("webhook-id"),
        received[1].header("webhook-id")
    );
    assert_eq!(
        received[0].body["attachments"],
        received[1].body["attachments"]
    );
}

#[test]
fn s3_over_https_trusts_the_connection_ca_and_nothing_else() {
    // The node reaches the store through a TLS front that only the test CA verifies: route
    // `in` trusts it through its connection's `ca`, route `other` trusts an unrelated CA.
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let front = TlsFront::start(&ca, s3.port());
    let other_ca = TestCa::new();
    let trusted = s3
        .connection("trusted", BUCKET)
        .endpoint(&front.endpoint())
        .ca(&ca.ca_pem);
    let untrusted = s3
        .connection("untrusted", BUCKET)
        .endpoint(&front.endpoint())
        .ca(&other_ca.ca_pem);
    let node = Node::start(
        &NodeConfig::new()
            .route(
                RouteConfig::to_receiver("*@in.example.test", &receiver, "/ok")
                    .attachments("s3")
                    .s3("trusted"),
            )
            .route(
                RouteConfig::to_receiver("*@other.example.test", &receiver, "/ok")
                    .attachments("s3")
                    .s3("untrusted")
                    .budget("2s"),
            )
            .extra_toml(&trusted.toml())
            .extra_toml(&untrusted.toml()),
    );
    let data = message("tls", &[part("a.pdf", "application/pdf", b"over TLS")]);
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(SENDER, &[RCPT], &data);
    assert_eq!(reply.code, 250, "{reply}");
    let reply = client.send_mail(SENDER, &["carol@other.example.test"], &data);
    assert_eq!(
        reply.code, 451,
        "an unrelated CA must not verify the store: {reply}"
    );

    let received = receiver.received();
    assert_eq!(
        received.len(),
        1,
        "only the trusted route reached its webhook"
    );
    let attachment = &received[0].body["attachments"][0];
    let url = attachment["s3"]["url"].as_str().expect("url");
    assert!(
        url.starts_with(&format!("{}/{BUCKET}/", front.endpoint())),
        "{url}"
    );
    let key = attachment["s3"]["key"].as_str().expect("key");
    assert_eq!(s3.object(BUCKET, key).as_deref(), Some(&b"over TLS"[..]));
    assert_eq!(s3.keys(BUCKET).len(), 1);
}

/// The config of a node whose route stores attachments in `primary`, plus `connections`.
fn config_with(connections: &[S3Connection]) -> String {
    let mut config = NodeConfig::new().route(
        RouteConfig::new(
            "*@in.example.test",
            "https://localhost:1/ok",
            &new_webhook_secret(),
        )
        .attachments("s3")
        .s3("primary"),
    );
    for connection in connections {
        config = config.extra_toml(&connection.toml());
    }
    config.render(std::path::Path::new("/nonexistent/mxnode-test-data"))
}

#[test]
fn s3_test_passes_against_a_good_connection_and_names_what_failed_otherwise() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let good = s3.connection("primary", BUCKET).prefix("probe-here");
    let (code, output) = Node::run_with_config(
        "s3-test",
        &config_with(std::slice::from_ref(&good)),
        &["primary"],
    );
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("s3.primary: ok"), "{output}");
    assert!(output.contains("probe-here/mxnode-probe/"), "{output}");
    assert!(s3.keys(BUCKET).is_empty(), "the probe object was deleted");

    let bad = good.clone().secret("wrong-secret");
    let (code, output) = Node::run_with_config("s3-test", &config_with(&[bad]), &["primary"]);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("s3.primary: PUT failed"), "{output}");
    assert!(output.contains("SignatureDoesNotMatch"), "{output}");
    assert!(!output.contains("wrong-secret"), "{output}");

    let missing = s3.connection("primary", "no-such-bucket");
    let (code, output) = Node::run_with_config("s3-test", &config_with(&[missing]), &["primary"]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("s3.primary: HEAD bucket failed"),
        "{output}"
    );
    assert!(output.contains("NoSuchBucket"), "{output}");

    let (code, output) = Node::run_with_config("s3-test", &config_with(&[good]), &["nope"]);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("no [s3.nope] table"), "{output}");
}

#[test]
fn check_config_probes_every_connection_only_when_asked() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let good = s3.connection("primary", BUCKET);
    let bad = s3.connection("secondary", BUCKET).secret("wrong-secret");
    let config = config_with(&[good, bad]);

    // Offline by default (systemd's ExecStartPre): a wrong secret is not noticed.
    let (code, output) = Node::check_config(&config);
    assert_eq!(code, 0, "{output}");
    assert!(!output.contains("s3.primary: ok"), "{output}");

    let (code, output) = Node::run_with_config("check-config", &config, &["--probe"]);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("s3.primary: ok"), "{output}");
    assert!(output.contains("s3.secondary: PUT failed"), "{output}");
    assert!(output.contains("SignatureDoesNotMatch"), "{output}");
    assert!(s3.keys(BUCKET).is_empty(), "no probe object is left behind");
}

#[test]
fn the_store_refuses_unsigned_and_badly_signed_requests() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/{BUCKET}/planted.txt", s3.endpoint());
    let unsigned = agent.put(&url).send(&b"planted"[..]).expect("an answer");
    assert_eq!(unsigned.status().as_u16(), 403);
    let forged = agent
        .put(&url)
        .header("x-amz-date", "20260101T000000Z")
        .header(
            "x-amz-content-sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/20260101/us-east-1/s3/aws4_request,\
                 SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature={}",
                s3.access_key(),
                "0".repeat(64)
            ),
        )
        .send(&b"planted"[..])
        .expect("an answer");
    assert_eq!(forged.status().as_u16(), 403);
    assert!(s3.keys(BUCKET).is_empty());
}
