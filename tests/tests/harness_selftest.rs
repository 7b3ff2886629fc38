//! Tests of the harness itself, runnable without the daemon: the webhook
//! receiver really speaks TLS and really checks Standard Webhooks
//! signatures, its routes answer as documented, and the SMTP clients speak
//! a correct dialogue (against a scripted loopback server).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use mxnode_tests::{
    Receiver, SmtpClient, TestCa, new_webhook_secret, scan_for_marker, send_with_lettre, swaks,
    webhook_signature,
};

/// The Standard Webhooks reference vector (standard-webhooks spec, and the
/// test suites of its reference libraries).
const REFERENCE_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const REFERENCE_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const REFERENCE_TIMESTAMP: &str = "1614265330";
const REFERENCE_BODY: &str = r#"{"test": 2432232314}"#;
const REFERENCE_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

/// Posts `body` to `path` with Standard Webhooks headers; returns the status.
fn post_signed(receiver: &Receiver, path: &str, id: &str, ts: &str, sig: &str, body: &str) -> u16 {
    receiver
        .agent()
        .post(receiver.url(path))
        .header("webhook-id", id)
        .header("webhook-timestamp", ts)
        .header("webhook-signature", sig)
        .content_type("application/json")
        .send(body)
        .expect("POST to the receiver")
        .status()
        .as_u16()
}

/// Posts an unsigned JSON body to `path`; returns the status.
fn post(receiver: &Receiver, path: &str) -> u16 {
    receiver
        .agent()
        .post(receiver.url(path))
        .content_type("application/json")
        .send("{}")
        .expect("POST to the receiver")
        .status()
        .as_u16()
}

fn now_seconds() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        .to_string()
}

#[test]
fn harness_signature_matches_the_reference_vector() {
    let signature = webhook_signature(
        REFERENCE_SECRET,
        REFERENCE_ID,
        REFERENCE_TIMESTAMP,
        REFERENCE_BODY.as_bytes(),
    );
    assert_eq!(signature, REFERENCE_SIGNATURE);
}

#[test]
fn receiver_accepts_the_reference_signature() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, REFERENCE_SECRET);
    let status = post_signed(
        &receiver,
        "/ok",
        REFERENCE_ID,
        REFERENCE_TIMESTAMP,
        REFERENCE_SIGNATURE,
        REFERENCE_BODY,
    );
    assert_eq!(status, 200);

    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let record = &received[0];
    assert_eq!(record.path, "/ok");
    assert!(record.signature_valid, "reference signature must verify");
    // The reference timestamp is from 2021: valid signature, stale timestamp.
    assert!(!record.timestamp_fresh);
    assert_eq!(record.raw_body, REFERENCE_BODY);
    assert_eq!(record.body, serde_json::json!({"test": 2432232314u64}));
    assert_eq!(record.header("webhook-id"), Some(REFERENCE_ID));
    assert_eq!(record.header("content-type"), Some("application/json"));
    assert_eq!(record.status, Some(200));
    assert!(record.acknowledged);
}

#[test]
fn receiver_refuses_wrong_signatures() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, REFERENCE_SECRET);
    let other_secret = new_webhook_secret();
    let wrong_key = webhook_signature(
        &other_secret,
        REFERENCE_ID,
        REFERENCE_TIMESTAMP,
        REFERENCE_BODY.as_bytes(),
    );
    let cases = [
        // (why, id, body, signature header)
        (
            "signed with another secret",
            REFERENCE_ID,
            REFERENCE_BODY,
            wrong_key.as_str(),
        ),
        (
            "body changed",
            REFERENCE_ID,
            r#"{"test": 2432232315}"#,
            REFERENCE_SIGNATURE,
        ),
        (
            "id changed",
            "msg_other",
            REFERENCE_BODY,
            REFERENCE_SIGNATURE,
        ),
        (
            "unknown version",
            REFERENCE_ID,
            REFERENCE_BODY,
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        ("empty", REFERENCE_ID, REFERENCE_BODY, ""),
    ];
    for (_, id, body, signature) in cases {
        post_signed(&receiver, "/ok", id, REFERENCE_TIMESTAMP, signature, body);
    }
    let received = receiver.received();
    assert_eq!(received.len(), cases.len());
    for ((why, ..), record) in cases.iter().zip(&received) {
        assert!(!record.signature_valid, "{why}: must not verify");
    }

    // One valid entry among several (key rotation) is enough.
    receiver.clear();
    let rotated = format!("{wrong_key} {REFERENCE_SIGNATURE}");
    post_signed(
        &receiver,
        "/ok",
        REFERENCE_ID,
        REFERENCE_TIMESTAMP,
        &rotated,
        REFERENCE_BODY,
    );
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].signature_valid,
        "any matching v1 entry verifies"
    );
}

#[test]
fn receiver_marks_current_timestamps_fresh() {
    let ca = TestCa::new();
    let secret = new_webhook_secret();
    let receiver = Receiver::start(&ca, &secret);
    let ts = now_seconds();
    let body = r#"{"version":1}"#;
    let signature = webhook_signature(&secret, "msg_1", &ts, body.as_bytes());
    post_signed(&receiver, "/ok", "msg_1", &ts, &signature, body);
    let record = &receiver.received()[0];
    assert!(record.signature_valid);
    assert!(record.timestamp_fresh);
}

#[test]
fn status_route_answers_that_status() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    for (path, expect) in [
        ("/status/422", 422),
        ("/status/204", 204),
        ("/status/503", 503),
        ("/nowhere", 404),
    ] {
        assert_eq!(post(&receiver, path), expect, "{path}");
    }
    let statuses: Vec<_> = receiver
        .received()
        .iter()
        .map(|r| (r.status, r.acknowledged))
        .collect();
    assert_eq!(
        statuses,
        [
            (Some(422), false),
            (Some(204), true),
            (Some(503), false),
            (Some(404), false)
        ]
    );
}

#[test]
fn fail_first_answers_500_then_the_status_per_path() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let path = "/fail-first/2/status/200";
    let answers: Vec<u16> = (0..3).map(|_| post(&receiver, path)).collect();
    assert_eq!(answers, [500, 500, 200]);
    // Another path has its own counter.
    assert_eq!(post(&receiver, "/fail-first/1/status/201"), 500);
    assert_eq!(post(&receiver, "/fail-first/1/status/201"), 201);
    // Clearing resets the counters, so a test can reuse the receiver.
    receiver.clear();
    assert_eq!(post(&receiver, path), 500);
}

#[test]
fn delay_route_answers_after_the_delay() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let started = Instant::now();
    assert_eq!(post(&receiver, "/delay/300/status/201"), 201);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn reset_route_closes_without_an_answer() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let result = receiver.agent().post(receiver.url("/reset")).send("{}");
    assert!(
        result.is_err(),
        "a reset must not produce an answer: {result:?}"
    );
    let received = receiver.received();
    assert_eq!(received.len(), 1, "the reset request is still recorded");
    assert_eq!(received[0].status, None);
    assert!(!received[0].acknowledged);
}

#[test]
fn fault_routes_fail_at_their_rate_and_the_sink_keeps_only_size_and_hash() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    assert_eq!(post(&receiver, "/flaky/0"), 200);
    assert_eq!(post(&receiver, "/flaky/100"), 500);
    assert_eq!(post(&receiver, "/flaky-reset/0"), 200);
    let reset = receiver
        .agent()
        .post(receiver.url("/flaky-reset/100"))
        .send("{}");
    assert!(
        reset.is_err(),
        "a reset must not produce an answer: {reset:?}"
    );
    assert_eq!(post(&receiver, "/slow/0"), 200);
    assert_eq!(post(&receiver, "/sink"), 200);
    let sink = receiver
        .received()
        .pop()
        .expect("the sink request is recorded");
    assert_eq!(sink.path, "/sink");
    assert_eq!(sink.raw_body, "");
    assert_eq!(sink.body_bytes, 2);
    // SHA-256 of `{}`.
    assert_eq!(
        sink.body_sha256,
        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
}

#[test]
fn smtp_client_collects_replies_of_a_burst_and_keeps_partial_ones() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.write_all(b"220 fake.test\r\n").expect("greet");
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf);
        // A multi-line reply cut in the middle, completed after a pause.
        stream.write_all(b"250-first\r\n250-sec").expect("write");
        stream.flush().expect("flush");
        thread::sleep(Duration::from_millis(300));
        stream
            .write_all(b"ond\r\n250 last\r\n221 bye\r\n")
            .expect("write");
    });
    let mut client = SmtpClient::connect(addr);
    let early = client.send_burst(b"EHLO x\r\nQUIT\r\n").expect("burst");
    assert!(early.is_empty(), "nothing complete yet: {early:?}");
    let none = client
        .replies_within(Duration::from_millis(50))
        .expect("read");
    assert!(none.is_empty(), "a partial reply is not returned: {none:?}");
    let (rest, closed) = client.replies_until_closed(Duration::from_secs(10));
    assert!(closed);
    let codes: Vec<u16> = rest.iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 221]);
    assert_eq!(rest[0].lines, ["first", "second", "last"]);
    server.join().expect("server thread");
}

#[test]
fn records_stay_in_memory_until_cleared() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let marker = "MARKER-selftest-7f3a9c";
    let body = format!(r#"{{"text": "{marker}"}}"#);
    let status = receiver
        .agent()
        .post(receiver.url("/ok"))
        .send(body.as_str())
        .expect("POST")
        .status()
        .as_u16();
    assert_eq!(status, 200);
    assert_eq!(receiver.received()[0].body["text"], marker);
    // Nothing next to its certificate or its script.
    let peers = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
    assert!(scan_for_marker(&[ca.dir(), &peers], marker.as_bytes()).is_empty());
    receiver.clear();
    assert!(receiver.received().is_empty());
}

#[test]
fn chunked_bodies_are_read_completely() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let body = "x".repeat(100_000);
    // A reader body has no known length, so ureq sends it chunked.
    let mut reader = body.as_bytes();
    let status = receiver
        .agent()
        .post(receiver.url("/ok"))
        .send(ureq::SendBody::from_reader(&mut reader))
        .expect("chunked POST")
        .status()
        .as_u16();
    assert_eq!(status, 200);
    let record = &receiver.received()[0];
    assert_eq!(record.header("transfer-encoding"), Some("chunked"));
    assert_eq!(record.raw_body, body);
}

#[test]
fn receiver_refuses_plain_http() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let url = format!("http://localhost:{}/ok", receiver.port());
    let result = receiver.agent().post(url).send("{}");
    assert!(result.is_err(), "plain HTTP must fail: {result:?}");
    assert!(receiver.received().is_empty());
}

#[test]
fn receiver_is_refused_by_a_client_trusting_another_ca() {
    let ca = TestCa::new();
    let unrelated = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let result = unrelated.https_agent().post(receiver.url("/ok")).send("{}");
    assert!(
        result.is_err(),
        "an untrusted certificate must fail: {result:?}"
    );
    assert!(receiver.received().is_empty());
}

/// A byte stream the scripted server can switch from TCP to TLS.
trait Io: Read + Write {}
impl<T: Read + Write> Io for T {}

/// One line including its LF, read byte by byte so nothing past it is
/// consumed (the STARTTLS handshake must see every byte after the line).
fn read_line(io: &mut dyn Io) -> Vec<u8> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while io.read(&mut byte).unwrap_or(0) == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    line
}

/// A rustls server session for `ca`'s localhost certificate.
fn tls_server(ca: &TestCa) -> rustls::ServerConnection {
    let certs = CertificateDer::pem_file_iter(&ca.cert_pem)
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert pem");
    let key = PrivateKeyDer::from_pem_file(&ca.key_pem).expect("key pem");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    rustls::ServerConnection::new(Arc::new(config)).expect("server connection")
}

/// A scripted SMTP server for one connection: answers EHLO with a
/// multi-line reply, collects DATA, offers STARTTLS when given a CA, and
/// returns the dialogue it saw (data bytes verbatim, plaintext and TLS
/// alike) when the client quits or hangs up.
fn scripted_smtp_server(tls: Option<TestCa>) -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut io: Box<dyn Io> = Box::new(stream.try_clone().expect("clone"));
        let mut seen = Vec::new();
        let mut in_data = false;
        io.write_all(b"220 fake.test ESMTP\r\n").expect("greet");
        loop {
            let line = read_line(io.as_mut());
            if line.is_empty() {
                break;
            }
            seen.extend_from_slice(&line);
            let answer: &[u8] = if in_data {
                if line == b".\r\n" {
                    in_data = false;
                    b"250 2.0.0 queued\r\n"
                } else {
                    continue;
                }
            } else if line.starts_with(b"EHLO") {
                b"250-fake.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
            } else if line.starts_with(b"STARTTLS") {
                let Some(ca) = &tls else {
                    io.write_all(b"454 4.7.0 no TLS here\r\n").expect("answer");
                    continue;
                };
                io.write_all(b"220 2.0.0 go ahead\r\n").expect("answer");
                let tcp = stream.try_clone().expect("clone");
                io = Box::new(rustls::StreamOwned::new(tls_server(ca), tcp));
                continue;
            } else if line.starts_with(b"DATA") {
                in_data = true;
                b"354 go ahead\r\n"
            } else if line.starts_with(b"QUIT") {
                let _ = io.write_all(b"221 bye\r\n");
                let _ = io.flush();
                break;
            } else {
                b"250 2.1.0 ok\r\n"
            };
            io.write_all(answer).expect("answer");
            io.flush().expect("flush");
        }
        seen
    });
    (addr, handle)
}

#[test]
fn smtp_client_reads_multiline_replies_and_dot_stuffs() {
    let (addr, server) = scripted_smtp_server(None);
    let mut client = SmtpClient::connect(addr);
    assert_eq!(client.greeting().code, 220);
    let ehlo = client.ehlo("client.test");
    assert_eq!(ehlo.code, 250);
    assert_eq!(
        ehlo.lines,
        ["fake.test", "PIPELINING", "STARTTLS", "8BITMIME"]
    );
    let reply = client.send_mail(
        "a@example.org",
        &["b@in.example.test"],
        b"Subject: x\r\n\r\n.line\r\n",
    );
    assert_eq!(reply.code, 250);
    assert_eq!(reply.enhanced_code(), Some("2.0.0"));
    assert_eq!(client.command("QUIT").code, 221);
    let seen = String::from_utf8(server.join().expect("server")).expect("utf8");
    assert_eq!(
        seen,
        "EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@in.example.test>\r\nDATA\r\n\
         Subject: x\r\n\r\n..line\r\n.\r\nQUIT\r\n"
    );
}

#[test]
fn lettre_helper_delivers_and_reports_the_code() {
    let (addr, server) = scripted_smtp_server(None);
    let code = send_with_lettre(
        addr,
        "a@example.org",
        &["b@in.example.test"],
        b"Subject: x\r\n\r\nhello\r\n",
    );
    assert_eq!(code, Ok(250));
    let seen = String::from_utf8(server.join().expect("server")).expect("utf8");
    assert!(seen.contains("RCPT TO:<b@in.example.test>"), "{seen}");
    // lettre always appends CRLF . CRLF, so a message ending in CRLF gains
    // an empty last line; tests comparing text must allow for it.
    assert!(seen.contains("\r\nhello\r\n\r\n.\r\nQUIT"), "{seen}");
}

#[test]
fn smtp_client_upgrades_with_starttls() {
    let ca = TestCa::new();
    let ca_pem = ca.ca_pem.clone();
    let (addr, server) = scripted_smtp_server(Some(ca));
    let mut client = SmtpClient::connect(addr);
    assert!(client.ehlo("client.test").contains("STARTTLS"));
    assert_eq!(client.starttls(&ca_pem).code, 220);
    let (version, _cipher) = client.tls_info().expect("TLS is up");
    assert!(version == "TLSv1_3" || version == "TLSv1_2", "{version}");
    // send_mail sends a fresh EHLO inside TLS, as RFC 3207 requires.
    let reply = client.send_mail(
        "a@example.org",
        &["b@in.example.test"],
        b"Subject: t\r\n\r\nsecret\r\n",
    );
    assert_eq!(reply.code, 250);
    assert_eq!(client.command("QUIT").code, 221);
    let seen = String::from_utf8(server.join().expect("server")).expect("utf8");
    assert!(
        seen.contains("STARTTLS\r\nEHLO client.test\r\nMAIL FROM"),
        "{seen}"
    );
}

#[test]
fn smtp_client_refuses_a_server_certificate_from_another_ca() {
    let ca = TestCa::new();
    let unrelated = TestCa::new();
    let (addr, _server) = scripted_smtp_server(Some(ca));
    let mut client = SmtpClient::connect(addr);
    assert_eq!(client.command("STARTTLS").code, 220);
    assert!(client.upgrade_tls(&unrelated.ca_pem).is_err());
}

#[test]
fn swaks_helper_runs_a_dialogue() {
    let (addr, server) = scripted_smtp_server(None);
    let output = swaks(
        addr,
        &[
            "--from",
            "a@example.org",
            "--to",
            "b@in.example.test",
            "--body",
            "hi",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "swaks failed:\n{stdout}");
    assert!(stdout.contains("250 2.0.0 queued"), "{stdout}");
    let seen = String::from_utf8(server.join().expect("server")).expect("utf8");
    assert!(seen.contains("RCPT TO:<b@in.example.test>"), "{seen}");
}

#[test]
fn smtp_client_reports_a_silent_server_as_timed_out() {
    let (addr, _server) = scripted_smtp_server(None);
    let mut client = SmtpClient::connect(addr);
    client.set_read_timeout(Duration::from_millis(200));
    let error = client
        .try_read_reply()
        .expect_err("nothing was sent, so no reply");
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
}
